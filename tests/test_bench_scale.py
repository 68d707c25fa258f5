"""Smoke tests of bench/scale.py, bench/dice_labels.py and bench/generation.py on tiny models (slow tier: each
starts processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*argv: str) -> str:
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_scale_tiny_writes_both_runs_and_the_second_maps_the_cache(tmp_path):
    _run("bench/scale.py", "--pairs", "200", "--model", "tests-tiny", "--out", str(tmp_path))
    runs = json.loads((tmp_path / "scale.json").read_text())
    assert [(r["pairs"], r["run"]) for r in runs] == [(200, "first"), (200, "second")]
    assert "prepared in" in runs[0]["data_log"] and "reused from the cache" in runs[1]["data_log"]
    for r in runs:
        assert r["rc"] == 0 and 0 < r["first_step_s"] <= r["seconds"] and r["peak_tree_rss_mb"] >= r["peak_rss_mb"] > 0
    assert (tmp_path / "scale.md").read_text().count("| 200 |") == 2


def test_dice_labels_and_generation_tiny():
    dice = json.loads(_run("bench/dice_labels.py", "--tiny").splitlines()[-1].removeprefix("RESULT "))
    assert dice["max_label_diff"] < 1e-4
    prompts = sum(dice["prompt_len"] - 17 * (i % 3) for i in range(dice["prompts"]))  # as the script draws them
    positions = dice["token_positions"]  # padding included: the per-sample rows repeat each prompt K - 1 more times
    assert positions["per-sample"] - positions["shared prompt"] >= 2 * (dice["k"] - 1) * prompts
    gen = json.loads(_run("bench/generation.py", "--tiny").splitlines()[-1].removeprefix("RESULT "))
    assert gen["tokens"]["unipo sample_responses"] > 0 and gen["tokens"]["model.generate"] > 0
