"""Slow tier: WPO, LD-DPO, AlphaPO, CPO and ORPO each train two steps on SmolLM2-135M-Instruct and real
HH-RLHF pairs (the committed slice) with a finite loss, through ``unipo train``."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import short_hh_pairs
from unipo.cli import main

pytestmark = pytest.mark.slow

VARIANTS = ["wpo", "ld_dpo", "alphapo", "cpo", "orpo"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """16 short real HH-RLHF pairs from the committed slice (tests/data)."""
    return short_hh_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_on_smollm2_and_hh_pairs(pairs_file, tmp_path, variant):
    out = tmp_path / variant
    rc = main(["train", "--data", str(pairs_file), "--output-dir", str(out), "--variant", variant, "--max-steps", "2",
               "--per-device-batch-size", "4", "--max-length", "256", "--max-prompt-length", "192",
               "--learning-rate", "1e-5", "--no-progress", "--set", "plots=false"])
    assert rc == 0
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    if variant == "wpo":  # the policy's own probabilities of HH responses: weights well below 1, positive
        assert 0 < history[0]["pair_weighting/mean"] < 1
    if variant in ("cpo", "orpo"):
        assert math.isfinite(history[0]["nll"]) and history[0]["nll"] > 0
    if variant == "ld_dpo":
        assert history[0]["weights/chosen_mean"] <= 1.0
