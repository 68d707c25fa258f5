"""End-to-end TIS-DPO weights (Liu et al., ICLR 2025) on smollm2-135m-instruct and real HH-RLHF pairs:
(P) and (D) estimates on 16 pairs, the picture, and `unipo train --variant tisdpo` on the output."""

from __future__ import annotations

import json
import time

import pytest

from unipo.cli import main

pytestmark = pytest.mark.slow
N_PAIRS = 16


@pytest.mark.parametrize("method", ["prompt", "dpo"])
def test_smollm2_hh_weights_show_and_train(method, hh_file, tmp_path):
    from unipo.models.builtin import resolve_builtin

    model = str(resolve_builtin("smollm2-135m-instruct"))
    out = tmp_path / f"w_{method}.jsonl"
    t0 = time.time()
    rc = main(["weights", "estimate", "--method", method, "--model", model, "--data", str(hh_file),
               "--out", str(out), "--limit", str(N_PAIRS), "--models-dir", str(tmp_path / "models"),
               "--batch-size", "4", "--no-progress", "--train-set", "per_device_batch_size=4",
               "--train-set", "max_length=384", "--train-set", "max_prompt_length=256"])
    t_estimate = time.time() - t0
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == N_PAIRS and len({r["source_row"] for r in rows}) == N_PAIRS
    summary = json.loads((tmp_path / f"w_{method}.summary.json").read_text())
    mean_c, mean_r = summary["chosen"]["mean"], summary["rejected"]["mean"]
    print(f"\n[{method}] {N_PAIRS} pairs in {t_estimate:.0f}s: chosen mean {mean_c:.4f} "
          f"(std {summary['chosen']['std']:.4f}), rejected mean {mean_r:.4f} (std {summary['rejected']['std']:.4f})")
    assert summary["chosen"]["std"] > 0 and summary["rejected"]["std"] > 0
    assert abs(mean_c - mean_r) > 1e-3  # the two sides are weighted differently

    show = tmp_path / "show"
    assert main(["weights", "show", str(out), "--n", "4", "--out", str(show)]) == 0
    for name in ("weights.html", "weights_tokens.png", "weights_hist.png"):
        assert (show / name).stat().st_size > 5000

    t0 = time.time()
    rc = main(["train", "--model", model, "--data", str(out), "--variant", "tisdpo", "--output-dir",
               str(tmp_path / "run"), "--max-steps", "2", "--per-device-batch-size", "2", "--max-length", "384",
               "--no-progress", "--lora", "--set", "plots=false"])
    assert rc == 0
    print(f"[{method}] tisdpo training, 2 steps: {time.time() - t0:.0f}s")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("weights/chosen_mean" in m for m in metrics)
