"""The unified objective: DPO and its variants as presets of one composable loss.

Pure PyTorch; imports no transformers. Start at :mod:`unipo.objective.core` (the loss),
:mod:`unipo.objective.presets` (every named variant) and :mod:`unipo.objective.registry` (the parts).
"""

from unipo.objective.config import ObjectiveConfig, resolve
from unipo.objective.core import LossOutput, Objective, compute_loss, variants

__all__ = ["LossOutput", "Objective", "ObjectiveConfig", "compute_loss", "resolve", "variants"]
