"""``OUT/report.md`` and ``OUT/report.png`` of ``unipo iterate``: one row per round, the baseline beside."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from unipo.io.atomic import atomic_path, atomic_write_text

#: (key in a round's record, column title)
COLUMNS = (("greedy_pass_rate", "pass rate greedy"), ("sampled_pass_rate", "pass rate sampled"),
           ("greedy_reward", "reward greedy"), ("sampled_reward", "reward sampled"), ("kl", "KL to original"),
           ("response_length", "length (tokens)"), ("pairs", "pairs made"), ("share_without_signal", "no signal"),
           ("offline_pairs", "offline pairs"), ("alpha", "DICE α"))
TIMES = (("sample_s", "sample"), ("label_s", "label"), ("train_s", "train"), ("eval_s", "eval"))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _name(key: str) -> str:
    if key == "round-0":
        return "start"
    return key.replace("round-", "round ") if key.startswith("round-") else "offline only (baseline)"


def table(results: dict[str, dict[str, Any]], reward_name: str) -> str:
    cols = [(k, t.replace("reward", reward_name)) for k, t in COLUMNS
            if any(r.get(k) is not None for r in results.values())]
    lines = ["| | " + " | ".join(t for _, t in cols) + " | time (sample / label / train / eval, s) | tokens/s |",
             "|---" * (len(cols) + 3) + "|"]
    for key, rec in results.items():
        timing = rec.get("timing", {})
        times = " / ".join(_cell(round(timing[k])) if k in timing else "–" for k, _ in TIMES)
        tps = timing.get("tokens_per_s")
        lines.append(f"| {_name(key)} | " + " | ".join(_cell(rec.get(k)) for k, _ in cols)
                     + f" | {times} | {_cell(round(tps)) if tps and not math.isnan(tps) else '–'} |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], path: Path, reward_name: str) -> None:
    """Four panels over rounds (the baseline as a dashed line): reward greedy and sampled, KL to the original
    model, response length, pairs made and share of prompts without signal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [(int(k.split("-")[1]), r) for k, r in results.items() if k.startswith("round-")]
    base = results.get("baseline")
    xs = [t for t, _ in rounds]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    first = ("greedy_pass_rate", "sampled_pass_rate") if any("greedy_pass_rate" in r for _, r in rounds) else (
        "greedy_reward", "sampled_reward")
    panels = (((first[0], "greedy"), (first[1], "sampled")), (("kl", "KL"),),
              (("response_length", "tokens"),), (("pairs", "pairs made"),))
    titles = ("pass rate" if first[0] == "greedy_pass_rate" else reward_name, "KL(π ‖ original)",
              "response length", "pairs made / no-signal share")
    for ax, series, title in zip(axes, panels, titles, strict=True):
        for key, label in series:
            ys = [r.get(key) for _, r in rounds]
            ys = [math.nan if y is None else y for y in ys]
            line, = ax.plot(xs, ys, marker="o", label=label)
            if base is not None and base.get(key) is not None:
                ax.axhline(base[key], ls="--", color=line.get_color(), alpha=0.6, label=f"{label} (offline only)")
        ax.set_title(title)
        ax.set_xlabel("round (0 = start)")
        ax.legend(fontsize=7)
    share = [r.get("share_without_signal") for _, r in rounds]
    ax2 = axes[3].twinx()
    ax2.plot(xs, [math.nan if s is None else s for s in share], color="gray", marker="x")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("share without signal")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_report(out: Path, results: dict[str, dict[str, Any]], cfg: Any) -> None:
    reward_name = {"verifier": "verifier score", "judge": "judge rating"}.get(cfg.label, "reward")
    lines = [f"# unipo iterate: {cfg.rounds} rounds from {cfg.model}", "",
             f"Prompts: {cfg.task or cfg.prompts}; labels: {cfg.label}; K = {cfg.samples} samples per prompt, "
             f"{cfg.prompts_per_round} prompts per round; reference: {cfg.reference}; replay γ = "
             f"{cfg.replay_ratio if cfg.replays_offline else 0}. Evaluated on {cfg.heldout} held-out prompts: "
             f"{reward_name} of the greedy answer and of {cfg.eval_samples} samples at temperature 1 (and, for a "
             f"built-in task, the pass rate: the exact verdict), KL to the original model and length from those "
             f"samples.", "",
             table(results, reward_name), "", "![rounds](report.png)", ""]
    for key, rec in results.items():
        if rec.get("greedy_answers"):
            examples = rec["greedy_answers"][:4]
            lines.append(f"- {_name(key)}, greedy answers: " + " · ".join(repr(x) for x in examples))
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    plot(results, out / "report.png", reward_name)
