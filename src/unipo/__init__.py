"""unipo: DPO and its variants as one composable objective.

``unipo.compute_loss(variant, *, policy_chosen_logps, ...)`` is the functional entry point;
``unipo.variants()`` lists the presets. The training, data, pipeline and report layers live in
sub-packages and are imported on demand.
"""

from unipo.objective import LossOutput, Objective, ObjectiveConfig, compute_loss, resolve, variants

__all__ = ["LossOutput", "Objective", "ObjectiveConfig", "compute_loss", "resolve", "variants"]
__version__ = "0.1.0"
