"""Slow tier: listwise DPO (one chosen against several rejected) trains two steps on SmolLM2-135M-Instruct
with listwise rows derived from the committed HH-RLHF slice: rejected = [the HH rejected answer, the chosen
answer cut to its first half]."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from unipo.cli import main
from unipo.data.formats import normalize_row

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def listwise_file(tmp_path_factory):
    """16 short HH-RLHF rows as explicit-prompt conversational rows with K = 2 rejected responses."""
    from tests.conftest import HH_FILE

    out = tmp_path_factory.mktemp("data") / "listwise.jsonl"
    rows = []
    with gzip.open(HH_FILE, "rt") as f:
        for n, line in enumerate(f, start=1):
            raw = json.loads(line)
            if len(raw["chosen"]) > 600 or len(raw["rejected"]) > 600:
                continue
            pair = normalize_row(raw, file=str(HH_FILE), row_number=n)
            words = pair.chosen[-1]["content"].split()
            if len(pair.chosen) != 1 or len(words) < 6:
                continue
            truncated = [{"role": "assistant", "content": " ".join(words[: len(words) // 2])}]
            rows.append({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": [pair.rejected, truncated]})
            if len(rows) == 16:
                break
    assert len(rows) == 16, f"{HH_FILE}: fewer than 16 usable rows"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_listwise_dpo_trains_on_smollm2(listwise_file, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(listwise_file), "--output-dir", str(out), "--variant", "listwise_dpo",
               "--max-steps", "2", "--per-device-batch-size", "4", "--max-length", "256", "--max-prompt-length",
               "192", "--learning-rate", "1e-5", "--no-progress", "--set", "plots=false", "--set", "eval_fraction=0.25",
               "--set", "precision=fp32"])
    assert rc == 0
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train = [h for h in history if "loss" in h]
    assert len(train) == 2 and all(math.isfinite(h["loss"]) for h in train)
    # step 1: the policy is the reference, every z_k = 0, so the loss is log(1 + K) = log 3 for K = 2
    assert train[0]["loss"] == pytest.approx(math.log(3), abs=1e-3)
    assert math.isfinite(train[1]["rewards/rejected_all"])
    evals = [h for h in history if "eval_loss" in h]
    assert evals and math.isfinite(evals[-1]["eval_loss"])
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["listwise"] == 16 and summary["listwise_rejected"] == 32
