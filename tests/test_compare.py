"""``unipo compare`` on a tiny model: three variants, one report whose numbers agree with the runs."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import ROWS, write_jsonl
from unipo.cli import main


@pytest.mark.slow
def test_compare_three_variants(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    held = write_jsonl(tmp_path / "held.jsonl", ROWS[:6])
    out = tmp_path / "report"
    args = ["compare", "--model", str(tiny_model_dir), "--data", str(data), "--eval-data", str(held),
            "--max-steps", "2", "--variants", "dpo", "simpo", "{preset: tdpo2, beta: 0.2}", "--out", str(out),
            "--n-prompts", "3", "--n-samples", "2", "--max-new-tokens", "6"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    rows = {r["run"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    names = ["reference", "dpo", "simpo", "tdpo2_beta=0.2"]
    assert set(rows) == set(names)
    for name in names[1:]:
        ev = json.loads((out / "runs" / name / "eval.json").read_text())["metrics"]
        for key in ("reward_accuracy", "margin", "kl", "distinct_1"):
            assert float(rows[name][key]) == pytest.approx(ev[key], rel=1e-6, abs=1e-9)
        assert name in report
    for png in ("training_curves.png", "reliability.png"):
        assert (out / png).exists(), png
    # resumes: a second call retrains nothing
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("finished earlier, not retrained") == 3
    # a trained run without its eval.json is evaluated again, not retrained
    before = (out / "runs" / "dpo" / "model.safetensors").stat().st_mtime_ns
    (out / "runs" / "dpo" / "eval.json").unlink()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "dpo: trained earlier, not retrained" in err and "dpo: evaluating" in err
    assert (out / "runs" / "dpo" / "eval.json").exists()
    assert (out / "runs" / "dpo" / "model.safetensors").stat().st_mtime_ns == before
