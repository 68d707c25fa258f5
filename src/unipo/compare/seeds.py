"""The report of a comparison over several seeds (``unipo compare --seeds``).

Every metric of a variant becomes its mean over seeds with the standard error over seeds beside it (``X_se``:
the table prints ``mean ± se``, the bar plots draw it as an error bar); ``metrics.csv`` keeps one row per
(run, seed). For the metrics measured per held-out item (:data:`PAIRED`), each run's difference from the
baseline is the mean over seeds × items with a 95% two-way paired bootstrap interval and its minimum detectable
effect (:mod:`unipo.eval.stats`, which says why that test): ``paired.json`` and a section of ``report.md``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from unipo.eval.stats import PairedDifference, mean_and_se, paired_bootstrap

#: per-item values kept in each run's record → the metric whose mean they are
PAIRED: dict[str, str] = {"greedy_pass": "greedy_pass_rate", "sampled_pass": "pass_rate",
                          "dpo_reward_accuracy": "dpo_reward_accuracy", "dpo_margin": "dpo_margin",
                          "entropy": "entropy", "distinct_2": "distinct_2",
                          "chosen_logp": "chosen_mean_logp"}

#: metrics that describe the evaluation rather than the model: not averaged into "± se"
_COUNTS = frozenset({"n_pairs", "n_prompts", "n_samples", "n"})


def aggregate_metrics(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every numeric metric, with ``KEY_se`` its standard error over seeds (replacing the
    within-run standard errors, which measure item noise of one seed only); counts are kept as they are."""
    keys = [k for k in per_seed[0] if not k.endswith(("_se", "_std_err"))]
    out: dict[str, Any] = {}
    for key in keys:
        values = [m.get(key) for m in per_seed]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            continue
        mean, se = mean_and_se([float(v) for v in values])
        out[key] = mean
        if key not in _COUNTS and len(per_seed) > 1:
            out[f"{key}_se"] = se
    out["n_seeds"] = len(per_seed)
    return out


def paired_differences(records: dict[tuple[str, int | None], dict[str, Any]], names: list[str],
                       seeds: list[int], baseline: str, reference: dict[str, Any] | None
                       ) -> dict[str, dict[str, PairedDifference]]:
    """For each run other than ``baseline`` and each metric of :data:`PAIRED` that both have for every seed:
    the paired difference run − baseline over seeds × items. The ``reference`` (starting model) is one run
    whatever the seed, so as a baseline its items are repeated for each seed."""

    def items(name: str, seed: int) -> dict[str, list[float]]:
        if name == "reference":
            return (reference or {}).get("items") or {}
        return records[(name, seed)].get("items") or {}

    out: dict[str, dict[str, PairedDifference]] = {}
    for name in [n for n in ["reference", *names] if n != baseline]:
        if name == "reference" and reference is None:
            continue
        diffs: dict[str, PairedDifference] = {}
        for key, metric in PAIRED.items():
            rows = []
            for s in seeds:
                a, b = items(name, s).get(key), items(baseline, s).get(key)
                if not a or not b or len(a) != len(b):
                    break
                rows.append([x - y for x, y in zip(a, b, strict=True)])
            else:
                if rows and all(math.isfinite(v) for r in rows for v in r):
                    diffs[metric] = paired_bootstrap(rows)
        if diffs:
            out[name] = diffs
    return out


def write_seeds_report(out: Path, records: dict[tuple[str, int | None], dict[str, Any]], names: list[str],
                       seeds: list[int], reference: dict[str, Any] | None, *, title: str,
                       baseline: str) -> tuple[dict[str, Any], dict[str, Path]]:
    """``report.md`` (mean ± se over seeds, then the paired differences), ``metrics.csv`` (one row per run and
    seed), ``metrics.json``, ``paired.json`` and the plots; returns the aggregated runs and the files."""
    from unipo.eval.report import write_report

    runs: dict[str, Any] = {}
    if reference is not None:
        runs["reference"] = {"metrics": reference["metrics"], "config": reference["config"]}
    for name in names:
        first = records[(name, seeds[0])]
        runs[name] = {"metrics": aggregate_metrics([records[(name, s)]["metrics"] for s in seeds]),
                      "history": first.get("history"), "config": {**first["config"], "seeds": len(seeds)},
                      "per_seed": {s: records[(name, s)]["metrics"] for s in seeds}}
    diffs = paired_differences(records, names, seeds, baseline, reference)
    section = paired_section(diffs, baseline, seeds)
    files = write_report(out, runs, title=f"{title} ({len(seeds)} seeds: {', '.join(map(str, seeds))})",
                         sections=section)
    files["csv"] = _write_per_seed_csv(out / "metrics.csv", runs, seeds)
    files["paired"] = out / "paired.json"
    files["paired"].write_text(json.dumps({"baseline": baseline, "seeds": seeds, "test": _TEST, "differences": {
        n: {k: d.to_dict() for k, d in per.items()} for n, per in diffs.items()}}, indent=2) + "\n")
    return runs, files


_TEST = ("two-way paired bootstrap over seeds x held-out items (Owen 2007, the pigeonhole bootstrap), "
         "10,000 resamples, 95% percentile interval; MDE = (1.96 + 0.84) x bootstrap SE (80% power)")


def paired_section(diffs: dict[str, dict[str, PairedDifference]], baseline: str, seeds: list[int]) -> list[str]:
    """The Markdown section of paired differences from the baseline."""
    if not diffs:
        return []
    lines = [f"## Paired differences from `{baseline}`", "",
             f"Each run minus `{baseline}` on the same held-out items under the same seeds ({len(seeds)} seeds). "
             f"Interval: {_TEST}. \"yes\" where the interval excludes 0.", "",
             "| run | metric | difference | 95% interval | excludes 0 | MDE |", "|:--|:--|--:|--:|:--|--:|"]
    for name, per in diffs.items():
        for metric, d in per.items():
            lines.append(f"| {name} | {metric} | {d.mean:+.3f} | [{d.low:+.3f}, {d.high:+.3f}] | "
                         f"{'yes' if d.excludes_zero else 'no'} | {d.mde:.3f} |")
    return lines


def _write_per_seed_csv(path: Path, runs: dict[str, Any], seeds: list[int]) -> Path:
    """One row per (run, seed) at full precision; the reference (one evaluation) has seed ``–``."""
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for name, run in runs.items():
        per_seed = run.get("per_seed") or {"–": run["metrics"]}
        rows += [(name, str(s), m) for s, m in per_seed.items()]
    columns = sorted({k for _, _, m in rows for k, v in m.items() if isinstance(v, int | float)
                      and not isinstance(v, bool)})
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["run", "seed", *columns])
        for name, seed, m in rows:
            w.writerow([name, seed, *("" if not isinstance(m.get(c), int | float) or not math.isfinite(m[c])
                                      else repr(m[c]) for c in columns)])
    return path
