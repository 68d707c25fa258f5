"""TIS-DPO (Liu et al., ICLR 2025, arXiv 2410.04350): token-level importance weights estimated from a
contrastive pair of models make DPO better (Table 1, HH: safe-response share DPO 56.7% → TIS-DPO(D) 92.6%;
ablations: random weights 21%, equal weights 74.9%).

Weights from the DPO-contrastive method (D): π+ = DPO on the pairs, π− = DPO on the swapped pairs
(``unipo weights estimate --method dpo``), with the paper's transform (Eq. 19) and with the released code's
rank transform. **Controls the paper lacks**: the paper's weights shuffled within each response (same values,
positions scrambled) and replaced by each response's mean (only the side-level re-weighting left). If token
importance matters, the paper's weights beat both controls; if only the side-level scale matters, the mean
control matches them.

Arms (3 seeds): dpo (shared with the other arithmetic claims) and ``tisdpo`` trained on each of the four
weight files. Tested, paired over seeds × held-out items on the greedy pass rate: tisdpo(paper) − dpo (+),
tisdpo(rank) − dpo (+), tisdpo(paper) − shuffled (+), tisdpo(paper) − mean (+). The paper's task is
harmlessness judged by a reward model; here it is the arithmetic task's exact verifier, so the paper's effect
size (a share of a different population) is not compared with the MDE.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from claims.common import (
    DIFF_HEADER,
    Arm,
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

COLUMNS = ("greedy_pass_rate", "pass_rate", "dpo_reward_accuracy", "kl")
WEIGHT_COLUMNS = ("chosen_weights", "rejected_weights")


def estimate(out: Path, s: Setting, train: Path, transform: str) -> Path:
    """The (D) weights of ``train`` under ``transform`` (the contrastive models are trained once and reused)."""
    from unipo.cli import main

    path = out / f"weights-{transform}.jsonl"
    if not (path.with_suffix(".summary.json")).exists():
        args = ["weights", "estimate", "--method", "dpo", "--model", s.model, "--data", str(train), "--out",
                str(path), "--transform", transform, "--models-dir", str(out / "contrastive"), "--no-progress"]
        if s.steps < 4:  # smoke: a few contrastive steps
            args += ["--train-set", "max_steps=2"]
        if main(args) != 0:
            raise SystemExit(f"unipo weights estimate ({transform}) failed")
    return path


def control(paper: Path, kind: str, seed: int = 0) -> Path:
    """The paper's weights ``shuffled`` within each response, or replaced by each response's ``mean``."""
    path = paper.with_name(f"weights-{kind}.jsonl")
    if path.exists():
        return path
    rng = random.Random(seed)
    rows = []
    for line in paper.read_text().splitlines():
        row = json.loads(line)
        for col in WEIGHT_COLUMNS:
            w = list(row[col])
            if kind == "shuffled":
                rng.shuffle(w)
            else:
                w = [sum(w) / len(w)] * len(w)
            row[col] = w
        rows.append(json.dumps(row))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(rows) + "\n")
    tmp.replace(path)
    return path


def run(out: Path, s: Setting) -> Path:
    train, held = arith_data(out / "arith", s)
    dpo = arm(run_arms(out / "arith", s, ["dpo"], train=train, held=held, title="claims: arithmetic arms"), "dpo")
    where = out / "tisdpo-runs"
    where.mkdir(parents=True, exist_ok=True)
    paper = estimate(where, s, train, "paper")
    files = {"paper": paper, "rank": estimate(where, s, train, "rank"),
             "shuffled": control(paper, "shuffled"), "mean": control(paper, "mean")}
    arms: dict[str, Arm] = {"dpo": dpo}
    for kind, path in files.items():
        runs = run_arms(where / kind, s, ["tisdpo"], train=path, held=held, reference=False,
                        title=f"claims: tisdpo with {kind} weights",
                        eval_data=None, eval_steps=None)  # held-out pairs have no weights to log during training
        arms[f"tisdpo ({kind} weights)"] = arm(runs, "tisdpo", f"tisdpo ({kind} weights)")
    lines = ["# TIS-DPO: do estimated token weights help, and is it the tokens or the side-level scale?", "",
             "Claim (arXiv 2410.04350, Table 1): TIS-DPO(D) raises HH's safe-response share from 56.7% (DPO) to "
             "92.6%; random weights 21%, equal weights 74.9%.", "", setting_line(s), "",
             "| arm | " + " | ".join(COLUMNS) + " |", "|:--|" + "--:|" * len(COLUMNS)]
    for label, a in arms.items():
        lines.append(f"| {label} | " + " | ".join(summary(a, c, s.seeds) for c in COLUMNS) + " |")
    results: dict[str, object] = {}
    rows = []
    pw = arms["tisdpo (paper weights)"]
    for label, a, b in (("tisdpo(paper) − dpo", pw, dpo), ("tisdpo(rank) − dpo", arms["tisdpo (rank weights)"], dpo),
                        ("tisdpo(paper) − shuffled weights", pw, arms["tisdpo (shuffled weights)"]),
                        ("tisdpo(paper) − per-response mean weights", pw, arms["tisdpo (mean weights)"])):
        d = paired(a, b, "greedy_pass_rate", s.seeds)
        rows.append(difference_row(f"{label}, greedy pass rate (+)", d, +1))
        results[label] = d.to_dict()
    lines += ["", "Cells: mean ± standard error over seeds.", "", *DIFF_HEADER, *rows]
    return write_claim(out, "tisdpo", lines, results)
