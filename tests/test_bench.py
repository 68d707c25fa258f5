"""Smoke test of bench/compare.py: a tiny random model, both frameworks, 2 timed steps each."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("trl")


@pytest.mark.slow
def test_bench_quick_tiny():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), "--quick", "--tiny", "--warmup", "1", "--steps", "2"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("SUMMARY "), lines[-5:]
    assert "checks ok" in lines[-1]
    # same work on both sides: equal per-batch token counts and equal first-batch losses (log 2 for DPO)
    checks = [ln for ln in lines if ln.startswith("check unipo dpo (copy ref) vs TRL default")]
    assert len(checks) == 1
    assert "per-batch policy tokens equal: yes" in checks[0]
    losses = [float(x) for x in re.findall(r"first-batch loss ([0-9.]+) vs ([0-9.]+)", checks[0])[0]]
    assert abs(losses[0] - losses[1]) < 1e-3
    assert abs(losses[0] - 0.693147) < 1e-3
    assert any(ln.startswith("unipo tdpo2 (copy ref)") for ln in lines)
    assert any(ln.startswith("TRL best (precompute_ref_log_probs)") for ln in lines)
