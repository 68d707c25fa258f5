"""train()'s first stage, plan_training: pure validation from the configuration and the parts' declared
needs (no model, no data read)."""

from __future__ import annotations

import pytest

from unipo.errors import ConfigError
from unipo.training.config import TrainConfig
from unipo.training.plan import plan_training

pytestmark = pytest.mark.unit


def plan(**kw):
    return plan_training(TrainConfig.from_dict({"data": "pairs.jsonl", **kw}))


def test_what_each_variant_needs_from_data_models_and_reference():
    p = plan(variant="dpo")
    assert (p.reference, p.weights_columns, p.diff_masks, p.signal) == ("copy", None, False, None)
    assert plan(variant="simpo").reference == "none"  # reference-free
    assert plan(variant="dpo", lora={"r": 4}).reference == "adapter"
    p = plan(variant="tisdpo")  # token weights from the data
    assert p.weights_columns == ("chosen_weights", "rejected_weights") and p.signal is None
    assert plan(variant="bmc").diff_masks  # BMC's masks are computed while tokenising
    p = plan(variant="sparsepo")  # masks from a learned signal, not from the data
    assert p.signal == {"type": "sparsepo_masks"} and p.weights_columns is None
    p = plan(variant="sparsepo", weights_columns=["m_w", "m_l"])  # ... unless the data supplies them
    assert p.signal is None and p.weights_columns == ("m_w", "m_l")
    assert plan(variant="learned_prior").signal == {"type": "learned_prior"}


@pytest.mark.parametrize("kw,message", [
    ({"variant": "tdpo2", "reference": "precomputed"}, "needs the reference model at every step"),
    ({"variant": "learned_prior", "reference": "precomputed"}, "needs the reference model at every step"),
    ({"variant": "dpo", "reference": "none"}, "needs a reference model"),
    ({"variant": "dpo", "reference": "adapter"}, "needs LoRA"),
    ({"variant": "dpo", "token_signal": "sparsepo_masks"}, "does not read it"),
    ({"variant": "learned_prior", "token_signal": "none"}, "only a token signal provides"),
    ({"variant": "sparsepo", "token_signal": "activation_masks", "reference": "precomputed"},
     "needs the reference model at every step"),
    ({"variant": {"preset": "simpo", "rejected_transform": "minor"}}, "log π ≤ 0 everywhere"),
])
def test_bad_combinations_fail_in_the_plan(kw, message):
    with pytest.raises(ConfigError, match=message):
        plan(**kw)


def test_no_data_is_refused():
    with pytest.raises(ConfigError, match="no training data"):
        plan_training(TrainConfig())
