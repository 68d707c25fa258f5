"""FSDP2 on CPU: unipo's model path under ``torch.distributed.fsdp.fully_shard`` (one unit per decoder layer,
the root, and in one scenario a separate LM head whose weight stays a sharded DTensor), 2 processes, gloo,
torchrun, gives the losses and every parameter's gradient of the same model in one process on the whole batch;
a sharded checkpoint (torch.distributed.checkpoint) restores to the same next-step loss.

The scenarios (``tests/fsdp_worker.py``; the one-process run is each process's own unsharded run on the whole
batch, before it shards): tdpo2 (per-position KL from a sharded reference copy), sparsepo (the SparsePO mask
networks, a submodule of the policy, and KL) on a model with an untied head made its own FSDP unit (its weight,
and the reference's, stay sharded DTensors), learned_prior, and LoRA with the adapter-disabled policy as the
reference (tdpo1). Every batch is one padding-free row
under segment attention, and the head runs in chunks of 3 tokens (several chunks per side)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unipo.testing import make_tiny_model

pytestmark = pytest.mark.slow

WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"
SCENARIOS = ("tdpo2", "sparsepo_untied_head", "learned_prior", "lora_tdpo1")
#: trainable tensors of the token signal: two mask nets of 3 layers × (norm weight+bias, score weight+bias) + mix
SIGNAL_PARAMS = {"sparsepo_untied_head": 2 * (3 * 2 * 2 + 1), "learned_prior": 4}


def _run(cmd: list[str]) -> None:
    res = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True, timeout=300,
                         cwd=WORKER.parent.parent)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.fixture(scope="module")
def results(tiny_model_dir, tmp_path_factory):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is installed with torch, next to this Python"
    tmp = tmp_path_factory.mktemp("fsdp")
    untied = make_tiny_model(tmp / "untied", tie_word_embeddings=False)
    args = [str(tiny_model_dir), str(untied), str(tmp)]
    _run([torchrun, "--nproc_per_node", "2", "--master_port", "29541", str(WORKER), *args])
    return {s: (torch.load(tmp / f"{s}-single.pt"), torch.load(tmp / f"{s}-fsdp.pt")) for s in SCENARIOS}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fsdp_loss_and_every_gradient_equal_one_process(results, scenario):
    one, two = results[scenario]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-6)
    assert set(two["grads"]) == set(one["grads"])
    assert len(one["grads"]) >= 20
    for name, g in one["grads"].items():
        assert g.abs().max() > 0, f"{name}: a zero gradient cannot tell the runs apart"
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=1e-6 * g.abs().max().item(),
                                   msg=lambda m, n=name: f"{n}: {m}")
    signal = [n for n in one["grads"] if "unipo_token_signal" in n]
    assert len(signal) == SIGNAL_PARAMS.get(scenario, 0)


def test_sharded_checkpoint_resumes_to_the_same_next_step_loss(results):
    _, two = results["tdpo2"]
    ckpt = two["checkpoint"]
    assert ckpt["restored"] == pytest.approx(ckpt["live"], rel=1e-6, abs=1e-7)
    assert ckpt["live"] != pytest.approx(two["loss"], abs=1e-4)  # step 2 differs from step 1: the step happened
