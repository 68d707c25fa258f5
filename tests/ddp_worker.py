"""The worker of ``tests/test_distributed.py::test_token_level_variants_under_ddp`` (not a test module):
trains tdpo2, sparsepo and learned_prior on the tiny model through unipo's training stages (plan, load, build
the PreferenceTrainer, ``trainer.train()``), in one process (``python tests/ddp_worker.py MODEL DATA OUT 4``,
per-device batch 4) or in each of two DDP processes (``torchrun --nproc_per_node 2 tests/ddp_worker.py MODEL
DATA OUT 2``). Each process saves, per variant, its step losses and every tensor of its final policy (the
token signal is a submodule of it) to ``OUT/VARIANT-world{W}-rank{R}.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from unipo.training.config import TrainConfig
from unipo.training.plan import plan_training
from unipo.training.train import build_trainer, load_data, load_models

VARIANTS = {
    "tdpo2": {},
    "sparsepo": {"token_signal": {"type": "sparsepo_masks", "common": False, "dropout": 0.0}},
    "learned_prior": {},
}


def main(model: str, data: str, out: str, batch_size: str) -> None:
    from unipo.models.loading import load_tokenizer

    torch.set_num_threads(1)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    for variant, extra in VARIANTS.items():
        cfg = TrainConfig(model=model, data=data, output_dir=f"{out}/{variant}-world{world}", variant=variant,
                          max_steps=3, learning_rate=1e-2, lr_scheduler_type="constant",
                          per_device_batch_size=int(batch_size), save_steps=100, progress=False, plots=False,
                          precision="fp32", **extra)
        plan = plan_training(cfg)
        tokenizer = load_tokenizer(model)
        run_data = load_data(plan, tokenizer)
        trainer = build_trainer(plan, load_models(plan, model, tokenizer, run_data), run_data)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        torch.save({"losses": losses, "state": state}, Path(out) / f"{variant}-world{world}-rank{rank}.pt")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(*sys.argv[1:5])
