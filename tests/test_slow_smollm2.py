"""Slow tier: a few real training steps on SmolLM2-135M-Instruct (built-in source, converted once)."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import short_hh_pairs, train_two_steps_on_smollm2

pytestmark = pytest.mark.slow

VARIANTS = ["dpo", "simpo", "tdpo2", "tisdpo_nokl", "tisdpo", "bmc", "sparsepo", "sparsepo_activation",
            "learned_prior", "fdpo_js"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """16 short real HH-RLHF pairs from the committed slice (tests/data)."""
    return short_hh_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_on_smollm2(pairs_file, tmp_path, variant):
    out = tmp_path / variant
    extra = []
    if variant == "sparsepo_activation":
        variant, extra = "sparsepo", ["--set", "token_signal={type: activation_masks}"]
    if variant.startswith("tisdpo"):  # uniform importance weights: exercises the weights path end to end
        rows = [json.loads(ln) for ln in pairs_file.read_text().splitlines()]
        from unipo.data.tokenize import prepare_pairs, tokenizer_fingerprint
        from unipo.models.builtin import resolve_builtin
        from unipo.models.loading import load_tokenizer

        tok = load_tokenizer(str(resolve_builtin("smollm2-135m-instruct")))
        pairs, _ = prepare_pairs(rows, tok, max_length=100000, max_prompt_length=99999)
        for r, p in zip(rows, pairs, strict=True):
            r["chosen_weights"] = [1.0] * len(p.chosen_ids)
            r["rejected_weights"] = [1.0] * len(p.rejected_ids)
            r["tokenizer"] = tokenizer_fingerprint(tok)
        weighted = tmp_path / "weighted.jsonl"
        weighted.write_text("".join(json.dumps(r) + "\n" for r in rows))
        extra = ["--data", str(weighted)]
        if variant == "tisdpo":  # random weights in [0.5, 1.5]: the KL term is weighted for real
            import random

            rng = random.Random(0)
            for r in rows:
                r["chosen_weights"] = [rng.uniform(0.5, 1.5) for _ in r["chosen_weights"]]
                r["rejected_weights"] = [rng.uniform(0.5, 1.5) for _ in r["rejected_weights"]]
            weighted.write_text("".join(json.dumps(r) + "\n" for r in rows))
    history = train_two_steps_on_smollm2(pairs_file, out, variant, *extra)
    if variant == "tisdpo":
        assert math.isfinite(history[1]["kl/chosen"]) and history[0]["weights/chosen_std"] > 0.1
    if variant == "tdpo2":
        assert history[0]["kl/chosen"] == pytest.approx(0.0, abs=1e-3)  # policy == reference at step 0
        assert math.isfinite(history[1]["kl/rejected"])
    if variant == "bmc":
        assert history[0]["weights/chosen_mean"] >= 1.0
    if variant == "sparsepo":
        assert "mask/mean" in history[0]
