"""MI-DPO unification (Tutnov, Grosnit, Bou-Ammar 2025, arXiv 2501.01544): its one empirical conjecture (§5),
that learning the prior jointly with the policy reaches better minima than DPO's fixed reference prior.

Arms: dpo and unipo's ``learned_prior`` (the reference plus a per-token offset from a small head over the
reference's hidden states; head learning rate 1e-3, the setting in which the head measurably learned, see
docs/token_level.md) at two regularisation weights λ_g = 0.1 (the preset's) and 1.0. Tested: learned_prior −
dpo on the held-out greedy pass rate and on the held-out DPO margin β·Δ (expected > 0). The paper has no
experiment, so no effect to compare the MDE with.
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


def learned(weight: float) -> dict[str, object]:
    return {"preset": "learned_prior", "prior_reg_weight": weight,
            "token_signal": {"type": "learned_prior", "learning_rate": 1e-3}}


ARMS = [("dpo", "dpo"), ("learned prior, λ_g 0.1", learned(0.1)), ("learned prior, λ_g 1", learned(1.0))]
COLUMNS = ("greedy_pass_rate", "pass_rate", "dpo_reward_accuracy", "dpo_margin", "kl")


def run(out: Path, s: Setting) -> Path:
    train, held = arith_data(out / "arith", s)
    runs = run_arms(out / "arith", s, [sp for _, sp in ARMS], train=train, held=held,
                    title="claims: arithmetic arms")
    arms = {label: arm(runs, sp, label) for label, sp in ARMS}
    lines = ["# MI-DPO: does learning the prior jointly reach better minima?", "",
             "Conjecture (arXiv 2501.01544, §5): a prior learned with the policy, instead of DPO's fixed reference, "
             "reaches better optima.", "", setting_line(s), "",
             "| arm | " + " | ".join(COLUMNS) + " |", "|:--|" + "--:|" * len(COLUMNS)]
    for label, a in arms.items():
        lines.append(f"| {label} | " + " | ".join(summary(a, c, s.seeds) for c in COLUMNS) + " |")
    results: dict[str, object] = {}
    rows = []
    for label, a in list(arms.items())[1:]:
        for metric in ("greedy_pass_rate", "dpo_margin"):
            name = f"{label} − dpo, {metric} (+)"
            d = paired(a, arms["dpo"], metric, s.seeds)
            rows.append(difference_row(name, d, +1))
            results[name] = d.to_dict()
    lines += ["", "Cells: mean ± standard error over seeds.", "", *DIFF_HEADER, *rows]
    return write_claim(out, "midpo", lines, results)
