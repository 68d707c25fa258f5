"""The batched preparation (unipo.data.prepare: chunks, one tokenizer call per chunk, templates rendered once per
distinct prompt, worker processes) against the preparation it replaced, one row at a time (``row_at_a_time`` in
bench/prep.py, which also times it: kept there as the reference): the same pairs, pair by pair, the same summary,
the same errors, on the committed HH-RLHF slice and on the row-fuzz corpus."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from tests.row_fuzz import defective_row, valid_row
from unipo.data import prepare
from unipo.data.tokenize import prepare_pairs
from unipo.errors import DataError, UnipoError
from unipo.testing import make_tiny_tokenizer

_BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_prep", _BENCH / "prep.py")
_prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_prep)
row_at_a_time = _prep.row_at_a_time  # the preparation as it was before batching, one row at a time




def outcome(fn, source, tok, **kw):
    """(pairs as dicts, summary dict) or (the error's type, its message)."""
    try:
        pairs, summary = fn(source, tok, **kw)
    except UnipoError as exc:
        return type(exc).__name__, str(exc)
    return [p.to_dict() for p in pairs], summary.to_dict()


def assert_same(source, tok, **kw):
    old, new = outcome(row_at_a_time, source, tok, **kw), outcome(prepare_pairs, source, tok, **kw)
    if isinstance(old[0], list) and isinstance(new[0], list):
        assert len(new[0]) == len(old[0])
        for i, (a, b) in enumerate(zip(old[0], new[0], strict=True)):
            assert a == b, f"pair {i} (row {a['row']}) differs"
    assert new == old
    return old


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


HH_CASES = [  # (options, worker processes): every option once, the common ones also through workers
    ({"on_invalid": "skip"}, 2),
    ({"on_invalid": "skip", "max_length": 64, "max_prompt_length": 40}, 1),
    ({"on_invalid": "skip", "max_length": 64, "max_prompt_length": 40}, 2),
    ({"on_invalid": "skip", "max_length": 48, "max_prompt_length": None, "truncation_mode": "keep_start"}, 1),
    ({"on_invalid": "skip", "max_length": 300, "on_too_long": "drop", "limit": 150}, 2),
    ({"on_invalid": "skip", "max_length": 80, "bmc_masks": True}, 1),
    ({"on_invalid": "error"}, 2),  # row 87 has an empty chosen answer: the same error, naming row 87
    ({"on_invalid": "skip", "max_length": 30, "max_prompt_length": None, "on_too_long": "error"}, 1),
]


@pytest.mark.unit
@pytest.mark.parametrize(("options", "num_proc"), HH_CASES, ids=lambda o: json.dumps(o, sort_keys=True))
def test_hh_slice_pair_by_pair(hh_file, tok, small_chunks, options, num_proc):
    result = assert_same(hh_file, tok, num_proc=num_proc, **options)
    if options["on_invalid"] == "error":
        assert result[0] == "DataError" and "row 87" in result[1]
    elif options.get("on_too_long") != "error":
        assert result[1]["rows_read"] == options.get("limit", 200) and len(result[0]) > 5


@pytest.mark.unit
def test_hh_slice_with_the_default_chunks(hh_file, tok):
    """One chunk of 200 rows: each distinct prompt rendered once, every text in one tokenizer call."""
    pairs, summary = assert_same(hh_file, tok, on_invalid="skip", max_length=1024, max_prompt_length=512)
    assert summary["dropped"] == {"invalid": 1} and summary["conversational"] == 199 and len(pairs) == 199


@pytest.mark.unit
def test_fuzz_corpus_mixed_file(tmp_path, tok, small_chunks):
    """400 fuzzed rows (valid and defective) in one file: skip counts the same rows, error stops at the same
    row with the same message, with one process and with two; a line that is not JSON ends the file the same
    way (after the rows before it have been checked)."""
    rng = random.Random(11)
    rows = [valid_row(rng) if rng.random() < 0.6 else defective_row(rng)[0] for _ in range(400)]
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for num_proc, on_invalid in ((1, "skip"), (2, "skip"), (2, "error")):
        assert_same(str(path), tok, num_proc=num_proc, on_invalid=on_invalid, max_length=10**6,
                    max_prompt_length=None)
    broken = tmp_path / "broken.jsonl"  # rows that are objects (a list or a number is a file-level error too)
    rows = [r for r in rows if isinstance(r, dict)]
    lines = [json.dumps(r) for r in rows[:100]] + ["{not json"] + [json.dumps(r) for r in rows[100:]]
    broken.write_text("\n".join(lines) + "\n")
    for on_invalid in ("skip", "error"):
        kind, message = assert_same(str(broken), tok, num_proc=2, on_invalid=on_invalid)
        assert kind == "DataError"
        assert ("row 101" in message) == (on_invalid == "skip"), message  # error: an earlier invalid row first


@pytest.mark.unit
def test_fuzz_rows_one_by_one(tok):
    """300 fuzzed single rows: each is accepted as the same pair or refused with the same error."""
    rng = random.Random(5)
    for _ in range(300):
        row = valid_row(rng) if rng.random() < 0.4 else defective_row(rng)[0]
        assert_same([row], tok, max_length=10**6, max_prompt_length=None)


@pytest.mark.unit
def test_listwise_weights_and_template_errors(tok):
    """Listwise rows, pair weights, per-token weights of the wrong length and a tokenizer without a chat
    template: the same pairs or the same error."""
    listwise = [{"prompt": "Q?", "chosen": " yes", "rejected": [" no", " maybe", " never"], "w": 2.0},
                {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello.", "rejected": ["Go.", "What?"],
                 "w": 0.5}]
    assert_same(listwise, tok, pair_weight_column="w")
    assert_same(listwise + [{"prompt": "a", "chosen": "b", "rejected": "c", "w": -1}], tok, pair_weight_column="w",
                on_invalid="skip")
    weighted = [{"prompt": "Q?", "chosen": " yes", "rejected": " no", "cw": [1.0, 2.0], "rw": [0.5]}]
    kind, message = assert_same(weighted, tok, weights_columns=("cw", "rw"))
    assert kind == "DataError" and "weights for" in message
    conversational = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello.", "rejected": "Go."}]
    kind, message = assert_same(conversational, make_tiny_tokenizer(chat_template=False))
    assert kind == "TemplateError" and "chat template" in message


@pytest.mark.unit
def test_num_proc_is_validated(tok):
    with pytest.raises(UnipoError, match="num_proc must be at least 1"):
        prepare_pairs([{"prompt": "a", "chosen": "b", "rejected": "c"}], tok, num_proc=0)


@pytest.mark.unit
def test_a_worker_error_is_raised_as_the_sequential_one(tmp_path, tok, small_chunks):
    """An invalid row deep in the file (chunk 5 of 16-row chunks, prepared by a worker): the error names it."""
    rows = [{"prompt": f"q{i}?", "chosen": f" a{i}", "rejected": f" b{i}"} for i in range(100)]
    rows[70]["chosen"] = "   "
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="row 71, field 'chosen'"):
        prepare_pairs(str(path), tok, num_proc=2)


@pytest.mark.unit
def test_a_tokenizer_that_cannot_be_split_is_tokenised_whole(hh_file, tok, small_chunks, monkeypatch):
    """The conversations are tokenised in two pieces only where that is exact: a cut in the middle of the text
    (not after an added token) changes BPE merges, the check on the first chunk finds it, and every chunk is
    then tokenised whole: still the same pairs."""
    from unipo.data import tokenize

    facts = []
    real = tokenize._Tok.__init__

    def spy(self, tokenizer):
        real(self, tokenizer)
        facts.append(self)

    monkeypatch.setattr(tokenize._Tok, "__init__", spy)
    monkeypatch.setattr(prepare, "_last_added_token_end", lambda text, _: len(text) // 2)
    assert_same(hh_file, tok, on_invalid="skip", max_length=64, num_proc=1)
    assert [f.split_ok for f in facts] == [None, False]  # the reference's reader, then the batched one
    monkeypatch.undo()
    facts.clear()
    monkeypatch.setattr(tokenize._Tok, "__init__", spy)
    assert_same(hh_file, tok, on_invalid="skip", max_length=64, num_proc=1)
    assert [f.split_ok for f in facts] == [None, True]


@pytest.mark.slow
def test_smollm2_tokenizer_on_synthesised_hh_pairs(hh_file, tmp_path):
    """The real tokenizer and chat template (SmolLM2's ChatML, a 49k vocabulary): the 200-row slice and 3,000
    synthesised HH pairs (bench/synth_pairs.py), with the default chunks, in one process and in two."""
    import sys

    from unipo.models.builtin import resolve_builtin
    from unipo.models.loading import load_tokenizer

    sys.path.insert(0, str(_BENCH))
    from synth_pairs import synthesise

    smol = load_tokenizer(str(resolve_builtin("smollm2-135m-instruct")))
    assert_same(hh_file, smol, on_invalid="skip")
    synth = tmp_path / "synth.jsonl"
    synthesise(3000, synth)
    for num_proc in (1, 2):
        pairs, summary = assert_same(str(synth), smol, num_proc=num_proc, max_length=1024, max_prompt_length=512)
        assert len(pairs) == 3000 and summary["truncated_prompt"] > 0
