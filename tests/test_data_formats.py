"""Reading every supported source format and normalising every row shape (unipo.data.formats)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from tests.helpers import GOOD
from unipo.data.formats import (
    PreferencePair,
    is_hh_format,
    iter_rows,
    load_rows,
    normalize_row,
    parse_hh_dialogue,
    write_rows,
)
from unipo.errors import DataError

pytestmark = pytest.mark.unit

TEXT_ROWS = [
    {"prompt": "What is 12 + 35?", "chosen": " 47", "rejected": " 46"},
    {"prompt": "Say hi.", "chosen": " Hi!", "rejected": " No.", "note": "extra column"},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def _norm(row: dict) -> PreferencePair:
    return normalize_row(row, file="data.jsonl", row_number=7)


def _assert_error(exc: pytest.ExceptionInfo, file: str, row: int, field: str | None) -> None:
    msg = str(exc.value)
    assert file in msg and f"row {row}" in msg, msg
    if field is not None:
        assert f"field '{field}'" in msg, msg


# ----------------------------------------------------------------------------------------- file formats


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz"])
def test_jsonl(tmp_path, name):
    path = _write_jsonl(tmp_path / name, TEXT_ROWS)
    rows = list(load_rows(str(path)))
    assert rows == [(1, TEXT_ROWS[0]), (2, TEXT_ROWS[1])]


def test_jsonl_row_numbers_are_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(TEXT_ROWS[0]) + "\n\n" + json.dumps(TEXT_ROWS[1]) + "\n")
    assert [n for n, _ in load_rows(path)] == [1, 3]


def test_json_list_and_data_key(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(TEXT_ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"data": TEXT_ROWS}))
    assert [r for _, r in load_rows(tmp_path / "a.json")] == TEXT_ROWS
    assert [r for _, r in load_rows(tmp_path / "b.json")] == TEXT_ROWS


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("\n".join(json.dumps(r) for r in TEXT_ROWS))
    assert [r for _, r in load_rows(path)] == TEXT_ROWS


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = [{"prompt": [{"role": "user", "content": "hi"}],
             "chosen": [{"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "assistant", "content": "go away"}]}] * 3
    pq.write_table(pa.Table.from_pylist(conv), tmp_path / "d.parquet")
    rows = list(load_rows(tmp_path / "d.parquet"))
    assert [n for n, _ in rows] == [1, 2, 3]
    pair = normalize_row(rows[0][1], file="d.parquet", row_number=1)
    assert pair.conversational and pair.chosen[0]["content"] == "hello"


def test_csv(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerow({"prompt": "Line one,\nline two", "chosen": " yes", "rejected": " no"})
    rows = list(load_rows(path))
    assert rows == [(1, {"prompt": "Line one,\nline two", "chosen": " yes", "rejected": " no"})]


def test_saved_dataset_and_dataset_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(TEXT_ROWS).save_to_disk(str(tmp_path / "ds"))
    rows = [r for _, r in load_rows(tmp_path / "ds")]
    assert rows[0]["chosen"] == " 47" and len(rows) == 2
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(TEXT_ROWS),
                               "test": datasets.Dataset.from_list(TEXT_ROWS[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(list(load_rows(tmp_path / "dd", split="test"))) == 1
    assert len(list(load_rows(tmp_path / "dd"))) == 2
    with pytest.raises(DataError, match="split 'dev' not found; available splits: train, test"):
        list(load_rows(tmp_path / "dd", split="dev"))


def test_directory_of_files_with_split_names(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", TEXT_ROWS)
    _write_jsonl(tmp_path / "test.jsonl", TEXT_ROWS[:1])
    recs = list(iter_rows(tmp_path, split="test"))
    assert len(recs) == 1 and recs[0].file.endswith("test.jsonl")
    assert len(list(iter_rows(tmp_path))) == 2
    with pytest.raises(DataError, match="no data file for split 'validation'"):
        list(iter_rows(tmp_path, split="validation"))


def test_directory_of_unnamed_files(tmp_path):
    _write_jsonl(tmp_path / "part-a.jsonl", TEXT_ROWS)
    _write_jsonl(tmp_path / "part-b.jsonl", TEXT_ROWS)
    assert len(list(iter_rows(tmp_path))) == 4


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(TEXT_ROWS[0]) + "\n" + json.dumps(TEXT_ROWS[1]) + "\n{\"chosen\": oops}\n")
    with pytest.raises(DataError) as exc:
        list(load_rows(path))
    _assert_error(exc, "bad.jsonl", 3, None)
    assert "line 3 is not valid JSON" in str(exc.value)


def test_jsonl_line_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError) as exc:
        list(load_rows(path))
    _assert_error(exc, "list.jsonl", 1, None)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        list(load_rows(str(tmp_path / "nope.jsonl")))
    (tmp_path / "d.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        list(load_rows(tmp_path / "d.txt"))


def test_hub_name_without_network_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as exc:
        list(load_rows("some-org/some-preference-set"))
    msg = str(exc.value)
    assert "some-org/some-preference-set" in msg and "not found" in msg and "network" in msg


def test_write_rows_round_trip(tmp_path):
    pair = normalize_row({"prompt": "p", "chosen": " a", "rejected": " b", "w": [1.0]}, file="x", row_number=1)
    for name in ("out.jsonl", "sub/out.jsonl.gz"):
        n = write_rows(tmp_path / name, [pair, TEXT_ROWS[0]])
        assert n == 2
        rows = [r for _, r in load_rows(tmp_path / name)]
        assert rows == [{"prompt": "p", "chosen": " a", "rejected": " b", "w": [1.0]}, TEXT_ROWS[0]]
    assert not list(tmp_path.glob("**/*.tmp"))


# ----------------------------------------------------------------------------------------- row shapes


def test_explicit_text_prompt_and_extras():
    pair = _norm(TEXT_ROWS[1])
    assert pair == PreferencePair("Say hi.", " Hi!", " No.", False, {"note": "extra column"})


def test_explicit_identical_responses_allowed():
    pair = _norm({"prompt": "p", "chosen": " same", "rejected": " same"})
    assert pair.chosen == pair.rejected


def test_conversational_multi_turn_prompt():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
              {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    pair = _norm({"prompt": prompt, "chosen": [{"role": "assistant", "content": "bye!"}],
                  "rejected": "whatever", "chosen_weights": [1.0, 2.0]})
    assert pair.conversational and pair.prompt == prompt
    assert pair.rejected == [{"role": "assistant", "content": "whatever"}]
    assert pair.extras == {"chosen_weights": [1.0, 2.0]}


def test_implicit_text_prompt_cut_at_word_boundary():
    pair = _norm({"chosen": "The answer is 12", "rejected": "The answer is 15"})
    assert (pair.prompt, pair.chosen, pair.rejected) == ("The answer is", " 12", " 15")
    pair = _norm({"chosen": "Q: hi\nA: yes", "rejected": "Q: hi\nA: no"})
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q: hi\nA:", " yes", " no")
    pair = _norm({"chosen": "Say it: de", "rejected": "Say it: def"})
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Say it:", " de", " def")


def test_implicit_conversational_prompt():
    common = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
              {"role": "user", "content": "and?"}]
    pair = _norm({"chosen": common + [{"role": "assistant", "content": "good"}],
                  "rejected": common + [{"role": "assistant", "content": "bad"}]})
    assert pair.prompt == common and pair.chosen == [{"role": "assistant", "content": "good"}]


def test_hh_raw_multi_turn():
    chosen = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour.\n\nHuman: Then?\n\nAssistant: Bake it."
    rejected = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour.\n\nHuman: Then?\n\nAssistant: No."
    assert is_hh_format(chosen) and not is_hh_format("Human says hi")
    pair = _norm({"chosen": chosen, "rejected": rejected})
    assert pair.conversational
    assert pair.prompt == [{"role": "user", "content": "How do I bake bread?"},
                           {"role": "assistant", "content": "Mix flour."},
                           {"role": "user", "content": "Then?"}]
    assert pair.chosen == [{"role": "assistant", "content": "Bake it."}]
    assert pair.rejected == [{"role": "assistant", "content": "No."}]
    assert parse_hh_dialogue("Human: a\n\nAssistant: b") == [{"role": "user", "content": "a"},
                                                            {"role": "assistant", "content": "b"}]


# ----------------------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize("row, field, words", [
    ({"prompt": "p", "rejected": " b"}, "chosen", "missing field"),
    ({"prompt": "p", "chosen": " a", "rejected": None}, "rejected", "missing field"),
    ({"prompt": "p", "chosen": "   ", "rejected": " b"}, "chosen", "empty response"),
    ({"prompt": "p", "chosen": ["x"], "rejected": " b"}, "chosen", "prompt is text"),
    ({"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"}, "prompt[0].content",
     "non-string content"),
    ({"prompt": [{"role": "human", "content": "hi"}], "chosen": "a", "rejected": "b"}, "prompt[0].role",
     "role 'human'"),
    ({"prompt": ["hi"], "chosen": "a", "rejected": "b"}, "prompt[0]", "expected an object"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "prompt[0].content", "no 'content'"),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, "prompt", "non-empty list"),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "user", "content": "x"}],
      "rejected": "b"}, "chosen", "assistant"),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": " "}, "rejected",
     "empty response"),
    ({"chosen": "same text", "rejected": "same text"}, "rejected", "identical"),
    ({"chosen": "abc", "rejected": "abc def"}, "chosen", "empty response"),
    ({"chosen": "text", "rejected": [{"role": "assistant", "content": "x"}]}, "rejected", "both be text"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: ok"}, "chosen",
     "empty response"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: ok", "rejected": "plain"}, "rejected", "HH-RLHF"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: x\n\nHuman: b\n\nAssistant: y",
      "rejected": "\n\nHuman: a\n\nAssistant: z\n\nHuman: b\n\nAssistant: y"}, "chosen", "user/system turn"),
    ({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]},
     "chosen", "no leading messages"),
])
def test_bad_rows_name_file_row_and_field(row, field, words):
    with pytest.raises(DataError) as exc:
        normalize_row(row, file="prefs.jsonl", row_number=12)
    _assert_error(exc, "prefs.jsonl", 12, field)
    assert words in str(exc.value)
    assert exc.value.row == 12 and exc.value.file == "prefs.jsonl"


def test_bad_row_in_a_file_reports_the_source_line(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [TEXT_ROWS[0], {"prompt": "p", "chosen": " a"}])
    with pytest.raises(DataError) as exc:
        for rec in iter_rows(path):
            normalize_row(rec.data, file=rec.file, row_number=rec.row)
    _assert_error(exc, "d.jsonl", 2, "rejected")


# ---- files with a UTF-8 byte-order mark (issue 17, item 4; was tests/test_first_contact.py) ----

BOM = "\ufeff"


def _bom_files(tmp_path: Path) -> dict[str, Path]:
    rows = GOOD
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    files = {"jsonl": tmp_path / "a.jsonl", "json": tmp_path / "a.json", "jsonl.gz": tmp_path / "a.jsonl.gz",
             "csv": tmp_path / "a.csv"}
    files["jsonl"].write_text(BOM + jsonl, encoding="utf-8")
    files["json"].write_text(BOM + json.dumps(rows), encoding="utf-8")
    with gzip.open(files["jsonl.gz"], "wt", encoding="utf-8") as fh:
        fh.write(BOM + jsonl)
    with open(files["csv"], "w", encoding="utf-8-sig", newline="") as fh:  # utf-8-sig writes the mark
        writer = csv.DictWriter(fh, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerows(rows)
    return files


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["jsonl", "json", "jsonl.gz", "csv"])
def test_files_with_a_utf8_byte_order_mark_load(tmp_path, kind):
    from unipo.data.formats import iter_rows

    path = _bom_files(tmp_path)[kind]
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf" or kind == "jsonl.gz"
    rows = [rec.data for rec in iter_rows(str(path))]
    assert rows == GOOD  # the first key is 'prompt', not '\ufeffprompt'
