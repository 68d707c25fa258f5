"""The learned prior against DPO (issue 14): does the prior head learn when it has its own learning rate?

Two settings, each through ``unipo compare``'s machinery (same data, seed and steps for every variant):

- ``demo``: the built-in arithmetic task with ``unipo demo``'s settings (SmolLM2-135M-Instruct, 112 pairs,
  24 steps of 8, lr 1e-5, warm-up 0.1; held-out: 32 problems, greedy + 2 samples, verifier pass rate);
- ``hh``: the committed HH-RLHF harmless-base slice (tests/data, 200 rows): the first 128 rows train
  (16 steps of 4, lr 1e-5), rows 129-160 are held out (reward accuracy, margin; no generation), max_length 256.

Variants: dpo; learned_prior with the head at the policy's learning rate (what was measured before);
learned_prior with the head at each ``--head-lr``. Results: OUT/report.md, OUT/metrics.csv, and per run the
``prior/offset_rms`` history in OUT/runs/NAME/metrics.jsonl.

    python bench/learned_prior.py demo --out runs/lp_demo --head-lr 1e-3
    python bench/learned_prior.py hh --out runs/lp_hh --head-lr 1e-3
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

from unipo.compare.pipeline import compare
from unipo.training.config import TrainConfig

HH = Path(__file__).resolve().parents[1] / "tests" / "data" / "hh-rlhf-harmless-base-test-200.jsonl.gz"


def variants(head_lrs: list[float]) -> list[Any]:
    return ["dpo", "learned_prior"] + [
        {"preset": "learned_prior", "token_signal": {"type": "learned_prior", "learning_rate": lr}} for lr in head_lrs]


def demo(out: Path, head_lrs: list[float]) -> dict[str, Any]:
    from unipo.demo.pipeline import DEFAULTS, write_task_data

    train_file, heldout_file = write_task_data(out, DEFAULTS["train_pairs"], DEFAULTS["heldout"], 0)
    base = TrainConfig(model=DEFAULTS["model"], data=str(train_file), max_steps=DEFAULTS["steps"],
                       per_device_batch_size=DEFAULTS["batch_size"], learning_rate=DEFAULTS["learning_rate"],
                       max_length=128, max_prompt_length=96, save_steps=DEFAULTS["steps"], seed=0, progress=False,
                       warmup_ratio=0.1)
    return compare(base, variants(head_lrs), out, eval_data=str(heldout_file),
                   eval_kwargs={"task": "arithmetic", "limit": DEFAULTS["heldout"], "n_prompts": DEFAULTS["heldout"],
                                "n_samples": 2, "max_new_tokens": 12, "batch_size": 16},
                   title="learned prior vs DPO: the demo task")


def hh(out: Path, head_lrs: list[float]) -> dict[str, Any]:
    rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:128]), ("heldout", rows[128:160])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    base = TrainConfig(model="smollm2-135m-instruct", data=str(out / "train.jsonl"), max_steps=16,
                       per_device_batch_size=4, learning_rate=1e-5, warmup_ratio=0.1, max_length=256,
                       max_prompt_length=128, save_steps=16, seed=0, progress=False, on_invalid="skip")
    return compare(base, variants(head_lrs), out, eval_data=str(out / "heldout.jsonl"),
                   eval_kwargs={"limit": 32, "n_prompts": 0, "n_samples": 0, "batch_size": 8},
                   include_reference=False, title="learned prior vs DPO: HH-RLHF harmless-base (small)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", choices=("demo", "hh"))
    p.add_argument("--out", required=True)
    p.add_argument("--head-lr", type=float, nargs="+", default=[1e-3])
    a = p.parse_args()
    runs = (demo if a.setting == "demo" else hh)(Path(a.out), a.head_lr)
    for name, run in runs.items():
        rms = [h["prior/offset_rms"] for h in run.get("history") or [] if "prior/offset_rms" in h]
        m = run["metrics"]
        print(json.dumps({"run": name, **{k: m.get(k) for k in ("greedy_pass_rate", "pass_rate", "reward_accuracy",
                                                                "margin", "dpo_reward_accuracy", "dpo_margin",
                                                                "kl")},
                          "offset_rms_last": rms[-1] if rms else None}))


if __name__ == "__main__":
    main()
