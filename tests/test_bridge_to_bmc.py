"""BMC end to end: `unipo bridge` output trains with `--variant bmc` (diff masks computed once at data
preparation) and with `--variant dpo` (DPO-BC)."""

from __future__ import annotations

import json

import pytest

from unipo.bridge.config import BridgeConfig, BridgeOptions
from unipo.bridge.editors import Editor, EditResult
from unipo.bridge.pipeline import run_bridge
from unipo.bridge.prompts import get_template
from unipo.cli import main

pytestmark = pytest.mark.integration


class MinimalEditor(Editor):
    """A deterministic editor: replaces the losing response's wrong number by the right one."""

    name = "minimal"

    def __init__(self, fixes: dict[str, str]):
        super().__init__()
        self.fixes = fixes

    def edit_stream(self, jobs):
        for job in jobs:
            text = job.messages[-1]["content"]
            fixed = next(v for k, v in self.fixes.items() if k in text)
            yield job.key, EditResult(text=fixed)


def test_bridged_pairs_train_with_bmc_and_dpo(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"The sum is {2 * i}.",
             "rejected": f"I think the sum is {2 * i + 1} or so."} for i in range(1, 7)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fixes = {r["rejected"]: r["rejected"].replace(str(2 * i + 1), str(2 * i)) for i, r in enumerate(rows, 1)}
    out = tmp_path / "bridged.jsonl"
    summary = run_bridge(BridgeConfig(data, out, MinimalEditor(fixes), get_template("instruct"),
                                      options=BridgeOptions()),
                         log=lambda m: None)
    assert summary["edited"] == 6
    bridged = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert all(b["edit_distance"] >= 1 for b in bridged)
    for variant in ("bmc", "dpo"):
        run = tmp_path / variant
        assert main(["train", "--model", str(tiny_model_dir), "--data", str(out), "--variant", variant,
                     "--max-steps", "2", "--per-device-batch-size", "3", "--output-dir", str(run),
                     "--no-progress", "--set", "plots=false"]) == 0
    history = [json.loads(ln) for ln in (tmp_path / "bmc" / "metrics.jsonl").read_text().splitlines()]
    # only the differing tokens are up-weighted: the mean weight is above 1 but well below 1 + δ
    assert 1.0 < history[0]["weights/chosen_mean"] < 2.0
