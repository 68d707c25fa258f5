"""A new user's first contact (issue 17, item 4): every command that reads pairs takes ``--on-invalid``, an
invalid-row error ends with the way out, files with a UTF-8 byte-order mark load, and a model path that is
neither a directory nor a hub name says so."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from tests.helpers import ROWS, train_args, write_jsonl
from unipo.cli import main
from unipo.errors import DataError, UnipoError

WAY_OUT = "pass --on-invalid skip to drop such rows; they are counted in"
#: real HH-RLHF has pairs whose last assistant turn is blank
BLANK = {"prompt": "What is 1 + 1?", "chosen": "", "rejected": "3"}
GOOD = [{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
        {"prompt": "What is 3 + 3?", "chosen": "6", "rejected": "7"}]


# ---- the way out of an invalid row ----

@pytest.mark.unit
def test_invalid_row_error_names_row_and_field_and_ends_with_the_way_out(tmp_path):
    from unipo.data.tokenize import prepare_pairs
    from unipo.testing import make_tiny_tokenizer

    path = write_jsonl(tmp_path / "p.jsonl", [GOOD[0], BLANK, GOOD[1]])
    tok = make_tiny_tokenizer()
    with pytest.raises(DataError) as exc:
        prepare_pairs(str(path), tok)
    msg = str(exc.value)
    assert msg.startswith(f"{path}, row 2, field 'chosen': ")
    assert msg.endswith(f"; {WAY_OUT} data_summary.json")
    assert (exc.value.row, exc.value.field) == (2, "chosen")
    with pytest.raises(DataError, match=r"counted in eval.json \(data_summary\)$"):
        prepare_pairs(str(path), tok, invalid_counted_in="eval.json (data_summary)")
    pairs, summary = prepare_pairs(str(path), tok, on_invalid="skip")  # the way out works
    assert len(pairs) == 2 and summary.dropped == {"invalid": 1}


@pytest.mark.unit
@pytest.mark.parametrize("command", [["train"], ["bridge"], ["eval"], ["compare"], ["weights", "estimate"],
                                     ["iterate"]])
def test_every_command_that_reads_pairs_takes_on_invalid(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--on-invalid {error,skip}" in help_text or "--on_invalid {error,skip}" in help_text


class _EchoEditor:
    """An editor that answers every job with the same text (no model, no server)."""

    name = "echo"

    def edit_stream(self, jobs):
        from unipo.bridge.editors import EditResult

        for job in jobs:
            yield job.key, EditResult(text="edited answer", finish_reason="stop")

    def stop(self) -> None:
        pass

    def describe(self) -> dict:
        return {"type": "echo"}


@pytest.mark.unit
def test_bridge_skips_invalid_rows_and_counts_them(tmp_path):
    from unipo.bridge.config import BridgeConfig, BridgeOptions
    from unipo.bridge.pipeline import run_bridge
    from unipo.bridge.prompts import get_template

    data = write_jsonl(tmp_path / "hh.jsonl", [GOOD[0], BLANK, GOOD[1]])
    out = tmp_path / "bridged.jsonl"
    template = get_template("instruct", None)
    with pytest.raises(DataError) as exc:
        run_bridge(BridgeConfig(data, out, _EchoEditor(), template,
                                options=BridgeOptions(plot=False, progress_every=0)))
    assert "row 2, field 'chosen'" in str(exc.value) and str(exc.value).endswith(
        f"{WAY_OUT} OUT.summary.json (invalid)")
    summary = run_bridge(BridgeConfig(data, out, _EchoEditor(), template, options=BridgeOptions(
        plot=False, progress_every=0, on_invalid="skip", overwrite=True)))
    assert (summary["rows_read"], summary["edited"], summary["invalid"]) == (2, 2, 1)
    saved = json.loads(Path(str(out).removesuffix(".jsonl") + ".summary.json").read_text())
    assert saved["invalid"] == 1 and "row 2, field 'chosen'" in saved["invalid_messages"][0]
    assert [json.loads(ln)["row"] for ln in out.read_text().splitlines()] == [1, 3]


@pytest.mark.slow  # a training run and two evaluations: ~4 s on an idle 2-core machine
def test_eval_on_invalid_skip_counts_in_eval_json(tiny_model_dir, data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, run, "--max-steps", "1", "--set", "plots=false")) == 0
    held_out = write_jsonl(tmp_path / "held.jsonl", [*ROWS[:3], BLANK])
    args = ["eval", "--model", str(run), "--data", str(held_out), "--n-samples", "0", "--limit", "8"]
    assert main(args) != 0
    assert f"{WAY_OUT} eval.json (data_summary)" in capsys.readouterr().err
    assert main([*args, "--on-invalid", "skip"]) == 0
    record = json.loads((run / "eval.json").read_text())
    assert record["data_summary"]["dropped"] == {"invalid": 1} and record["metrics"]["n_pairs"] == 3


# ---- files with a UTF-8 byte-order mark ----

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


# ---- a model that is neither a directory nor a hub name ----

@pytest.mark.unit
def test_model_path_that_is_neither_a_directory_nor_a_hub_name(tmp_path, capsys):
    from unipo.models.loading import resolve_model_path

    for name in ("/no/such/dir", "./no/such", "runs/x/../y"):
        with pytest.raises(UnipoError, match="is not a directory and not a hub name"):
            resolve_model_path(name)
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"")
    with pytest.raises(UnipoError, match="is a file, not a model directory"):
        resolve_model_path(str(a_file))
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert main(["train", "--model", "/no/such/dir", "--data", str(data), "--output-dir", str(tmp_path / "r")]) != 0
    assert "model '/no/such/dir' is not a directory and not a hub name" in capsys.readouterr().err
