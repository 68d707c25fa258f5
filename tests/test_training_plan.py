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


# -- DataSettings: what data preparation reads, from a TrainConfig or a saved configuration (issue 24) --------
def test_max_prompt_length_null_means_no_prompt_limit(tmp_path, monkeypatch):
    """docs/data.md: ``max_prompt_length: None`` for no limit, in a YAML config too (it was a TypeError)."""
    import json

    from unipo.testing import make_tiny_tokenizer
    from unipo.training.plan import DataSettings, prepare_data

    monkeypatch.setenv("UNIPO_CACHE", str(tmp_path / "cache"))
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data: pairs.jsonl\nmax_prompt_length: null\nmax_length: 64\n")
    cfg = TrainConfig.load(str(yaml_file), {})
    assert cfg.max_prompt_length is None and DataSettings.of(cfg).max_prompt_length is None
    assert plan_training(cfg).cfg.max_prompt_length is None
    data = tmp_path / "p.jsonl"
    prompt = " ".join(f"w{i}" for i in range(20))
    data.write_text(json.dumps({"prompt": prompt, "chosen": "yes", "rejected": "no"}) + "\n")
    tok = make_tiny_tokenizer()
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert 4 < n_prompt < 60  # the prompt is longer than 4 tokens and fits max_length 64 with a response
    rows, summary = prepare_data(DataSettings.of(cfg), tok, str(data), None)
    assert summary.truncated_prompt == 0 and len(rows[0]["prompt_ids"]) >= n_prompt
    cut, summary = prepare_data(DataSettings.of(TrainConfig.from_dict({"max_length": 64, "max_prompt_length": 4})),
                                tok, str(data), None)
    assert summary.truncated_prompt == 1 and len(cut[0]["prompt_ids"]) == 4
    with pytest.raises(ConfigError, match="max_prompt_length"):
        TrainConfig.from_dict({"max_length": 64, "max_prompt_length": 64})


def test_data_settings_from_a_saved_configuration_take_the_saved_values_and_defaults_for_missing_keys():
    from unipo.training.plan import DataSettings

    saved = DataSettings.saved({"max_length": 99, "max_prompt_length": None, "on_invalid": "skip", "other": 1})
    default = DataSettings.of(TrainConfig())
    assert (saved.max_length, saved.max_prompt_length, saved.on_invalid) == (99, None, "skip")
    assert (saved.truncation_mode, saved.weight_column) == (default.truncation_mode, default.weight_column)
    with pytest.raises(ConfigError, match=r"max_prompt_length \(120\) must be smaller than max_length \(99\)"):
        DataSettings.saved({"max_length": 99, "max_prompt_length": 120}).check()
