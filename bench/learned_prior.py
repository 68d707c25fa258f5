"""The learned prior against DPO (issue 14): does the prior head learn when it has its own learning rate?

Two settings, each through ``unipo compare``'s machinery (same data, seed and steps for every variant):

- ``demo``: the built-in arithmetic task with ``unipo demo``'s settings (SmolLM2-135M-Instruct, 112 pairs,
  24 steps of 8, lr 1e-5, warm-up 0.1; held-out: 32 problems, greedy + 2 samples, verifier pass rate);
- ``hh``: the committed HH-RLHF harmless-base slice (tests/data, 200 rows): the first 128 rows train
  (--steps of 4 pairs, lr 1e-5), rows 129-144 are held out (reward accuracy, margin; no generation),
  max_length 192, max_prompt_length 96.

Variants: dpo; learned_prior with the head at the policy's learning rate (what was measured before);
learned_prior with the head at each ``--head-lr``. Results: OUT/report.md, OUT/metrics.csv, and per run the
``prior/offset_rms`` history in OUT/runs/NAME/metrics.jsonl.

    python bench/learned_prior.py demo --out runs/lp_demo --head-lr 1e-3
    python bench/learned_prior.py hh --out runs/lp_hh --head-lr 1e-3 --only dpo head
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

from unipo.compare.config import CompareConfig
from unipo.compare.pipeline import compare
from unipo.eval.config import EvalOptions
from unipo.training.config import TrainConfig

HH = Path(__file__).resolve().parents[1] / "tests" / "data" / "hh-rlhf-harmless-base-test-200.jsonl.gz"


def variants(head_lrs: list[float], only: list[str]) -> list[Any]:
    """dpo, learned_prior (head at the policy's rate: 'shared') and learned_prior per head rate ('head')."""
    chosen = {"dpo": ["dpo"], "shared": ["learned_prior"],
              "head": [{"preset": "learned_prior", "token_signal": {"type": "learned_prior", "learning_rate": lr}}
                       for lr in head_lrs]}
    return [v for key in only for v in chosen[key]]


def demo(out: Path, head_lrs: list[float], only: list[str], steps: int, reference: bool) -> dict[str, Any]:
    from unipo.demo.pipeline import DEFAULTS, write_task_data

    train_file, heldout_file = write_task_data(out, DEFAULTS["train_pairs"], DEFAULTS["heldout"], 0)
    base = TrainConfig(model=DEFAULTS["model"], data=str(train_file), max_steps=steps,
                       per_device_batch_size=DEFAULTS["batch_size"], learning_rate=DEFAULTS["learning_rate"],
                       max_length=128, max_prompt_length=96, save_steps=steps, seed=0, progress=False,
                       warmup_ratio=0.1)
    evaluation = EvalOptions(task="arithmetic", limit=DEFAULTS["heldout"], n_prompts=DEFAULTS["heldout"],
                             n_samples=2, max_new_tokens=12, batch_size=16)
    return compare(CompareConfig(base=base, variants=variants(head_lrs, only), out=out, eval_data=str(heldout_file),
                                 include_reference=reference, evaluation=evaluation,
                                 title="learned prior vs DPO: the demo task"))


def hh(out: Path, head_lrs: list[float], only: list[str], steps: int, reference: bool) -> dict[str, Any]:
    rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:128]), ("heldout", rows[128:160])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    base = TrainConfig(model="smollm2-135m-instruct", data=str(out / "train.jsonl"), max_steps=steps,
                       per_device_batch_size=4, learning_rate=1e-5, warmup_ratio=0.1, max_length=192,
                       max_prompt_length=96, save_steps=steps, seed=0, progress=False, on_invalid="skip")
    return compare(CompareConfig(base=base, variants=variants(head_lrs, only), out=out,
                                 eval_data=str(out / "heldout.jsonl"),
                                 evaluation=EvalOptions(limit=16, n_prompts=0, n_samples=0, batch_size=8),
                                 include_reference=reference,
                                 title="learned prior vs DPO: HH-RLHF harmless-base (small)"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", choices=("demo", "hh"))
    p.add_argument("--out", required=True)
    p.add_argument("--head-lr", type=float, nargs="+", default=[1e-3])
    p.add_argument("--only", nargs="+", choices=("dpo", "shared", "head"), default=["dpo", "shared", "head"],
                   help="which runs (several processes can share the work: one --out each)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: demo 24, hh 16)")
    p.add_argument("--no-reference", action="store_true", help="skip the starting model's row")
    a = p.parse_args()
    steps = a.steps or (24 if a.setting == "demo" else 16)
    runs = (demo if a.setting == "demo" else hh)(Path(a.out), a.head_lr, a.only, steps, not a.no_reference)
    for name, run in runs.items():
        rms = [h["prior/offset_rms"] for h in run.get("history") or [] if "prior/offset_rms" in h]
        m = run["metrics"]
        print(json.dumps({"run": name, **{k: m.get(k) for k in ("greedy_pass_rate", "pass_rate", "reward_accuracy",
                                                                "margin", "dpo_reward_accuracy", "dpo_margin",
                                                                "kl")},
                          "offset_rms_last": rms[-1] if rms else None}))


if __name__ == "__main__":
    main()
