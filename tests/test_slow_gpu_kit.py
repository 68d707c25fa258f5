"""The GPU check's dry run here (issue 27): everything the lent machine would run, except CUDA.

The kit is built for THIS machine's Python (bench/gpu_kit.py --python-version X.Y --image-pins: the wheels the
GPU image lacks plus the image's transformers 5.17, accelerate 1.15, huggingface-hub 1.33, tokenizers 0.23.2),
cached under $UNIPO_CACHE/gpu-kit (the registries are needed once; without them and without the cache the
tests are skipped, saying so). bench/gpu_device.sh then installs it with --no-index --no-deps into a fresh
target and runs bench/gpu.py --device cpu from that install: torch stays this venv's (2.13: PyPI's torch 2.11
for Linux is a CUDA build whose CUDA libraries are several GB, so the image's torch is not reproduced here).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kit_dir() -> Path:
    kit = _load("gpu_kit")
    cache = Path(os.environ.get("UNIPO_CACHE", Path.home() / ".cache" / "unipo")) / "gpu-kit" / \
        f"cp{PY.replace('.', '')}-image"
    try:
        kit.build(cache, PY, image_pins=True)
    except kit.KitError as exc:  # no registry and no cached kit: say why, do not fail CI on the network
        pytest.skip(f"the kit could not be built: {exc}")
    return cache


@pytest.fixture(scope="module")
def site(kit_dir, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(target), *map(str, sorted(kit_dir.glob("*.whl")))], check=True)
    return target


def test_dry_run_installs_the_kit_offline_and_runs_every_cpu_part(kit_dir, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPU_KIT=str(kit_dir), OUT=str(out), GPU_BUDGET="400",
               PIP_NO_INDEX="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_device.sh"), "--device", "cpu", "--length", "300",
                           "--batch-size", "2", "--warmup", "1", "--steps", "2"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md", "gpu_log.txt"]
    result = json.loads((out / "gpu_check.json").read_text())
    env_ = result["environment"]
    origins = env_["module_origins"]
    # the kit's packages come from the fresh target, unipo from src/, torch from this venv
    for name in ("trl", "datasets", "liger_kernel", "rapidfuzz", "openai", "gguf", "transformers", "accelerate"):
        assert "/unipo-site-" in origins[name], (name, origins[name])
    assert origins["unipo"] == str(ROOT / "src" / "unipo" / "__init__.py")
    assert env_["transformers"] == "5.17.0" and env_["accelerate"] == "1.15.0" and env_["trl"] == "1.16.0"
    assert all("needs triton" in p for p in env_["kit_unmet"]), env_["kit_unmet"]  # Liger's GPU compiler only
    parts = result["parts"]
    assert all("error" not in p and "killed" not in p for p in parts.values()), parts
    _check_attention(parts["attention"])
    _check_throughput(parts["throughput"], parts["throughput_best"])
    for row in parts["flex"]["rows"]:  # eager FlexAttention's forward on the CPU vs the float64 reference
        limit = 1e-5 if row["dtype"] == "fp32" else 3e-2
        assert row["flex_rel_err"]["out"] < limit and row["segment_rel_err"]["out"] < limit
    assert parts["fsdp"] == {"skipped": "CUDA only"}
    assert "## attention: done" in proc.stdout and "## throughput_best: done" in proc.stdout  # summary printed


def _check_attention(part: dict) -> None:
    rows = part["rows"]
    assert len(rows) == 20  # 2 dtypes x 5 backends x 2 paths
    accepted = [r for r in rows if r["accepted"]]
    assert {(r["backend"], r["path"]) for r in accepted} >= {("math", "segment"), ("math", "dense_mask"),
                                                             ("default", "segment"), ("default", "dense_mask")}
    for r in accepted:  # against the float64 dense-mask reference (an independent implementation)
        limit = 1e-5 if r["dtype"] == "fp32" else 3e-2
        assert max(r["rel_err"].values()) < limit, r


def _check_throughput(part: dict, best: dict) -> None:
    rows = {**part["rows"], **best["rows"]}
    assert rows["TRL default + use_liger_kernel"] == {"skipped": "Liger's kernels are Triton GPU kernels: CUDA only"}
    ran = {k: v for k, v in rows.items() if "tok_s" in v}
    assert set(ran) == {"unipo dpo (copy ref)", "TRL default", "unipo dpo (precomputed ref)",
                        "TRL best (precompute_ref_log_probs)"}, rows
    tokens = {tuple(r["policy_tokens"]) for r in ran.values()}
    assert len(tokens) == 1  # the same pairs in the same order for all four
    for r in ran.values():  # DPO with the reference equal to the policy: the first loss is log 2
        assert math.isclose(r["first_loss"], math.log(2), abs_tol=1e-4), r


def test_a_part_past_its_deadline_is_killed_and_said(tmp_path):
    gpu = _load("gpu")
    args = SimpleNamespace(device="cpu", length=4000, batch_size=2, warmup=1, steps=1)
    t = time.time()
    rec = gpu.run_part("attention", args, time.time() + 0.5, tmp_path)
    assert rec["killed"].startswith("at the budget after") and "rows" not in rec
    assert time.time() - t < 30


def test_unipo_trains_under_the_gpu_images_transformers(site):
    """transformers 5.17 (the lent image's) with unipo's training path: a preset trained end to end through
    ``unipo train``, activation checkpointing, and TRL's DPOTrainer's loss equal to unipo's."""
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT / 'src'}", OMP_NUM_THREADS="1")
    version = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert version == "5.17.0"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_training_train.py::test_every_sequence_level_preset_trains[dpo]",
                           "tests/test_models_segment_attention.py::test_gradient_checkpointing_recomputes_the_same",
                           "tests/test_integrations_trl.py::test_dpo_loss_and_gradient_equal_trls_and_unipos"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0 and re.search(r"^3 passed", proc.stdout, re.M), proc.stdout[-3000:]


def test_the_kit_for_the_gpu_machine_is_complete_fits_and_prints_the_call(capsys):
    """The real kit (cp312, manylinux x86-64): every requirement met by the kit or the image, under 64 MiB
    with the working tree, and the call printed."""
    kit = _load("gpu_kit")
    dest = Path(os.environ.get("UNIPO_CACHE", Path.home() / ".cache" / "unipo")) / "gpu-kit" / "cp312"
    try:
        kit.build(dest, "3.12", image_pins=False)
    except kit.KitError as exc:
        pytest.skip(f"the kit could not be built: {exc}")
    assert kit.main(["--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert 'run(command="bash bench/gpu_device.sh", carry=[' in out and "timeout_s=560" in out
    wheels = {kit.wheel_name(p) for p in dest.glob("*.whl")}
    assert wheels == {kit.norm(k) for k in kit.KIT}
    assert all("cp312" in p.name or "py3" in p.name or "py312" in p.name for p in dest.glob("*.whl"))
