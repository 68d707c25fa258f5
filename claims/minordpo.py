"""MinorDPO (Xie et al., arXiv 2408.09834): the rejected-side clamp keeps the chosen likelihood from collapsing
and trains stably at learning rates where DPO fails.

Arms: dpo and minordpo at lr 1e-5 and 5e-5 (β 0.1, 3 seeds). Tested, per learning rate, minordpo − dpo on
the held-out chosen answer's mean token log-prob (the paper's mechanism: expected > 0, above all at 5e-5) and
on the greedy pass rate (the consequence: expected > 0 at 5e-5). The paper gives no number on this task, so
there is no paper effect to compare the MDE with. The chosen log-prob on the held-out pairs during training
(every ``eval_steps``) is in the report, for the collapse over time.
"""

from __future__ import annotations

from pathlib import Path

from claims.common import (
    DIFF_HEADER,
    Setting,
    arith_data,
    arm,
    difference_row,
    paired,
    run_arms,
    setting_line,
    summary,
    write_claim,
)

RATES = (1e-5, 5e-5)


def specs(lr: float, base_lr: float) -> list[object]:
    """dpo and minordpo at ``lr`` (the plain preset names at the shared setting's own rate)."""
    if lr == base_lr:
        return ["dpo", "minordpo"]
    return [{"preset": "dpo", "learning_rate": lr}, {"preset": "minordpo", "learning_rate": lr}]


def run(out: Path, s: Setting) -> Path:
    train, held = arith_data(out / "arith", s)
    all_specs = [sp for lr in RATES for sp in specs(lr, s.learning_rate)]
    runs = run_arms(out / "arith", s, all_specs, train=train, held=held, title="claims: arithmetic arms")
    lines = ["# MinorDPO: does the rejected-side clamp prevent the chosen likelihood's collapse?", "",
             "Claim (arXiv 2408.09834): MinorDPO keeps the chosen response's likelihood from collapsing and trains "
             "stably at learning rates where DPO fails.", "", setting_line(s), "",
             "| lr | run | greedy pass | sampled pass | KL | held-out chosen log-prob during training |",
             "|--:|:--|--:|--:|--:|--:|"]
    results: dict[str, object] = {}
    diffs = []
    for lr in RATES:
        dpo, minor = (arm(runs, sp) for sp in specs(lr, s.learning_rate))
        for a in (dpo, minor):
            curve = _chosen_curve(a, s)
            lines.append(f"| {lr:g} | {a.label} | {summary(a, 'greedy_pass_rate', s.seeds)} | "
                         f"{summary(a, 'pass_rate', s.seeds)} | {summary(a, 'kl', s.seeds)} | "
                         f"{' → '.join(f'{v:.2f}' for v in curve) or '–'} |")
        for metric in ("chosen_mean_logp", "greedy_pass_rate"):
            d = paired(minor, dpo, metric, s.seeds)
            diffs.append(difference_row(f"lr {lr:g}: minordpo − dpo, {metric} (+)", d, +1))
            results[f"lr={lr:g}/{metric}"] = d.to_dict()
    lines += ["", "The last column: mean over seeds of the held-out chosen answers' summed log-prob under the "
              f"policy, logged every {s.eval_steps} steps during training (first → last). Cells: mean ± standard "
              "error over seeds. chosen_mean_logp below: the final policy's mean token log-prob of each held-out "
              "chosen answer.", "", *DIFF_HEADER, *diffs]
    return write_claim(out, "minordpo", lines, results)


def _chosen_curve(a, s: Setting) -> list[float]:
    """Mean over seeds of the held-out chosen answers' summed log-prob at each evaluation during training."""
    per_seed = [[h["eval_logps/chosen"] for h in a.history(seed) if "eval_logps/chosen" in h] for seed in s.seeds]
    n = min((len(v) for v in per_seed), default=0)
    return [sum(v[i] for v in per_seed) / len(per_seed) for i in range(n)]
