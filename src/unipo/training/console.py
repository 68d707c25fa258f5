"""The console during training: transformers' progress bar with one readable line per logging step above it.

transformers' :class:`~transformers.ProgressCallback` writes each log entry as a raw Python dict
(``{'loss': '0.1913', 'grad_norm': ...}``), and its :class:`~transformers.PrinterCallback` (``progress:
false``) prints the same dict. :class:`ConsoleCallback` replaces both: the same bar (tqdm, on stderr) and,
written with ``tqdm.write`` above it, one line per logging step with what a person watches —

    step 20/200 · loss 0.6285 · reward acc 0.75 · margin 0.1342 · KL c/r 0.0035/0.0125 · 1,234 tok/s · ETA 3:12

(the KL only where the objective logs one; tokens per second where the trainer counts the tokens it trained
on: ``num_input_tokens_seen``, which :class:`~unipo.training.trainer.PreferenceTrainer` keeps exactly; a NaN
prints as ``nan``, never 0, plus ``grad norm nan`` where the gradient norm is not finite and the count of
skipped steps under ``nan_policy: skip_step``). Every
metric, raw, is in ``metrics.jsonl`` (:class:`~unipo.training.outputs.JsonlMetricsCallback`) and in the
``report_to`` trackers, never on the console.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer

#: logged keys holding the cumulative count of trained tokens (ours and TRL's name for it)
TOKEN_KEYS = ("num_input_tokens_seen", "num_tokens")


def clock(seconds: float) -> str:
    """``3:12`` or ``1:02:03`` for a duration in seconds."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def metric_fields(logs: Mapping[str, float], prefix: str = "") -> list[str]:
    """``loss · reward acc · margin · KL c/r`` from a log entry (each only where the entry has it)."""
    def get(key: str) -> float | None:
        value = logs.get(prefix + key)
        return float(value) if isinstance(value, int | float) else None

    fields = []
    for key, label, fmt in (("loss", "loss", ".4f"), ("rewards/accuracies", "reward acc", ".2f"),
                            ("rewards/margins", "margin", ".4g")):
        if (value := get(key)) is not None:
            fields.append(f"{label} {value:{fmt}}")
    kl_c, kl_r = get("kl/chosen"), get("kl/rejected")
    if kl_c is not None and kl_r is not None:
        fields.append(f"KL c/r {kl_c:.3g}/{kl_r:.3g}")
    grad_norm = get("grad_norm")
    if grad_norm is not None and not math.isfinite(grad_norm):  # why the non-finite guard acted (nonfinite.py)
        fields.append(f"grad norm {grad_norm}")
    if skipped := get("skipped_steps"):
        fields.append(f"{skipped:.0f} non-finite step{'s' if skipped != 1 else ''} skipped")
    return fields


def train_line(logs: Mapping[str, float], step: int, max_steps: int, tokens_per_s: float | None,
               eta_s: float | None) -> str:
    """The console line of one training log entry."""
    fields = [f"step {step}/{max_steps}", *metric_fields(logs)]
    if tokens_per_s is not None:
        fields.append(f"{tokens_per_s:,.0f} tok/s")
    if eta_s is not None:
        fields.append(f"ETA {clock(eta_s)}")
    return " · ".join(fields)


class ConsoleCallback(ProgressCallback):
    """transformers' progress bar (none under ``disable_tqdm``) and one readable line per log entry: a
    training step (:func:`train_line`), an evaluation, the end of training. Main process only."""

    def __init__(self, file=None):
        super().__init__()
        self.file = file
        self._start: tuple[float, int] | None = None  # (time, step) when this session's training began
        self._last: tuple[float, float] | None = None  # (time, tokens) at the previous training log
        self._paused = 0.0  # seconds spent evaluating: left out of the rates

    def _now(self) -> float:
        return time.monotonic() - self._paused

    def write(self, line: str) -> None:
        file = self.file or sys.stderr
        if self.training_bar is not None:
            tqdm.write(line, file=file)
        else:
            print(line, file=file, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self.current_step = 0
        now = self._now()
        self._start, self._last = (now, state.global_step), (now, float(state.num_input_tokens_seen or 0))
        if not args.disable_tqdm:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not args.disable_tqdm:
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:
            loss = logs.get("train_loss")
            self.write(f"trained {state.global_step} steps in {clock(logs['train_runtime'])}"
                       + (f" · mean loss {loss:.4f}" if isinstance(loss, int | float) else ""))
        elif "loss" in logs:
            self.write(train_line(logs, state.global_step, state.max_steps, *self._rates(logs, state)))
        elif any(k.startswith("eval_") for k in logs):
            self._paused += float(logs.get("eval_runtime", 0.0))
            self.write(" · ".join([f"eval at step {state.global_step}", *metric_fields(logs, "eval_")]))

    def _rates(self, logs: Mapping[str, float], state) -> tuple[float | None, float | None]:
        """(tokens per second since the previous training log, seconds left at this session's pace)."""
        now = self._now()
        tokens = next((float(logs[k]) for k in TOKEN_KEYS if isinstance(logs.get(k), int | float)), None)
        rate = None
        if tokens is not None and self._last is not None and now > self._last[0]:
            rate = (tokens - self._last[1]) / (now - self._last[0])
            self._last = (now, tokens)
        eta = None
        if self._start is not None and state.global_step > self._start[1] and state.max_steps > 0:
            per_step = (now - self._start[0]) / (state.global_step - self._start[1])
            eta = per_step * max(0, state.max_steps - state.global_step)
        return rate, eta


def use_console(trainer: Trainer) -> ConsoleCallback:
    """Replace ``trainer``'s ProgressCallback / PrinterCallback (a notebook's bar stays) by a
    :class:`ConsoleCallback`; return it."""
    replaced = False
    for cb in list(trainer.callback_handler.callbacks):
        if type(cb) in (ProgressCallback, PrinterCallback):
            trainer.remove_callback(cb)
            replaced = True
    console = ConsoleCallback()
    if replaced:
        trainer.add_callback(console)
    return console
