"""Data parallel on CPU: two processes (gloo, launched by torchrun) with the same global batch give the
same losses and metrics as one process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROWS, write_jsonl

pytestmark = pytest.mark.slow


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_processes_match_one(tiny_model_dir, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this Python")
    data = write_jsonl(tmp_path / "d.jsonl", ROWS * 2)
    common = ["train", "--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "4",
              "--learning-rate", "1e-3", "--no-progress", "--save-steps", "100", "--set", "plots=false"]
    _run([sys.executable, "-m", "unipo", *common, "--output-dir", str(tmp_path / "one"),
          "--per-device-batch-size", "4"])
    _run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "unipo", *common,
          "--output-dir", str(tmp_path / "two"), "--per-device-batch-size", "2"])

    def steps(name):
        return [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in ln]

    one, two = steps("one"), steps("two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=5e-4), key  # float reduction order differs
