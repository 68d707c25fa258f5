"""``unipo demo``: the built-in default run, offline, in minutes.

SmolLM2-135M-Instruct (built-in source) learns the arithmetic task of :mod:`unipo.tasks.arithmetic` with two
variants (DPO and SimPO by default) on the same generated pairs and seed; the comparison machinery of
``unipo compare`` evaluates each against the starting model on held-out problems and writes the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unipo.io.atomic import atomic_write_text
from unipo.tasks.arithmetic import preference_rows, problems
from unipo.training.config import TrainConfig

#: settings chosen to finish in about 5 minutes on a 2-core CPU (24 steps of 8 pairs per variant)
DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    "train_pairs": 112,
    "heldout": 32,
    "steps": 24,
    "batch_size": 8,
    "learning_rate": 1e-5,
    "variants": ["minordpo", "simpo"],
}

#: per variant, the training settings that differ from DEFAULTS (TrainConfig fields: ``beta`` is the objective's
#: β). The demo's default variants are the two whose improvement held on every run measured (issue 22: seeds 0,
#: 1, 2 on the same pairs, bf16 and fp32; greedy pass rate on the 32 held-out problems, starting model 0.031):
#: minordpo 0.594 / 0.656 / 0.656 (bf16) and 0.656 / 0.688 / 0.625 (fp32); simpo 0.562 / 0.625 / 0.562 and
#: 0.562 / 0.625 / 0.594, both at the DEFAULTS. Plain DPO does not hold: at its best probe setting (10 steps at
#: lr 5e-5, β 0.05, below; 0.562 on one fp32 run) the three bf16 seeds gave 0.250 / 0.000 / 0.250, and at
#: the DEFAULTS (β 0.1) the claims suite's 80-pair setting gave 0.062 / 0.453 / 0.016 (claims/minordpo.py):
#: DPO's summed log-ratio pushes the chosen answers' likelihood down with the rejected ones' (the collapse
#: MinorDPO's clamp prevents), so its greedy answers sit on a knife edge. ``--variants dpo`` still trains it
#: with those settings.
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "dpo": {"learning_rate": 5e-5, "beta": 0.05, "max_steps": 10},
    "simpo": {},
    "minordpo": {},
}
#: a greedy pass rate at least this much above the starting model's counts as an improvement in the table
#: (4 of the 32 held-out problems)
IMPROVEMENT = 0.1


def write_task_data(out: Path, n_train: int, n_heldout: int, seed: int) -> tuple[Path, Path]:
    probs = problems(n_train + n_heldout, seed)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = []
    for name, part, s in (("train", probs[:n_train], seed), ("heldout", probs[n_train:], seed + 1)):
        path = data / f"{name}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in preference_rows(part, s)))
        files.append(path)
    return files[0], files[1]


def run_demo(out_dir: str = "runs/demo", *, model: str = DEFAULTS["model"], steps: int = DEFAULTS["steps"],
             variants: list[str] | None = None, train_pairs: int = DEFAULTS["train_pairs"],
             heldout: int = DEFAULTS["heldout"], learning_rate: float = DEFAULTS["learning_rate"],
             batch_size: int = DEFAULTS["batch_size"], seed: int = 0, progress: bool = True,
             seeds: list[int] | None = None, precision: str = "auto") -> dict[str, Any]:
    """Write the task's pairs (problems drawn with ``seed``), train and evaluate each variant (with ``seed``, or
    under each of ``seeds`` on the same pairs: mean ± standard error over seeds), return the runs' records."""
    from unipo.compare.config import CompareConfig
    from unipo.compare.pipeline import compare, read_config, run_dir_of
    from unipo.eval.config import EvalOptions
    from unipo.models.loading import choose_precision

    precision = choose_precision(precision)
    out = Path(out_dir)
    train_file, heldout_file = write_task_data(out, train_pairs, heldout, seed)
    base = TrainConfig(model=model, data=str(train_file), max_steps=steps, per_device_batch_size=batch_size,
                       learning_rate=learning_rate, max_length=128, max_prompt_length=96, save_steps=max(steps, 1),
                       seed=seed, progress=progress, warmup_ratio=0.1, precision=precision)
    evaluation = EvalOptions(task="arithmetic", limit=heldout, n_prompts=heldout, n_samples=2, max_new_tokens=12,
                             batch_size=16)
    runs = compare(CompareConfig(
        base=base, variants=variants or list(DEFAULTS["variants"]), out=out, eval_data=str(heldout_file),
        evaluation=evaluation, train_overrides=VARIANT_SETTINGS, seeds=seeds,
        baseline="reference" if seeds else None,
        title=f"unipo demo: SmolLM2-135M-Instruct learns exact-format addition (training precision {precision})"))
    for name, run in runs.items():  # what each run was trained with (its saved configuration), for the table
        if name != "reference":
            config = read_config(run_dir_of(out, name, seeds[0] if seeds else None))
            run["settings"] = {"learning_rate": config.training["learning_rate"],
                               "steps": config.training.get("max_steps"),
                               "beta": (config.objective or {}).get("beta", config.training.get("beta"))}
    return runs


def improvement(runs: dict[str, Any], name: str) -> str:
    """``yes (+0.531)`` / ``no (+0.031)``: the run's greedy pass rate against the starting model's (the
    ``reference`` row), an improvement from :data:`IMPROVEMENT` up; over several seeds, the smallest gain of
    any seed decides (``yes (every seed ≥ +0.188)``); ``–`` without both numbers."""
    before = runs.get("reference", {}).get("metrics", {}).get("greedy_pass_rate")
    if name == "reference" or not isinstance(before, int | float):
        return "–"
    per_seed = runs[name].get("per_seed")
    gains = [m.get("greedy_pass_rate") for m in per_seed.values()] if per_seed else \
        [runs[name]["metrics"].get("greedy_pass_rate")]
    if not gains or not all(isinstance(g, int | float) for g in gains):
        return "–"
    gain = min(gains) - before
    verdict = "yes" if gain >= IMPROVEMENT - 1e-9 else "no"
    return f"{verdict} ({'every seed ≥ ' if per_seed else ''}{gain:+.3f})"


def _settings_cell(settings: dict[str, Any]) -> str:
    """``5e-05, β 0.05, 10 steps`` from what a run was trained with; ``–`` for the starting model."""
    if not settings.get("learning_rate"):
        return "–"
    parts = [f"{settings['learning_rate']:g}"]
    if settings.get("beta") is not None:
        parts.append(f"β {settings['beta']:g}")
    if settings.get("steps"):
        parts.append(f"{settings['steps']} steps")
    return ", ".join(parts)


def before_after_table(runs: dict[str, Any]) -> str:
    cols = [("greedy_pass_rate", "verifier pass rate (greedy)"), ("pass_rate", "pass rate (sampled)"),
            ("reward_accuracy", "reward accuracy"), ("margin", "reward margin"), ("kl", "KL to reference")]
    head = ["run", "learning rate, β, steps", *(c[1] for c in cols), f"improved? (greedy, ≥ +{IMPROVEMENT:g})"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in runs.items():
        m = r["metrics"]
        cells = [_cell(m, k) for k, _ in cols]
        lines.append(f"| {name} | {_settings_cell(r.get('settings', {}))} | " + " | ".join(cells)
                     + f" | {improvement(runs, name)} |")
    return "\n".join(lines)


def _cell(m: dict[str, Any], key: str) -> str:
    """``0.562`` for one run, ``0.562 ± 0.031`` (mean ± standard error over seeds) for several; ``–`` if absent."""
    v = m.get(key)
    if not isinstance(v, int | float):
        return "–"
    se = m.get(f"{key}_se")
    return f"{v:.3f} ± {se:.3f}" if isinstance(se, float) and se == se else f"{v:.3f}"
