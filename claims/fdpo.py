"""f-DPO (Wang et al., ICLR 2024, arXiv 2309.16240, "Beyond Reverse KL"): the divergence trades alignment for
diversity — reverse KL (DPO) most aligned, forward KL most diverse, the α-divergences and JS between — and
changes calibration.

Arms: the α-divergence dose-response α = 0 (reverse KL = dpo), 0.3, 0.5, 0.7, 1 (forward KL) and JS, all at
β 0.1; and DPO at β 0.3 and 1.0, the reviewer's control: a larger β also lowers the KL to the reference, so
"more diverse" could be "less far from the reference" — a divergence that is more than a retuned β should
differ from the DPO run of matched KL. Tested against dpo (paired over seeds × held-out items): forward KL's
predictive entropy and distinct-2 (expected > 0) and greedy pass rate (expected < 0); the ordering of the
dose-response is reported as the means; ECE (f-DPO's own calibration, ``ece_fdpo``) per arm.
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

#: (label, spec) in dose order: α = 0 is reverse KL (DPO), α → 1 forward KL (docs/variants.md, f-DPO)
DOSE = [("reverse KL (α=0, dpo)", "dpo"), ("α=0.3", {"preset": "fdpo_alpha", "f_alpha": 0.3}),
        ("α=0.5", {"preset": "fdpo_alpha", "f_alpha": 0.5}), ("α=0.7", {"preset": "fdpo_alpha", "f_alpha": 0.7}),
        ("forward KL (α=1)", "fdpo_forward_kl"), ("JS", "fdpo_js")]
CONTROLS = [("dpo β=0.3", {"preset": "dpo", "beta": 0.3}), ("dpo β=1", {"preset": "dpo", "beta": 1.0})]
COLUMNS = ("greedy_pass_rate", "pass_rate", "kl", "entropy", "distinct_2", "self_bleu", "ece_fdpo")


def run(out: Path, s: Setting) -> Path:
    train, held = arith_data(out / "arith", s)
    arms_ = DOSE + CONTROLS
    runs = run_arms(out / "arith", s, [sp for _, sp in arms_], train=train, held=held,
                    title="claims: arithmetic arms")
    arms = {label: arm(runs, sp, label) for label, sp in arms_}
    lines = ["# f-DPO: does the divergence trade alignment for diversity, beyond what β does?", "",
             "Claim (arXiv 2309.16240): reverse KL is the most aligned, forward KL the most diverse, α-divergences "
             "and JS in between; the divergence changes calibration (ECE).", "", setting_line(s), "",
             "| arm | " + " | ".join(COLUMNS) + " |", "|:--|" + "--:|" * len(COLUMNS)]
    for label, a in arms.items():
        lines.append(f"| {label} | " + " | ".join(summary(a, c, s.seeds) for c in COLUMNS) + " |")
    dpo, fkl = arms[DOSE[0][0]], arms["forward KL (α=1)"]
    results: dict[str, object] = {}
    rows = []
    for label, metric, sign in (("forward KL − dpo, entropy (+)", "entropy", +1),
                                ("forward KL − dpo, distinct_2 (+)", "distinct_2", +1),
                                ("forward KL − dpo, greedy pass rate (−)", "greedy_pass_rate", -1),
                                ("JS − dpo, entropy (+)", "entropy", +1)):
        a = arms["JS"] if label.startswith("JS") else fkl
        d = paired(a, dpo, metric, s.seeds)
        rows.append(difference_row(label, d, sign))
        results[label] = d.to_dict()
    matched = min(CONTROLS, key=lambda c: abs(_mean_kl(arms[c[0]], s) - _mean_kl(fkl, s)))[0]
    for metric, sign in (("entropy", +1), ("greedy_pass_rate", -1)):
        label = f"forward KL − {matched} (the KL-matched DPO control), {metric} ({'+' if sign > 0 else '−'})"
        d = paired(fkl, arms[matched], metric, s.seeds)
        rows.append(difference_row(label, d, sign))
        results[label] = d.to_dict()
    lines += ["", "Cells: mean ± standard error over seeds. The KL-matched control is the DPO run whose mean KL is "
              f"closest to forward KL's ({matched}).", "", *DIFF_HEADER, *rows]
    return write_claim(out, "fdpo", lines, results)


def _mean_kl(a, s: Setting) -> float:
    values = [a.metric(seed, "kl") for seed in s.seeds]
    return sum(values) / len(values)
