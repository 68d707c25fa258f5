"""The worker of ``tests/test_training_metrics.py`` (not a test module): in each of two gloo processes, the pair-
weighted means of the objective's metrics over this process's batches (unequal sizes, the last ones short),
reduced across the processes by :class:`unipo.training.metrics.PairWeightedMeans`; written to ``OUT/rank{R}.json``.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

import unipo
from unipo.training.metrics import PairWeightedMeans

#: the batch sizes of each process: 4 + 3 pairs and 4 + 1 pairs (12 in all)
BATCHES = {0: (4, 3), 1: (4, 1)}
PRESET = "dpo"


def all_pairs(seed: int = 0) -> dict[str, torch.Tensor]:
    """12 pairs of per-token log-probs (5 tokens, some masked), policy and reference: the data of the test."""
    g = torch.Generator().manual_seed(seed)
    n, t = sum(sum(b) for b in BATCHES.values()), 5
    mask = (torch.rand(2, n, t, generator=g) > 0.2).float()
    mask[:, :, 0] = 1
    logps = -torch.rand(4, n, t, generator=g) * 3
    return {"policy_chosen_logps": logps[0], "policy_rejected_logps": logps[1], "ref_chosen_logps": logps[2],
            "ref_rejected_logps": logps[3], "chosen_mask": mask[0], "rejected_mask": mask[1]}


def batch_metrics(data: dict[str, torch.Tensor], start: int, size: int) -> dict[str, float]:
    """The objective's loss and metrics of pairs ``start … start + size - 1`` (means over those pairs)."""
    out = unipo.compute_loss(PRESET, **{k: v[start:start + size] for k, v in data.items()}, beta=0.5)
    return {"loss": float(out.losses.mean()), **{k: float(v) for k, v in out.metrics.items()}}


def main(out: str, rank: int, world: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)
    data, means = all_pairs(), PairWeightedMeans()
    start = sum(sum(BATCHES[r]) for r in range(rank))
    for size in BATCHES[rank]:
        means.add(batch_metrics(data, start, size), size)
        start += size

    def sum_across(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def keys_across(keys: list[str]) -> list[list[str]]:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, keys)
        return gathered

    result = means.reduce(sum_across, keys_across)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
