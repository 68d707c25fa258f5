"""Trainer callbacks that the pipelines and the CLI hand to :func:`unipo.training.train.train` (the training
layer imports nothing from here)."""

from __future__ import annotations

from transformers import TrainerCallback

#: the panels of a run's training-curve plot; ``kl/rejected`` is added when the run logged it
CURVE_KEYS = ("loss", "rewards/accuracies", "rewards/margins")


class TrainingCurvesCallback(TrainerCallback):
    """Draws the training curves into the run directory (:attr:`RunDir.curves_file`) when training ends (main
    process only)."""

    def __init__(self, label: str):
        self.label = label

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from unipo.eval.plots import training_curves
        from unipo.training.rundir import RunDir

        history = [h for h in state.log_history if "loss" in h]
        keys = CURVE_KEYS + (("kl/rejected",) if any("kl/rejected" in h for h in history) else ())
        run = RunDir(args.output_dir)
        run.path.mkdir(parents=True, exist_ok=True)
        training_curves({self.label: history}, run.curves_file, keys=keys)
