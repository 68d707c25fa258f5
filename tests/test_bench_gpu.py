"""bench/gpu.py on a machine without CUDA: one line, exit 0, nothing written (the GPU parts are not run here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0(tmp_path, monkeypatch, capsys):
    import torch

    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]
    assert not out.exists()
