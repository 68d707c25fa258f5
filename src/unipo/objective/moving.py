"""Moving statistics for the parts that keep state across batches (β-DPO, α-DPO)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class MovingStats:
    """Exponential moving mean and standard deviation of a batch statistic, started at 0 as in the released
    β-DPO and α-DPO code (``x ← m·x + (1 − m)·x_batch``)."""

    def __init__(self, momentum: float):
        self.momentum, self.mean, self.std, self.steps = momentum, 0.0, 0.0, 0

    def update(self, values: torch.Tensor) -> None:
        m = self.momentum
        batch_std = float(values.std()) if values.numel() > 1 else 0.0  # one pair: no spread (0, not NaN)
        self.mean = m * self.mean + (1 - m) * float(values.mean())
        self.std = m * self.std + (1 - m) * batch_std
        self.steps += 1

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "steps": float(self.steps)}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.mean, self.std, self.steps = float(state["mean"]), float(state["std"]), int(state["steps"])
