"""Logged means weighted by the pairs each batch and each process actually had.

Every metric of the objective (``rewards/*``, ``logps/*``, ``kl/*``, …) and the loss is a mean over the pairs
of one batch. Between two logging steps a process sees several batches, and under DDP / FSDP each process
its own, whose sizes differ at the end of an epoch (or of an evaluation). A mean of per-batch means, or of
per-process means, then weighs a pair of a short batch more than one of a full batch. :class:`PairWeightedMeans`
keeps, per metric, Σ (batch mean × pairs in the batch) and Σ pairs; :meth:`PairWeightedMeans.reduce` sums both
over the processes (one all-reduce) and divides, so the logged value is the mean over every pair, as one
process holding all of them would compute it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping

import torch

__all__ = ["PairWeightedMeans"]


class PairWeightedMeans:
    """Per-metric Σ value × pairs and Σ pairs since the last :meth:`reduce`."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.pairs: dict[str, int] = defaultdict(int)

    def add(self, metrics: Mapping[str, float | torch.Tensor], n_pairs: int) -> None:
        """One batch: ``metrics`` are means over its ``n_pairs`` pairs."""
        for key, value in metrics.items():
            self.sums[key] += float(value) * n_pairs
            self.pairs[key] += n_pairs

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def reduce(self, sum_across: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
               keys_across: Callable[[list[str]], list[list[str]]] = lambda k: [k]) -> dict[str, float]:
        """The pair-weighted mean of every metric over all processes, then cleared. ``keys_across`` gathers
        every process's metric names (a process may lack one, e.g. after an empty interval); ``sum_across``
        sums a float64 tensor over the processes (the identity in one process)."""
        keys = sorted({k for part in keys_across(sorted(self.pairs)) for k in part})
        local = torch.tensor([[self.sums.get(k, 0.0), float(self.pairs.get(k, 0))] for k in keys],
                             dtype=torch.float64).reshape(len(keys), 2)
        total = sum_across(local)
        self.sums.clear()
        self.pairs.clear()
        return {k: float(total[i, 0] / total[i, 1]) for i, k in enumerate(keys) if total[i, 1] > 0}
