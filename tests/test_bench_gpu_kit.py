"""bench/gpu_kit.py and bench/gpu.py's budget and summary, without the network and without starting parts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kit = _load("gpu_kit")
gpu = _load("gpu")


def _wheel(dest: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    path = dest / f"{name}-{version}-py3-none-any.whl"
    meta = [f"Name: {name}", f"Version: {version}"] + [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(meta) + "\n")
    return path


def test_unmet_names_what_neither_the_kit_nor_the_image_provides(tmp_path):
    _wheel(tmp_path, "alpha", "1.0", ["beta>=2.0", "numpy", "gamma", 'winonly; sys_platform == "win32"',
                                      'testdep; extra == "test"', 'oldpy; python_version < "3.10"',
                                      'newpy>=1; python_version >= "3.12"'])
    _wheel(tmp_path, "beta", "1.5")
    _wheel(tmp_path, "newpy", "0.9")
    got = kit.unmet(tmp_path, "3.12", image=frozenset({"numpy"}))
    assert got == ["alpha-1.0-py3-none-any.whl needs beta>=2.0, the kit has beta 1.5",
                   "alpha-1.0-py3-none-any.whl needs gamma: neither in the kit nor on the image",
                   'alpha-1.0-py3-none-any.whl needs newpy>=1; python_version >= "3.12", the kit has newpy 0.9']
    # for 3.11 the marker of newpy is false: only the two others remain
    assert len(kit.unmet(tmp_path, "3.11", image=frozenset({"numpy"}))) == 2


def test_the_kit_carries_nothing_the_image_has_and_pins_only_image_packages():
    # a carried copy of an image package would shadow the image's (PYTHONPATH comes first)
    assert not {kit.norm(k) for k in kit.KIT} & kit.IMAGE_HAS
    assert {kit.norm(k) for k in kit.IMAGE_PINS} <= kit.IMAGE_HAS
    assert kit.IMAGE_PINS["transformers"] == "5.17.0"


def test_download_keeps_the_pinned_wheels_removes_others_and_calls_no_pip_when_complete(tmp_path, monkeypatch):
    pins = {"trl": "1.16.0", "liger-kernel": "0.8.5"}
    keep = [_wheel(tmp_path, "trl", "1.16.0"), _wheel(tmp_path, "liger_kernel", "0.8.5")]
    stale = [_wheel(tmp_path, "trl", "1.15.0"), _wheel(tmp_path, "numpy", "2.0.0")]

    def no_pip(*a, **k):
        raise AssertionError("pip was called although every pinned wheel is there")

    monkeypatch.setattr(subprocess, "run", no_pip)
    kit.download(tmp_path, pins, "3.12")
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_a_failed_download_is_one_line_naming_the_packages(tmp_path, monkeypatch):
    calls = []

    def failing(cmd, **k):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "Collecting trl==1.16.0\nERROR: No matching distribution "
                                                         "found for trl==1.16.0\n")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(kit.KitError) as err:
        kit.download(tmp_path, {"trl": "1.16.0"}, "3.12")
    msg = str(err.value)
    assert "\n" not in msg and "trl==1.16.0" in msg and "No matching distribution" in msg and "cp312" in msg
    cmd = calls[0]
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "--no-deps" in cmd
    assert "manylinux_2_17_x86_64" in cmd and "--only-binary=:all:" in cmd


def test_a_part_that_would_overrun_is_skipped_and_said(tmp_path):
    out = tmp_path / "g.json"
    assert gpu.main(["--device", "cpu", "--parts", "throughput,fsdp", "--budget", "5", "--out", str(out)]) == 0
    parts = json.loads(out.read_text())["parts"]
    assert parts["throughput"]["skipped"].startswith("would overrun the budget") and "120 s needed" in \
        parts["throughput"]["skipped"]
    assert parts["fsdp"] == {"skipped": "CUDA only"}
    md = out.with_suffix(".md").read_text()
    assert "## throughput: skipped: would overrun the budget" in md and "## fsdp: skipped: CUDA only" in md


def test_an_unknown_part_is_refused_with_the_list():
    with pytest.raises(SystemExit, match="unknown part nope; the parts: attention, throughput, flex"):
        gpu.main(["--device", "cpu", "--parts", "attention,nope"])


def test_the_summary_tables_show_each_row():
    result = {"environment": {"date": "D", "device": "cuda", "gpu": "NVIDIA H100", "python": "3.12.3",
                              "torch": "2.11.0", "transformers": "5.17.0", "trl": "1.16.0", "liger_kernel": "0.8.5"},
              "budget_s": 450, "total_seconds": 400,
              "parts": {"attention": {"tokens": 7600, "pairs": 3, "seconds": 31, "rows": [
                  {"dtype": "fp32", "backend": "flash", "path": "segment", "accepted": True, "ms_fwd_bwd": 1.5,
                   "rel_err": {"out": 1e-7, "dq": 3e-7, "dk": 2e-7, "dv": None}},
                  {"dtype": "fp32", "backend": "cudnn", "path": "dense_mask", "accepted": False,
                   "reason": "No available kernel"}]},
                  "throughput": {"seconds": 200, "rows": {
                      "unipo dpo (copy ref)": {"tok_s": 41000.4, "step_s": 0.2, "peak": 3 * 2**30, "mfu": 0.412,
                                               "first_loss": 0.693147},
                      "TRL default": {"tok_s": 20500.2, "step_s": 0.6, "peak": 6 * 2**30, "mfu": 0.3,
                                      "first_loss": 0.693147},
                      "TRL default + use_liger_kernel": {"skipped": "liger-kernel is not installed"}}},
                  "flex": {"killed": "at the budget after 60 s"}}}
    md = gpu.markdown(result)
    assert "NVIDIA H100; python 3.12.3, torch 2.11.0, transformers 5.17.0" in md
    assert "| fp32 | flash | segment | yes | 1.50 | 3.0e-07 |" in md
    assert "| fp32 | cudnn | dense_mask | no | – | No available kernel |" in md
    assert "| unipo dpo (copy ref) | 41000 | 0.200 | 3.0 | 41.2% | 0.69315 |" in md
    assert "| TRL default + use_liger_kernel | skipped: liger-kernel is not installed |" in md
    assert "unipo / TRL default: throughput 2.00x, peak memory 0.50x" in md
    assert "## flex: killed: at the budget after 60 s" in md
