"""Comparison report of several evaluated runs: ``report.md`` + ``metrics.csv`` + ``metrics.json`` + PNGs.

Input: ``runs`` maps a run name to a dict with

- ``"metrics"``: the flat eval dict of floats (``reward_accuracy``, ``margin``, ``ece``, ``kl``,
  ``distinct_1``, ``distinct_2``, ``self_bleu``, ``entropy``, ``pass_rate``, ...; any other numeric key
  becomes a column too),
- ``"history"``: the logged training records (dicts with ``"step"``),
- ``"config"``: at least ``"variant"`` and its parameters,
- ``"calibration_bins"``: the bins of :func:`unipo.eval.metrics.pairwise_calibration`.

All but ``"metrics"`` are optional. The table marks the best value of a column in bold when the metric
has a direction (see :data:`DIRECTIONS`); KL and response length have none on their own (a run that did
not move has KL 0): read them with the reward-vs-KL frontier plot.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unipo.eval import plots
from unipo.io.atomic import atomic_path, atomic_write_text

__all__ = ["DIRECTIONS", "COLUMN_ORDER", "metric_direction", "format_value", "write_report"]

#: Preferred column order; other numeric metrics follow alphabetically.
COLUMN_ORDER: tuple[str, ...] = (
    "greedy_pass_rate", "pass_rate", "win_rate", "reward_accuracy", "margin", "dpo_reward_accuracy", "dpo_margin",
    "ece", "ece_fdpo", "kl", "kl_k3", "distinct_1", "distinct_2", "self_bleu", "entropy", "response_length",
)

#: "max": higher is better; "min": lower is better; None: no best value is marked.
DIRECTIONS: dict[str, str | None] = {
    "reward_accuracy": "max", "margin": "max", "dpo_reward_accuracy": "max", "dpo_margin": "max",
    "ece": "min", "ece_fdpo": "min", "kl": None, "kl_k3": None, "kl_std_err": None, "kl_per_token": None,
    "distinct_1": "max", "distinct_2": "max", "self_bleu": "min", "entropy": "max", "pass_rate": "max",
    "greedy_pass_rate": "max", "n_pairs": None, "win_rate": "max", "judge_undecided": None,
    "response_length": None, "n": None, "n_prompts": None, "n_samples": None, "margin_std": None,
}


def metric_direction(key: str) -> str | None:
    """Direction of a metric: :data:`DIRECTIONS`, else by name (``*accuracy*``/``pass*``/``distinct*``:
    max; ``*loss*``/``*ece*``/``*error*``: min), else None."""
    if key in DIRECTIONS:
        return DIRECTIONS[key]
    if plots.error_of(key) is not None:
        return None
    k = key.lower()
    if "accurac" in k or k.startswith("pass") or k.startswith("distinct") or k.endswith("margin"):
        return "max"
    if "loss" in k or "ece" in k or "error" in k:
        return "min"
    return None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def format_value(v: float | None) -> str:
    """Table formatting: 4 significant digits; "–" for missing or non-finite values."""
    if v is None or not math.isfinite(v):
        return "–"
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.4g}"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item"):  # numpy / torch scalars
        return _json_safe(x.item())
    return str(x)


def _params(config: Mapping[str, Any]) -> str:
    parts = []
    for k, v in config.items():
        if k == "variant" or v is None:
            continue
        if isinstance(v, Mapping):
            parts.extend(f"{k}.{kk}={vv}" for kk, vv in v.items() if vv is not None)
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def _columns(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    keys: set[str] = set()
    for r in runs.values():
        keys.update(k for k, v in (r.get("metrics") or {}).items() if _num(v) is not None)
    ordered = [k for k in COLUMN_ORDER if k in keys]
    return ordered + sorted(keys - set(ordered))


def _best(runs: Mapping[str, Mapping[str, Any]], columns: list[str]) -> dict[str, list[str]]:
    best: dict[str, list[str]] = {}
    for col in columns:
        direction = metric_direction(col)
        if direction is None:
            continue
        vals = {n: _num((r.get("metrics") or {}).get(col)) for n, r in runs.items()}
        finite = {n: v for n, v in vals.items() if v is not None and math.isfinite(v)}
        if len(finite) < 2:
            continue
        target = max(finite.values()) if direction == "max" else min(finite.values())
        best[col] = [n for n, v in finite.items() if v == target]
    return best


_HOW_TO_READ = """\
## How to read this

Reward accuracy is the share of held-out preference pairs whose implicit reward (β times the policy /
reference log-ratio) ranks the chosen response above the rejected one (ties count half); the margin is
the mean reward difference. ECE measures how well the implied probability σ(margin) that the chosen
response wins matches how often it does (both orderings of each pair are scored; lower is better): unipo's
own pairwise ECE. ECE (f-DPO code), `ece_fdpo`, is what the f-DPO authors' released code computes: confidence
exp(mean token log-prob of the chosen response) against how often the chosen response has the higher mean
token log-prob.
KL(π ‖ π_ref) is estimated from the policy's own samples, in nats per response: it is the price paid
for the reward, so compare runs on the reward-vs-KL plot rather than on KL alone (a run that did not
train has KL 0). Distinct-n (unique n-grams, higher = more diverse), self-BLEU (samples of the same
prompt against each other, lower = more diverse) and predictive entropy measure diversity; the f-DPO
paper (Wang et al., ICLR 2024) reports that the choice of divergence trades accuracy against diversity
and calibration. Bold marks the best value of a column where a direction makes sense; "–" means not
measured; "± x" is one standard error (over held-out pairs, or over sampled responses for KL), so two
runs whose values differ by less than about two standard errors are not told apart by this data."""


def write_report(out_dir: str | Path, runs: Mapping[str, Mapping[str, Any]],
                 title: str = "unipo comparison report", sections: list[str] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``metrics.csv``, ``metrics.json`` and the PNGs into ``out_dir``. ``sections``:
    Markdown lines placed after the results table (e.g. the paired differences of a multi-seed comparison).

    Returns the written files by role: ``"report"``, ``"csv"``, ``"json"`` and one entry per plot
    (``"reliability"``, ``"training_curves"``, ``"reward_bars"``, ``"pass_bars"``, ``"reward_vs_kl"``,
    ``"accuracy_vs_diversity"``); plots without data are not written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = _columns(runs)
    best = _best(runs, columns)
    metrics = {n: dict(runs[n].get("metrics") or {}) for n in runs}
    configs = {n: dict(runs[n].get("config") or {}) for n in runs}
    files = _write_plots(out, runs, metrics, columns)
    files["csv"] = _write_csv(out / "metrics.csv", metrics, configs, columns)
    files["json"] = _write_json(out / "metrics.json", runs, metrics, configs, columns, best)
    lines = [f"# {title}", "", f"{len(runs)} run(s) compared.", "", "## Results", "",
             *_results_table(metrics, configs, columns, best)]
    marked = [c for c in columns if metric_direction(c) is not None]
    if marked:
        lines += ["", "Direction of each column: " + ", ".join(
            f"{c} {'↑' if metric_direction(c) == 'max' else '↓'}" for c in marked) + "."]
    if sections:
        lines += ["", *sections]
    lines += ["", _HOW_TO_READ, "", *_plots_section(files)]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    files["report"] = report
    return files


def _write_plots(out: Path, runs: Mapping[str, Mapping[str, Any]], metrics: dict[str, dict[str, Any]],
                 columns: list[str]) -> dict[str, Path]:
    """The PNGs that have data, by role; a run has the same colour in every plot."""
    names = list(runs)
    colours = plots.palette(names)
    files: dict[str, Path] = {}
    bins = {n: runs[n]["calibration_bins"] for n in names if runs[n].get("calibration_bins")}
    if bins:
        ece = {n: v for n in bins if (v := _num(metrics[n].get("ece"))) is not None}
        files["reliability"] = plots.reliability_diagram(bins, out / "reliability.png", ece=ece,
                                                          colours=colours)
    histories = {n: runs[n]["history"] for n in names if runs[n].get("history")}
    if histories:
        from unipo.training.rundir import RunDir  # the report's curves keep a run's file name

        files["training_curves"] = plots.training_curves(histories, out / RunDir.CURVES, colours=colours)
    bar_keys = [k for k in ("reward_accuracy", "margin") if k in columns]
    if bar_keys:
        files["reward_bars"] = plots.metric_bars(metrics, out / "reward_bars.png", keys=bar_keys,
                                                 colours=colours)
    pass_keys = [k for k in ("greedy_pass_rate", "pass_rate") if k in columns]
    if pass_keys:  # with their standard errors (over seeds in a multi-seed comparison) as error bars
        files["pass_bars"] = plots.metric_bars(metrics, out / "pass_bars.png", keys=pass_keys, colours=colours,
                                               title="Verifier pass rates per run")
    y_key = "reward_accuracy" if "reward_accuracy" in columns else ("margin" if "margin" in columns else None)
    if y_key and "kl" in columns:
        files["reward_vs_kl"] = plots.reward_kl_frontier(metrics, out / "reward_vs_kl.png", y=y_key,
                                                         colours=colours)
    div_key = next((k for k in ("distinct_2", "self_bleu", "entropy") if k in columns), None)
    if y_key and div_key:
        files["accuracy_vs_diversity"] = plots.accuracy_diversity_scatter(
            metrics, out / "accuracy_vs_diversity.png", x=div_key, y=y_key, colours=colours)
    return files


def _write_csv(path: Path, metrics: dict[str, dict[str, Any]], configs: dict[str, dict[str, Any]],
               columns: list[str]) -> Path:
    """One row per run at full precision; an empty cell for a missing or non-finite value."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["run", "variant", *columns])
        for n in metrics:
            row = [n, str(configs[n].get("variant", ""))]
            for c in columns:
                v = _num(metrics[n].get(c))
                row.append("" if v is None or not math.isfinite(v) else repr(v))
            w.writerow(row)
    return path


def _write_json(path: Path, runs: Mapping[str, Mapping[str, Any]], metrics: dict[str, dict[str, Any]],
                configs: dict[str, dict[str, Any]], columns: list[str], best: dict[str, list[str]]) -> Path:
    payload = {
        "columns": columns,
        "best": best,
        "runs": {n: {"variant": configs[n].get("variant"), "config": configs[n], "metrics": metrics[n],
                     "calibration_bins": runs[n].get("calibration_bins") or []} for n in runs},
    }
    atomic_write_text(path, json.dumps(_json_safe(payload), indent=2, ensure_ascii=False) + "\n")
    return path


def _results_table(metrics: dict[str, dict[str, Any]], configs: dict[str, dict[str, Any]], columns: list[str],
                   best: dict[str, list[str]]) -> list[str]:
    """The Markdown table: the best value of a column in bold, a standard error as "± se" in its metric's
    cell (not as a column of its own)."""
    errors = {plots.error_of(c): c for c in columns if plots.error_of(c) in columns}
    shown_cols = [c for c in columns if c not in errors.values()]
    header = ["run", "variant", "parameters", *shown_cols]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join([":--"] * 3 + ["--:"] * len(shown_cols)) + "|"]
    for n in metrics:
        cells = [_md_escape(n), _md_escape(str(configs[n].get("variant", ""))), _md_escape(_params(configs[n]))]
        for c in shown_cols:
            v = _num(metrics[n].get(c))
            text = format_value(v)
            if n in best.get(c, []):
                text = f"**{text}**"
            err = _num(metrics[n].get(errors[c])) if c in errors else None
            if err is not None and math.isfinite(err) and err > 0 and v is not None:
                text += f" ± {err:.2g}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


_CAPTIONS = {
    "pass_bars": "Verifier pass rates per run (error bars: one standard error)",
    "reward_bars": "Reward accuracy and margin per run",
    "reward_vs_kl": "Reward vs KL to the reference (the frontier)",
    "accuracy_vs_diversity": "Accuracy vs diversity",
    "reliability": "Reliability diagram of σ(margin)",
    "training_curves": "Training curves",
}


def _plots_section(files: Mapping[str, Path]) -> list[str]:
    """The "Plots" section for the PNGs written (none: no section)."""
    shown = [k for k in _CAPTIONS if k in files]
    if not shown:
        return []
    lines = ["## Plots", ""]
    for k in shown:
        lines += [f"### {_CAPTIONS[k]}", "", f"![{_CAPTIONS[k]}]({files[k].name})", ""]
    return lines
