"""Slow tier: WPO, LD-DPO, AlphaPO, CPO and ORPO each train two steps on SmolLM2-135M-Instruct and real
HH-RLHF pairs (the committed slice) with a finite loss, through ``unipo train``."""

from __future__ import annotations

import math

import pytest

from tests.helpers import short_hh_pairs, train_two_steps_on_smollm2

pytestmark = pytest.mark.slow

VARIANTS = ["wpo", "ld_dpo", "alphapo", "cpo", "orpo"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """16 short real HH-RLHF pairs from the committed slice (tests/data)."""
    return short_hh_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_on_smollm2_and_hh_pairs(pairs_file, tmp_path, variant):
    out = tmp_path / variant
    history = train_two_steps_on_smollm2(pairs_file, out, variant)
    if variant == "wpo":  # the policy's own probabilities of HH responses: weights well below 1, positive
        assert 0 < history[0]["pair_weighting/mean"] < 1
    if variant in ("cpo", "orpo"):
        assert math.isfinite(history[0]["nll"]) and history[0]["nll"] > 0
    if variant == "ld_dpo":
        assert history[0]["weights/chosen_mean"] <= 1.0
