"""The claims suite (claims/): verdicts from paired differences, the TIS-DPO controls, and a tiny-model smoke of
every claim command (slow tier: the full runs are not CI's job)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from claims.common import verdict
from claims.tisdpo import control

from unipo.eval.stats import PairedDifference

ROOT = Path(__file__).resolve().parents[1]


def _diff(mean: float, low: float, high: float, mde: float = 0.1) -> PairedDifference:
    return PairedDifference(mean, low, high, mde / 2.8, mde, 3, 64, 1000)


@pytest.mark.unit
def test_verdicts():
    assert verdict(_diff(0.2, 0.05, 0.35), +1) == "reproduced"
    assert verdict(_diff(-0.2, -0.35, -0.05), -1) == "reproduced"
    assert verdict(_diff(-0.2, -0.35, -0.05), +1) == "contradicted"
    assert verdict(_diff(0.01, -0.05, 0.07, mde=0.09), +1) == "inconclusive at this power (MDE 0.090)"
    # the comparison could have seen the paper's own effect and did not
    assert verdict(_diff(0.0, -0.03, 0.03, mde=0.05), +1, paper_effect=0.2).startswith("not reproduced")
    assert verdict(_diff(0.0, -0.03, 0.03, mde=0.05), +1, paper_effect=0.013).startswith("inconclusive")


@pytest.mark.unit
def test_tisdpo_controls_keep_each_responses_values_or_its_mean(tmp_path):
    paper = tmp_path / "weights-paper.jsonl"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_weights": [1.0, 2.0, 3.0, 6.0],
             "rejected_weights": [0.5, 1.5]}]
    paper.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shuffled = json.loads(control(paper, "shuffled", seed=1).read_text())
    assert sorted(shuffled["chosen_weights"]) == [1.0, 2.0, 3.0, 6.0]  # the same values, positions scrambled
    mean = json.loads(control(paper, "mean").read_text())
    assert mean["chosen_weights"] == [3.0] * 4 and mean["rejected_weights"] == [1.0, 1.0]
    assert mean["prompt"] == "p"


@pytest.mark.slow
def test_every_claim_command_runs_on_a_tiny_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "claims", "all", "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("minordpo", "midpo", "bmc", "fdpo", "tisdpo"):
        report = (tmp_path / name / "report.md").read_text()
        result = json.loads((tmp_path / name / "result.json").read_text())
        assert "| verdict |" in report and result, name
    # the arms the arithmetic claims share were trained once per seed: dpo serves four claims
    assert sorted(p.name for p in (tmp_path / "arith" / "runs" / "dpo").iterdir()) == ["seed-0", "seed-1"]
    # resumable: a second call trains nothing
    again = subprocess.run([sys.executable, "-m", "claims", "bmc", "--smoke", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0 and "training" not in again.stderr.replace("not retrained", "")
