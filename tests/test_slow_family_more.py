"""Slow tier: the rest of the family (issue 14) trains two steps on SmolLM2-135M-Instruct and real HH-RLHF pairs."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import short_hh_pairs, train_two_steps_on_smollm2

pytestmark = pytest.mark.slow

VARIANTS = ["hdpo", "beta_dpo", "sampo", "alpha_dpo", "simper"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """8 short real HH-RLHF pairs from the committed slice (tests/data)."""
    return short_hh_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_on_smollm2(pairs_file, tmp_path, variant):
    out = tmp_path / variant
    history = train_two_steps_on_smollm2(pairs_file, out, variant)
    if variant in ("beta_dpo", "alpha_dpo"):  # the moving statistics are saved with the model, after 2 updates
        state = json.loads((out / "unipo_objective_state.json").read_text())
        assert [s["steps"] for s in state.values()] == [2.0]
        assert all(math.isfinite(v) for s in state.values() for v in s.values())
        key = "beta_dpo/beta" if variant == "beta_dpo" else "alpha_dpo/margin_std"
        assert all(math.isfinite(h[key]) for h in history)
    if variant == "beta_dpo":
        assert history[0]["beta_dpo/kept"] == pytest.approx(0.75)  # 3 of 4 pairs (ρ = 0.2)
    if variant == "sampo":
        assert 0 < history[0]["weights/chosen_mean"] <= 1
