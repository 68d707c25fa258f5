"""Comparison plots for evaluated runs (matplotlib, Agg backend: no display needed).

Every function writes one PNG and returns its path. Runs keep the same colour in every plot (the
order in which they are given). Point labels in scatter plots are placed greedily among candidate
positions around each point so that they overlap neither each other nor the points.

The reward-vs-KL frontier follows Gao et al. 2023 ("Scaling Laws for Reward Model Overoptimization",
arXiv 2210.10760), who plot reward against the KL to the initial policy; the accuracy-vs-diversity and
calibration views follow the f-DPO paper (Wang et al., ICLR 2024, arXiv 2309.16240). The reliability
diagram is that of Guo et al. 2017 ("On Calibration of Modern Neural Networks", ICML).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from unipo.io.atomic import atomic_path

__all__ = [
    "METRIC_LABELS",
    "reliability_diagram",
    "training_curves",
    "metric_bars",
    "reward_kl_frontier",
    "accuracy_diversity_scatter",
    "labelled_scatter",
]

METRIC_LABELS: dict[str, str] = {
    "reward_accuracy": "Reward accuracy (held-out pairs)",
    "margin": "Mean reward margin",
    "dpo_reward_accuracy": "DPO reward accuracy",
    "ece": "ECE, pairwise (lower is better)",
    "ece_fdpo": "ECE, f-DPO code's (lower is better)",
    "kl": "KL(π ‖ π_ref) per response (nats)",
    "kl_k3": "KL(π ‖ π_ref), k3 estimator (nats)",
    "distinct_1": "Distinct-1 (higher = more diverse)",
    "distinct_2": "Distinct-2 (higher = more diverse)",
    "self_bleu": "Self-BLEU (lower = more diverse)",
    "entropy": "Mean predictive entropy (nats)",
    "pass_rate": "Verifier pass rate",
    "response_length": "Mean response length (tokens)",
    "loss": "Training loss",
    "rewards/accuracies": "Reward accuracy (train batches)",
    "rewards/margins": "Reward margin (train batches)",
}

_DPI = 120


def _label(key: str) -> str:
    return METRIC_LABELS.get(key, key)


def palette(names: Sequence[str]) -> dict[str, Any]:
    """One colour per run name; pass the same mapping (``colours=``) to every plot of a report."""
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def moving_average_window(n: int) -> int:
    """Smoothing window for a curve of ``n`` points: none below 12 points, else about n / 8."""
    return 1 if n < 12 else max(3, n // 8)


def moving_average(ys: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


#: suffixes of a metric's standard error (``reward_accuracy_se``, ``kl_std_err``)
ERROR_SUFFIXES = ("_se", "_std_err")


def error_of(key: str) -> str | None:
    """The metric whose standard error ``key`` is, or None."""
    for suffix in ERROR_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def _error(m: Mapping[str, Any], key: str) -> float:
    """The standard error logged beside metric ``key`` (:data:`ERROR_SUFFIXES`), 0 when none."""
    for suffix in ERROR_SUFFIXES:
        v = m.get(key + suffix)
        if _finite(v):
            return float(v)
    return 0.0


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return out


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes, color="0.4")


# --------------------------------------------------------------------------------------------------

def reliability_diagram(
    bins: Mapping[str, Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]],
    path: str | Path, *, ece: Mapping[str, float] | None = None,
    title: str = "Reliability of the implicit preference probability σ(margin)",
    colours: Mapping[str, Any] | None = None,
) -> Path:
    """Reliability diagram: observed frequency against mean predicted probability, per bin.

    ``bins`` is the bin list of :func:`unipo.eval.metrics.expected_calibration_error` (one model) or a
    mapping run name → bin list (several models overlaid). ``ece`` (run → value) is shown in the legend.
    A lower panel shows how many predictions fall in each bin. Empty bins are skipped.
    """
    runs: dict[str, Sequence[Mapping[str, Any]]] = (
        dict(bins) if isinstance(bins, Mapping) else {"model": bins})
    colours = colours or palette(list(runs))
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(6.4, 7.2), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    width = 1.0 / max(1, max((len(b) for b in runs.values()), default=1)) / max(1, len(runs))
    for k, (name, blist) in enumerate(runs.items()):
        pts = [(b["confidence"], b["accuracy"]) for b in blist
               if b.get("count") and _finite(b.get("confidence")) and _finite(b.get("accuracy"))]
        label = name
        if ece is not None and name in ece and _finite(ece[name]):
            label = f"{name} (ECE {ece[name]:.3f})"
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", ms=5, lw=1.6, color=colours[name], label=label)
        total = sum(float(b.get("count") or 0) for b in blist) or 1.0
        centres = [(float(b["lower"]) + float(b["upper"])) / 2 for b in blist]
        shares = [float(b.get("count") or 0) / total for b in blist]
        offset = (k - (len(runs) - 1) / 2) * width
        axc.bar([c + offset for c in centres], shares, width=width * 0.95, color=colours[name], alpha=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Observed frequency (accuracy in bin)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    axc.set_xlabel("Predicted probability (mean confidence in bin)")
    axc.set_ylabel("Share of\npredictions")
    axc.grid(alpha=0.3, axis="y")
    if not runs:
        _no_data(ax, "calibration bins")
    return _save(fig, path)


def training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
    keys: Sequence[str] = ("loss", "rewards/accuracies", "rewards/margins"), *,
    title: str = "Training curves", colours: Mapping[str, Any] | None = None,
) -> Path:
    """Training curves of several runs overlaid, one panel per logged key.

    ``histories`` maps a run name to its logged records (dicts with ``"step"`` and metric keys, as
    written to the metrics JSONL). Records without a key (or with a non-finite value) are skipped for
    that key; keys no run logged are left out. One shared legend below the panels.
    """
    names = list(histories)
    colours = colours or palette(names)
    present = [k for k in keys if any(_finite(r.get(k)) for h in histories.values() for r in h)]
    panels = present or list(keys[:1]) or ["loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    smoothed = 0
    for ax, key in zip(axes[0], panels, strict=True):
        drawn = False
        for name in names:
            pts = [(float(r["step"]), float(r[key])) for r in histories[name]
                   if _finite(r.get(key)) and _finite(r.get("step"))]
            if not pts:
                continue
            pts.sort()
            xs, ys = zip(*pts, strict=True)
            window = moving_average_window(len(ys))
            if window > 1:  # per-step values of small batches are noisy: faint raw, solid moving average
                ax.plot(xs, ys, lw=0.8, color=colours[name], alpha=0.25)
                ax.plot(xs, moving_average(ys, window), lw=1.8, color=colours[name], label=name)
                smoothed = max(smoothed, window)
            else:
                ax.plot(xs, ys, lw=1.5, color=colours[name], label=name, marker=".")
            drawn = True
        ax.set_title(_label(key), fontsize=10)
        ax.set_xlabel("Optimizer step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if not drawn:
            _no_data(ax, key)
    handles = [plt.Line2D([], [], color=colours[n], lw=2) for n in names]
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=9,
                   bbox_to_anchor=(0.5, -0.02), frameon=False)
    fig.suptitle(title + (f" (faint: every step; solid: trailing mean over {smoothed} steps)" if smoothed else ""))
    fig.tight_layout(rect=(0, 0.08 if names else 0, 1, 1))
    return _save(fig, path)


def metric_bars(
    metrics: Mapping[str, Mapping[str, Any]], path: str | Path,
    keys: Sequence[str] = ("reward_accuracy", "margin"), *,
    title: str = "Reward accuracy and margin per run", colours: Mapping[str, Any] | None = None,
) -> Path:
    """One panel per metric key, one bar per run, the value written above each bar."""
    names = list(metrics)
    colours = colours or palette(names)
    fig, axes = plt.subplots(1, len(keys), figsize=(max(4.0, 0.9 * len(names) + 2.0) * len(keys), 4.2),
                             squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        vals = [metrics[n].get(key) for n in names]
        ys = [float(v) if _finite(v) else 0.0 for v in vals]
        errs = [_error(metrics[n], key) for n in names]
        bars = ax.bar(range(len(names)), ys, color=[colours[n] for n in names],
                      yerr=errs if any(errs) else None, capsize=4, error_kw={"lw": 1, "ecolor": "0.25"})
        for bar, v in zip(bars, vals, strict=True):
            text = f"{float(v):.3f}" if _finite(v) else "n/a"
            va = "bottom" if bar.get_height() >= 0 else "top"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="left", va=va,
                        fontsize=8, xytext=(3, 2 if va == "bottom" else -2), textcoords="offset points")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
        ax.set_title(_label(key), fontsize=10)
        ax.set_ylabel(key)
        ax.axhline(0, color="0.3", lw=0.8)
        if key.endswith("accuracy") and all(0 <= y <= 1 for y in ys):
            ax.set_ylim(0, 1.08)
            ax.axhline(0.5, color="0.5", ls=":", lw=1)
        else:
            lo = min([y - e for y, e in zip(ys, errs, strict=True)] + [0.0])
            hi = max([y + e for y, e in zip(ys, errs, strict=True)] + [0.0])
            pad = 0.12 * (hi - lo or 1.0)
            ax.set_ylim(lo - (pad if lo < 0 else 0), hi + pad)
        ax.grid(alpha=0.3, axis="y")
        if not names:
            _no_data(ax, key)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _overlaps(a: Any, b: Any, pad: float = 2.0) -> bool:
    return not (a.x1 + pad < b.x0 or b.x1 + pad < a.x0 or a.y1 + pad < b.y0 or b.y1 + pad < a.y0)


def _place_labels(fig: Figure, ax: Axes, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> None:
    """Greedy label placement: for each point, the first candidate offset whose box collides with no
    already placed label, no point and stays inside the axes."""
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax_box = ax.get_window_extent(renderer)
    pts_px = ax.transData.transform(list(zip(xs, ys, strict=True)))
    r = 5.0  # marker radius in pixels, roughly
    point_boxes = [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in pts_px]
    # Rings of candidate offsets (points) around the point; labels beyond the first ring get a leader line.
    directions = [(1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"),
                  (-1, -1, "right", "top"), (0, 1, "center", "bottom"), (0, -1, "center", "top"),
                  (1, 0, "left", "center"), (-1, 0, "right", "center")]
    candidates = [(radius * dx * (0.8 if dy else 1.0), radius * dy * (0.7 if dx else 1.0), ha, va, radius > 8)
                  for radius in (8, 22, 36, 50) for dx, dy, ha, va in directions]
    placed: list[Any] = []
    order = sorted(range(len(labels)), key=lambda i: (pts_px[i][0], pts_px[i][1]))
    for i in order:
        best = None
        best_score = math.inf
        for dx, dy, ha, va, leader in candidates:
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                            ha=ha, va=va, fontsize=8)
            box = t.get_window_extent(renderer)
            score = sum(_overlaps(box, p) for p in placed) * 10
            score += sum(_overlaps(box, pb, pad=0.0) for j, pb in enumerate(point_boxes) if j != i) * 5
            inside = (box.x0 >= ax_box.x0 and box.x1 <= ax_box.x1 and box.y0 >= ax_box.y0
                      and box.y1 <= ax_box.y1)
            score += 0 if inside else 3
            if score < best_score:
                if best is not None:
                    best[0].remove()
                best, best_score = (t, box, (dx, dy, ha, va, leader)), score
            else:
                t.remove()
            if score == 0:
                break
        assert best is not None
        placed.append(best[1])
        dx, dy, ha, va, leader = best[2]
        if leader:  # redraw with a leader line (measured without it: an arrow's extent is not reliable)
            best[0].remove()
            ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                        fontsize=8, arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.7, "shrinkA": 1,
                                                "shrinkB": 5})


def labelled_scatter(
    metrics: Mapping[str, Mapping[str, Any]], path: str | Path, x: str, y: str, *, title: str,
    note: str | None = None, colours: Mapping[str, Any] | None = None,
) -> Path:
    """Scatter of runs in the (x, y) metric plane, each point labelled with its run name.

    Runs without finite values for both keys are left out (and listed under the plot).
    """
    names = list(metrics)
    colours = colours or palette(names)
    kept = [n for n in names if _finite(metrics[n].get(x)) and _finite(metrics[n].get(y))]
    missing = [n for n in names if n not in kept]
    fig, ax = plt.subplots(figsize=(6.8, 5.0))
    xs = [float(metrics[n][x]) for n in kept]
    ys = [float(metrics[n][y]) for n in kept]
    for n, xv, yv in zip(kept, xs, ys, strict=True):  # ± one standard error where the run logged one
        xe, ye = _error(metrics[n], x), _error(metrics[n], y)
        if xe or ye:
            ax.errorbar([xv], [yv], xerr=[xe] if xe else None, yerr=[ye] if ye else None, fmt="none",
                        ecolor=colours[n], alpha=0.6, lw=1.2, capsize=3, zorder=2)
    ax.scatter(xs, ys, s=60, c=[colours[n] for n in kept], edgecolors="black", linewidths=0.6, zorder=3)
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if kept:
        xe = [_error(metrics[n], x) for n in kept]
        ye = [_error(metrics[n], y) for n in kept]
        for vals, errs, setter in ((xs, xe, ax.set_xlim), (ys, ye, ax.set_ylim)):
            lo = min(v - e for v, e in zip(vals, errs, strict=True))
            hi = max(v + e for v, e in zip(vals, errs, strict=True))
            span = (hi - lo) or (abs(hi) * 0.2 or 1.0)
            setter(lo - 0.25 * span, hi + 0.25 * span)
        _place_labels(fig, ax, xs, ys, kept)
    else:
        _no_data(ax, f"{x} and {y}")
    foot = []
    if note:
        foot.append(note)
    if missing:
        foot.append("not shown (missing values): " + ", ".join(missing))
    if foot:
        fig.text(0.01, -0.02, "\n".join(foot), fontsize=8, color="0.3", ha="left", va="top")
    return _save(fig, path)


def reward_kl_frontier(
    metrics: Mapping[str, Mapping[str, Any]], path: str | Path, x: str = "kl", y: str = "reward_accuracy",
    colours: Mapping[str, Any] | None = None,
) -> Path:
    """Reward-vs-KL frontier: how much preference accuracy (or margin) each run buys per nat of KL."""
    return labelled_scatter(metrics, path, x, y, title="Reward vs KL to the reference",
                            note="Up and to the left is better: more reward for less drift from π_ref.",
                            colours=colours)


def accuracy_diversity_scatter(
    metrics: Mapping[str, Mapping[str, Any]], path: str | Path, x: str = "distinct_2",
    y: str = "reward_accuracy", colours: Mapping[str, Any] | None = None,
) -> Path:
    """Accuracy-vs-diversity trade-off (f-DPO, Wang et al. 2024): e.g. distinct-2 or self-BLEU on x."""
    better = "left" if x == "self_bleu" else "right"
    return labelled_scatter(metrics, path, x, y, title="Accuracy vs generation diversity",
                            note=f"Up and to the {better} is better: accurate and diverse.", colours=colours)
