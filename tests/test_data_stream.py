"""Streaming (data/stream.py): the same pairs and summary counts as the prepared path on the HH slice and the fuzz
corpus; the shuffle buffer's bounds, determinism and resume position; `unipo train --data-streaming`."""

from __future__ import annotations

import json
import random

import pytest

from tests.row_fuzz import defective_row, valid_row
from unipo.data.stream import PairStream, shuffle_buffer
from unipo.data.tokenize import PrepOptions, prepare_pairs
from unipo.errors import ConfigError, DataError
from unipo.testing import make_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def _prepared(source, tok, opts):
    """The cached path's pairs as the collator's rows (non-null fields and ``index``) and its summary."""
    pairs, summary = prepare_pairs(source, tok, opts)
    rows = [{**{k: v for k, v in p.to_dict().items() if v is not None}, "index": i} for i, p in enumerate(pairs)]
    return rows, summary.to_dict()


def _assert_stream_equals_prepared(source, tok, **kw):
    opts = PrepOptions(**kw)
    want_rows, want_summary = _prepared(source, tok, opts)
    stream = PairStream(source, tok, opts, buffer_size=0)
    got = list(stream)
    assert stream.complete
    assert len(got) == len(want_rows)
    for a, b in zip(want_rows, got, strict=True):
        assert a == b, f"pair {a['index']} (row {a['row']}) differs"
    assert stream.summary.to_dict() == want_summary
    return want_rows, want_summary


STREAM_CASES = [
    {"on_invalid": "skip", "num_proc": 1},
    {"on_invalid": "skip", "num_proc": 2, "max_length": 64, "max_prompt_length": 40},
    {"on_invalid": "skip", "num_proc": 1, "max_length": 300, "on_too_long": "drop", "limit": 150},
    {"on_invalid": "skip", "num_proc": 1, "max_length": 80, "bmc_masks": True},
]


@pytest.mark.unit
@pytest.mark.parametrize("options", STREAM_CASES, ids=lambda o: json.dumps(o, sort_keys=True))
def test_hh_slice_streamed_equals_prepared(hh_file, tok, small_chunks, options):
    rows, summary = _assert_stream_equals_prepared(hh_file, tok, **options)
    assert summary["rows_read"] == options.get("limit", 200) and len(rows) > 5


@pytest.mark.unit
def test_hh_slice_invalid_row_raises_the_same_error(hh_file, tok, small_chunks):
    """Row 87's blank chosen answer: the stream raises the prepared path's error, word for word."""
    opts = PrepOptions(on_invalid="error", num_proc=1)
    with pytest.raises(DataError) as want:
        prepare_pairs(hh_file, tok, opts)
    with pytest.raises(DataError) as got:
        list(PairStream(hh_file, tok, opts, buffer_size=8))
    assert str(got.value) == str(want.value) and "row 87" in str(got.value)


@pytest.mark.unit
def test_fuzz_corpus_streamed_equals_prepared(tmp_path, tok, small_chunks):
    """The fuzzed rows (valid and defective) that are objects, in one file: the same kept pairs and the same
    summary counts; with the rows that are not objects (a file-level error) the same error."""
    rng = random.Random(11)
    rows = [valid_row(rng) if rng.random() < 0.6 else defective_row(rng)[0] for _ in range(400)]
    path, whole = tmp_path / "fuzz.jsonl", tmp_path / "whole.jsonl"
    objects = [r for r in rows if isinstance(r, dict)]
    path.write_text("".join(json.dumps(r) + "\n" for r in objects))
    for num_proc in (1, 2):
        _, summary = _assert_stream_equals_prepared(str(path), tok, num_proc=num_proc, on_invalid="skip",
                                                    max_length=10**6, max_prompt_length=None)
        assert summary["rows_read"] == len(objects) > 300 and summary["dropped"]["invalid"] > 50
    whole.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = PrepOptions(on_invalid="skip", num_proc=1)
    with pytest.raises(DataError) as want:
        prepare_pairs(str(whole), tok, opts)
    with pytest.raises(DataError) as got:
        list(PairStream(str(whole), tok, opts))
    assert str(got.value) == str(want.value)


@pytest.mark.unit
def test_shuffle_buffer_bounds_determinism_and_resume(hh_file, tok):
    """Buffer 16 over the HH slice: a permutation of the file's pairs in which no pair comes out more than 16
    places before its own (the buffer's bound, and the documented limit: no global shuffle); the same order for
    the same seed and epoch, another for another epoch; ``start_at(k)`` yields the order's tail after k."""
    opts = PrepOptions(on_invalid="skip", num_proc=1)
    stream = PairStream(hh_file, tok, opts, buffer_size=16, seed=3)
    first = [r["index"] for r in stream]
    assert sorted(first) == list(range(len(first))) and first != sorted(first)
    assert all(index <= position + 16 for position, index in enumerate(first))
    assert [r["index"] for r in stream] == first
    stream.set_epoch(1)
    second = [r["index"] for r in stream]
    assert second != first and sorted(second) == sorted(first)
    stream.set_epoch(0)
    stream.start_at(37)
    assert [r["index"] for r in stream] == first[37:]
    assert [r["index"] for r in stream] == first  # the skip is for one iteration only


@pytest.mark.unit
def test_shuffle_buffer_by_hand():
    """Size 1 or 0: the input order. Size 3 over 0..5 with a seeded RNG: the order the algorithm gives by hand."""
    assert list(shuffle_buffer(iter(range(5)), 1, random.Random(0))) == list(range(5))
    rng = random.Random(5)
    buf, out = [0, 1, 2], []
    for item in range(3, 6):
        j = rng.randrange(3)
        out.append(buf[j])
        buf[j] = item
    rng.shuffle(buf)
    assert list(shuffle_buffer(iter(range(6)), 3, random.Random(5))) == out + buf


@pytest.mark.unit
def test_streaming_config_refuses_what_a_stream_cannot_do():
    from unipo.training.config import TrainConfig

    for extra, needle in (({"max_steps": -1}, "max_steps"), ({"max_steps": 2, "eval_fraction": 0.1}, "eval_data"),
                          ({"max_steps": 2, "reference": "precomputed"}, "precomputed"),
                          ({"max_steps": 2, "stream_buffer": -1}, "stream_buffer")):
        with pytest.raises(ConfigError, match=needle):
            TrainConfig(model="m", data="d.jsonl", data_streaming=True, **extra).validate()


@pytest.mark.integration
def test_train_streaming_resumes_exactly_across_an_epoch_and_writes_the_summary(tiny_model_dir, data, tmp_path):
    """`unipo train --data-streaming` on the 12 arithmetic rows (3 steps an epoch): 5 steps in one run, and 2 steps
    then a resume to 5, log the same losses (the resumed run replays its epoch's stream to step 2, then crosses
    into epoch 1 as the uninterrupted one does); data_summary.json is the prepared path's summary (one chunk)."""
    from tests.helpers import train_args
    from unipo.cli import main

    common = ("--data-streaming", "--stream-buffer", "5", "--save-steps", "2", "--lr-scheduler-type", "constant",
              "--set", "plots=false")

    def losses(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [(m["step"], m["loss"]) for m in rows if "loss" in m]

    assert main(train_args(tiny_model_dir, data, tmp_path / "a", "--max-steps", "5", *common)) == 0
    assert main(train_args(tiny_model_dir, data, tmp_path / "b", "--max-steps", "2", *common)) == 0
    assert main(train_args(tiny_model_dir, data, tmp_path / "b", "--max-steps", "5", "--resume", *common)) == 0
    want = losses(tmp_path / "a")
    assert [s for s, _ in want] == [1, 2, 3, 4, 5]
    assert losses(tmp_path / "b") == want
    summary = json.loads((tmp_path / "a" / "data_summary.json").read_text())
    assert summary == prepare_pairs(str(data), make_tiny_tokenizer(), PrepOptions())[1].to_dict()
    assert summary["rows_read"] == 12


@pytest.mark.unit
def test_a_hub_name_is_opened_with_streaming(hh_file, tok, monkeypatch):
    """A name that is no local path goes to ``datasets.load_dataset(name, split=..., streaming=True)`` (replaced
    here by an iterable dataset over the HH slice's rows): the same pairs and summary as the file, bar the name."""
    import datasets

    from unipo.data.formats import load_rows

    rows = [r for _, r in load_rows(hh_file)]
    calls = []

    def fake_load(name, split, streaming=False):
        calls.append((name, split, streaming))
        return datasets.IterableDataset.from_generator(lambda: iter(rows))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    opts = PrepOptions(on_invalid="skip", num_proc=1)
    stream = PairStream("someone/hh-rlhf", tok, opts, buffer_size=0)
    got = list(stream)
    want, summary = _prepared(hh_file, tok, opts)
    assert calls == [("someone/hh-rlhf", "train", True)]
    assert got == want
    named = {**summary, "source": "someone/hh-rlhf",
             "invalid_messages": [m.replace(str(hh_file), "someone/hh-rlhf") for m in summary["invalid_messages"]]}
    assert stream.summary.to_dict() == named and named["dropped"] == {"invalid": 1}
