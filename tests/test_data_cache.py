"""The prepared-data cache (unipo.data.cache) and the Arrow table it maps (unipo.data.table): the table gives back
exactly the pairs prepare_pairs made; an entry is reused only for the same data, tokenizer and options; a torn,
damaged or foreign entry is prepared again (one line), never read; a failed preparation leaves nothing behind."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from unipo.data.cache import cache_key, data_cache_dir, prepared_table, source_digest
from unipo.data.table import PairsTable, take
from unipo.data.tokenize import PrepOptions, prepare_pairs
from unipo.errors import DataError
from unipo.testing import make_tiny_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIPO_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def expected_rows(pairs):
    return [{**{k: v for k, v in p.to_dict().items() if v is not None}, "index": i} for i, p in enumerate(pairs)]


def run(source, tok, opts):
    lines = []
    table, summary = prepared_table(source, tok, opts, log=lines.append)
    return table, summary, lines


def test_table_gives_back_every_column(tok):
    """Listwise rows, pair weights, TIS-DPO weights and BMC masks survive the Arrow round trip exactly."""
    rows = [{"prompt": "Q?", "chosen": " yes", "rejected": [" no", " maybe"], "w": 2.0},
            {"prompt": "R?", "chosen": " a b", "rejected": " c", "w": 0.25}]
    opts = PrepOptions(pair_weight_column="w")
    pairs, _ = prepare_pairs(rows, tok, opts)
    table = PairsTable.from_pairs(pairs, opts)
    assert list(table) == expected_rows(pairs)
    assert table[0]["more_rejected_ids"] == pairs[0].more_rejected_ids and "more_rejected_ids" not in table[1]
    assert table.first_listwise()["row"] == 1
    masked = PrepOptions(bmc_masks=True, weights_columns=("cw", "rw"))
    rows = [{"prompt": "Q?", "chosen": " the bread", "rejected": " no bread"}]
    n = [len(x) for x in prepare_pairs(rows, tok)[0][0].to_dict().values() if isinstance(x, list)][1:3]
    rows[0].update(cw=[0.5 + i for i in range(n[0])], rw=[1.5 * i for i in range(n[1])])
    pairs, _ = prepare_pairs(rows, tok, masked)
    assert list(PairsTable.from_pairs(pairs, masked)) == expected_rows(pairs)
    assert PairsTable.from_pairs(pairs, masked)[0]["chosen_diff_mask"] == pairs[0].chosen_diff_mask


def test_views_and_lists_take_the_same_rows(hh_file, tok):
    pairs, _ = prepare_pairs(hh_file, tok, on_invalid="skip", max_length=64)
    table = PairsTable.from_pairs(pairs, PrepOptions(max_length=64, on_invalid="skip"))
    idx = [5, 0, 17, 3]
    view = take(table, idx)
    assert list(view) == take(expected_rows(pairs), idx) and view[-1]["index"] == 3
    assert list(take(view, [1, 2])) == [expected_rows(pairs)[0], expected_rows(pairs)[17]]
    with pytest.raises(IndexError):
        view[4]


def test_prepared_once_then_mapped(hh_file, tok, cache):
    """The first call prepares and caches; the second maps the file (no Arrow memory allocated for the pairs)
    and gives the same pairs and summary; other worker counts reuse the entry."""
    opts = PrepOptions(on_invalid="skip", max_length=96)
    pairs, summary = prepare_pairs(hh_file, tok, opts)
    table, first, lines = run(hh_file, tok, opts)
    assert len(lines) == 1 and "pairs prepared in" in lines[0] and str(cache) in lines[0]
    assert list(table) == expected_rows(pairs) and first.to_dict() == summary.to_dict()
    before = pa.total_allocated_bytes()
    again, second, lines = run(hh_file, tok, PrepOptions(on_invalid="skip", max_length=96, num_proc=1))
    assert len(lines) == 1 and "reused from the cache" in lines[0] and "memory-mapped" in lines[0]
    assert pa.total_allocated_bytes() - before < 4096  # mapped, not read into memory
    assert list(again) == expected_rows(pairs) and second.to_dict() == summary.to_dict()
    assert len(list(cache.glob("*.arrow"))) == 1 and not list(cache.glob("*.tmp*"))


def test_every_input_of_the_result_is_in_the_key(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "chosen": " a", "rejected": " b"}) + "\n")
    base = cache_key(str(path), source_digest(path), tok, PrepOptions())
    assert cache_key(str(path), source_digest(path), tok, PrepOptions(num_proc=3)) == base
    assert cache_key(str(path), source_digest(path), tok, PrepOptions(invalid_counted_in="eval.json")) == base
    for opts in (PrepOptions(max_length=100), PrepOptions(on_invalid="skip"), PrepOptions(bmc_masks=True),
                 PrepOptions(limit=5), PrepOptions(truncation_mode="keep_start")):
        assert cache_key(str(path), source_digest(path), tok, opts) != base, opts
    assert cache_key(str(path), source_digest(path), make_tiny_tokenizer(chat_template=False), PrepOptions()) != base
    assert cache_key("other.jsonl", source_digest(path), tok, PrepOptions()) != base
    path.write_text(path.read_text() + json.dumps({"prompt": "R?", "chosen": " c", "rejected": " d"}) + "\n")
    assert cache_key(str(path), source_digest(path), tok, PrepOptions()) != base


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_record", "foreign_record", "foreign_table"])
def test_a_bad_entry_is_prepared_again(hh_file, tok, cache, tmp_path, damage):
    opts = PrepOptions(on_invalid="skip", max_length=64, limit=40)
    table, _, _ = run(hh_file, tok, opts)
    expected = list(table)
    arrow = next(cache.glob("*.arrow"))
    record = arrow.with_suffix(".json")
    del table
    if damage == "truncate":
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    elif damage == "flip":  # same size, one byte changed in the middle
        data = bytearray(arrow.read_bytes())
        data[len(data) // 2] ^= 0xFF
        arrow.write_bytes(bytes(data))
    elif damage == "no_record":
        record.unlink()
    elif damage == "foreign_record":
        meta = json.loads(record.read_text())
        record.write_text(json.dumps({**meta, "key": "0" * 24}))
    else:  # another entry's table, with its own valid record copied in
        other = tmp_path / "other.jsonl"
        other.write_text(json.dumps({"prompt": "Q?", "chosen": " a", "rejected": " b"}) + "\n")
        run(str(other), tok, opts)
        foreign = next(p for p in cache.glob("*.arrow") if p != arrow)
        arrow.write_bytes(foreign.read_bytes())
    again, _, lines = run(hh_file, tok, opts)
    assert len(lines) == 2 and "failed its check" in lines[0] and "pairs prepared in" in lines[1], lines
    assert list(again) == expected
    _, _, lines = run(hh_file, tok, opts)
    assert "reused from the cache" in lines[0]


def test_a_failed_preparation_leaves_nothing(tmp_path, tok, cache):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": " a" if i != 3 else " ", "rejected": " b"}) + "\n"
                            for i in range(6)))
    with pytest.raises(DataError, match="row 4"):
        run(str(path), tok, PrepOptions())
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]


def test_uncached_sources_and_switch(tmp_path, tok, cache, monkeypatch):
    rows = [{"prompt": "Q?", "chosen": " a", "rejected": " b"}]
    table, _, lines = run(rows, tok, PrepOptions())
    assert lines == [] and len(table) == 1 and not cache.exists()
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    monkeypatch.setenv("UNIPO_DATA_CACHE", "off")
    table, _, lines = run(str(path), tok, PrepOptions())
    assert lines == [] and len(table) == 1 and not cache.exists()
    monkeypatch.delenv("UNIPO_DATA_CACHE")
    monkeypatch.setenv("UNIPO_CACHE", str(tmp_path / "home"))
    assert data_cache_dir() == tmp_path / "home" / "data"
    assert os.fspath(data_cache_dir()).endswith("data")


def test_a_cache_that_cannot_be_written_is_one_line(hh_file, tok, cache, monkeypatch):
    """A full disk while writing the entry: one line, the pairs prepared in memory, no entry left."""
    import pyarrow.ipc

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyarrow.ipc, "new_file", full)
    opts = PrepOptions(on_invalid="skip", max_length=64, limit=30)
    table, summary, lines = run(hh_file, tok, opts)
    assert len(lines) == 1 and "cannot write" in lines[0] and "No space left" in lines[0]
    assert list(table) == expected_rows(prepare_pairs(hh_file, tok, opts)[0]) and summary.rows_read == 30
    assert not list(cache.glob("*.arrow")) and not list(cache.glob("*.tmp*"))
