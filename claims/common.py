"""What every claim shares: the setting, the runs (through ``unipo compare --seeds``), the paired tests and the
verdict.

Every arithmetic claim trains on the same pairs of the built-in task (:mod:`unipo.tasks.arithmetic`: 80
training problems, 64 held-out, operands 1–12, so all 144 problems are used and none is both), in one shared
comparison directory ``OUT/arith``: a run that two claims need (DPO at lr 1e-5 is the baseline of four of
them) is trained once per seed. Why this task: SmolLM2-135M-Instruct starts at a greedy pass rate near 0 (it
knows most sums but never answers in the exact format), the verdict of an answer is exact (no judge), and a
run of 24 steps of 8 pairs with its evaluation takes about 1.5 CPU-minutes, so 3 seeds of every arm fit in
hours, not days.

Verdicts (:func:`verdict`): the paired difference variant − baseline over seeds × held-out items with its 95%
interval (:mod:`unipo.eval.stats`): **reproduced** when the interval excludes 0 in the paper's direction,
**contradicted** when it excludes 0 in the other, **not reproduced** when it includes 0 although the
comparison could have detected the paper's own effect (MDE ≤ that effect), else **inconclusive at this
power**, with the minimum effect the comparison could have detected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from unipo.compare.config import CompareConfig
from unipo.compare.pipeline import compare, record_items, run_dir_of, run_name
from unipo.compare.seeds import PAIRED
from unipo.eval.config import EvalOptions
from unipo.eval.stats import PairedDifference, mean_and_se, paired_bootstrap
from unipo.training.rundir import EvalRecord, RunDir

#: a paired metric's name → its per-item key in a run's record (the inverse of unipo.compare.seeds.PAIRED)
METRICS = {metric: key for key, metric in PAIRED.items()}


@dataclass(frozen=True)
class Setting:
    """The shared training and evaluation setting of the claims (the pilot of issue 22)."""

    model: str = "smollm2-135m-instruct"
    n_train: int = 80
    n_heldout: int = 64
    steps: int = 24
    batch_size: int = 8
    learning_rate: float = 1e-5
    seeds: tuple[int, ...] = (0, 1, 2)
    precision: str = "auto"
    data_seed: int = 0
    eval_steps: int = 6  # held-out metrics (chosen log-prob) logged during training
    n_samples: int = 4
    max_new_tokens: int = 16
    eval_batch_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig key for every run

    @classmethod
    def smoke(cls, model: str) -> Setting:
        """A tiny model and a few steps: every code path of a claim, no meaningful figure (CI)."""
        return cls(model=model, n_train=8, n_heldout=4, steps=2, batch_size=4, seeds=(0, 1), eval_steps=1,
                   n_samples=2, max_new_tokens=4, eval_batch_size=4)


def arith_data(out: Path, s: Setting) -> tuple[Path, Path]:
    """The task's training and held-out pairs, written once under ``out/data``."""
    from unipo.demo.pipeline import write_task_data

    train, held = out / "data" / "train.jsonl", out / "data" / "heldout.jsonl"
    if not (train.exists() and held.exists()):
        write_task_data(out, s.n_train, s.n_heldout, s.data_seed)
    return train, held


def base_config(s: Setting, train: Path, held: Path, **over: Any):
    from unipo.training.config import TrainConfig

    return TrainConfig.from_dict({
        "model": s.model, "data": str(train), "max_steps": s.steps, "per_device_batch_size": s.batch_size,
        "learning_rate": s.learning_rate, "max_length": 128, "max_prompt_length": 96,
        "save_steps": max(s.steps, 1), "warmup_ratio": 0.1, "precision": s.precision, "progress": False,
        "eval_data": str(held), "eval_steps": s.eval_steps, **s.extra, **over}, source="claims setting")


def eval_options(s: Setting) -> EvalOptions:
    """How every arm of a claim is scored: the arithmetic verifier on the held-out prompts."""
    return EvalOptions(task="arithmetic", limit=s.n_heldout, n_prompts=s.n_heldout, n_samples=s.n_samples,
                       max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch_size)


def run_arms(out: Path, s: Setting, arms: Sequence[Any], *, train: Path, held: Path, reference: bool = True,
             title: str = "claims", **over: Any) -> dict[str, Path]:
    """Train on ``train`` and evaluate on ``held`` every arm (a variant spec; training keys allowed) under every
    seed in ``out`` (resumable per arm and seed); returns each arm's run name → its directory of seeds.
    ``over``: TrainConfig keys for these arms only."""
    compare(CompareConfig(base=base_config(s, train, held, **over), variants=list(arms), out=out, eval_data=str(held),
                          evaluation=eval_options(s), seeds=list(s.seeds), title=title, include_reference=reference,
                          keep_models=False))
    return {run_name(a): run_dir_of(out, run_name(a), None) for a in arms}


@dataclass(frozen=True)
class Arm:
    """One trained configuration: its label in the claim's report and the directory of its seeds."""

    label: str
    runs: Path

    def run(self, seed: int) -> RunDir:
        return RunDir(self.runs / f"seed-{seed}")

    def eval(self, seed: int) -> EvalRecord:
        return self.run(seed).eval_record()

    def items(self, seed: int, metric: str) -> list[float]:
        return list(record_items(self.eval(seed))[METRICS[metric]])

    def metric(self, seed: int, key: str) -> float:
        v = self.eval(seed).metrics.get(key)
        return float(v) if isinstance(v, int | float) else math.nan

    def history(self, seed: int) -> list[dict[str, Any]]:
        return self.run(seed).metrics()


def arm(runs: dict[str, Path], spec: Any, label: str | None = None) -> Arm:
    name = run_name(spec)
    return Arm(label or name, runs[name])


def paired(a: Arm, b: Arm, metric: str, seeds: Sequence[int]) -> PairedDifference:
    """``a − b`` on ``metric`` over seeds × held-out items (two-way paired bootstrap)."""
    return paired_bootstrap([[x - y for x, y in zip(a.items(s, metric), b.items(s, metric), strict=True)]
                             for s in seeds])


def arms_table(arms: Iterable[Arm], columns: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """A Markdown table: one row per arm, each column's mean ± standard error over seeds."""
    return ["| arm | " + " | ".join(columns) + " |", "|:--|" + "--:|" * len(columns),
            *(f"| {a.label} | " + " | ".join(summary(a, c, seeds) for c in columns) + " |" for a in arms)]


def summary(a: Arm, key: str, seeds: Sequence[int]) -> str:
    """``mean ± se`` of a run metric over seeds."""
    mean, se = mean_and_se([a.metric(s, key) for s in seeds])
    return "–" if math.isnan(mean) else (f"{mean:.3f}" if math.isnan(se) else f"{mean:.3f} ± {se:.3f}")


def verdict(d: PairedDifference, direction: int, paper_effect: float | None = None) -> str:
    """The verdict on a claim that the difference has sign ``direction`` (module docstring)."""
    if d.excludes_zero:
        return "reproduced" if (d.mean > 0) == (direction > 0) else "contradicted"
    if paper_effect is not None and d.mde <= abs(paper_effect):
        return f"not reproduced (MDE {d.mde:.3f} ≤ the paper's effect {abs(paper_effect):.3f})"
    return f"inconclusive at this power (MDE {d.mde:.3f})"


def difference_row(label: str, d: PairedDifference, direction: int, paper_effect: float | None = None) -> str:
    return (f"| {label} | {d.mean:+.3f} | [{d.low:+.3f}, {d.high:+.3f}] | {d.mde:.3f} | "
            f"{verdict(d, direction, paper_effect)} |")


DIFF_HEADER = ["| comparison (variant − baseline, expected sign) | difference | 95% interval | MDE | verdict |",
               "|:--|--:|--:|--:|:--|"]


def write_claim(out: Path, name: str, lines: list[str], results: dict[str, Any]) -> Path:
    """``out/name/report.md`` and ``out/name/result.json``."""
    where = out / name
    where.mkdir(parents=True, exist_ok=True)
    (where / "result.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    report = where / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report


def setting_line(s: Setting) -> str:
    from unipo.models.loading import choose_precision

    return (f"Setting: {s.model}, arithmetic task ({s.n_train} training / {s.n_heldout} held-out problems), "
            f"{s.steps} steps of {s.batch_size} pairs, lr {s.learning_rate:g} unless stated, each preset's own β "
            f"(0.1 unless stated), warm-up 0.1, precision {choose_precision(s.precision)} ({s.precision}), "
            f"seeds {', '.join(map(str, s.seeds))}; "
            f"evaluation: greedy and {s.n_samples} samples per held-out problem, at most {s.max_new_tokens} new "
            "tokens.")


def with_seeds(s: Setting, seeds: Sequence[int] | None) -> Setting:
    return s if not seeds else replace(s, seeds=tuple(seeds))
