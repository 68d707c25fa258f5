"""Sampling, teacher-forced scoring and generation metrics on the tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch

from unipo.eval.generation import eos_token_ids, generation_metrics, sample_responses, score_responses

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, tok


def _prompts(tok) -> list[list[int]]:
    msgs = ["What is 12 + 35?", "How do I bake bread? Please answer politely.", "Hi"]
    return [tok.apply_chat_template([{"role": "user", "content": m}], add_generation_prompt=True,
                                    tokenize=True, return_dict=False) for m in msgs]


def test_sampling_is_reproducible_and_batch_independent(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding is exercised
    a = sample_responses(model, tok, prompts, n_samples=3, max_new_tokens=12, batch_size=4, seed=1)
    b = sample_responses(model, tok, prompts, n_samples=3, max_new_tokens=12, batch_size=4, seed=1)
    c = sample_responses(model, tok, prompts, n_samples=3, max_new_tokens=12, batch_size=1, seed=1)
    d = sample_responses(model, tok, prompts, n_samples=3, max_new_tokens=12, batch_size=4, seed=2)
    assert a == b
    assert a == c
    assert a != d
    assert len(a) == 3 and all(len(per) == 3 for per in a)
    eos = eos_token_ids(model, tok)
    for per in a:
        for r in per:
            assert 1 <= len(r) <= 12
            # stops at the first eos, which is kept
            assert all(t not in eos for t in r[:-1])
            assert len(r) == 12 or r[-1] in eos


def test_left_padded_sampling_matches_unpadded_greedy(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    batched = sample_responses(model, tok, prompts, 1, 10, temperature=0.0, batch_size=3)
    for p, per in zip(prompts, batched, strict=True):
        ids = torch.tensor([p])
        expected: list[int] = []
        with torch.no_grad():
            for _ in range(10):
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                expected.append(nxt)
                if nxt in eos_token_ids(model, tok):
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert per[0] == expected


def test_score_responses_matches_per_sequence_forward(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    samples = sample_responses(model, tok, prompts, n_samples=2, max_new_tokens=9, seed=3)
    flat_p = [p for p, per in zip(prompts, samples, strict=True) for _ in per]
    flat_r = [r for per in samples for r in per]
    scores = score_responses(model, tok, flat_p, flat_r, batch_size=4)
    assert scores.logps.shape == (len(flat_r), max(len(r) for r in flat_r))
    for n, (p, r) in enumerate(zip(flat_p, flat_r, strict=True)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + r])).logits[0].float()
        logp = torch.log_softmax(logits, -1)[len(p) - 1:len(p) + len(r) - 1]
        expected = logp.gather(-1, torch.tensor(r)[:, None])[:, 0]
        ent = -(logp.exp() * logp).sum(-1)
        assert torch.allclose(scores.logps[n, :len(r)], expected, atol=1e-5)
        assert torch.allclose(scores.entropies[n, :len(r)], ent, atol=1e-5)
        assert scores.mask[n].sum() == len(r)
        assert torch.all(scores.logps[n, len(r):] == 0)
    assert torch.allclose(scores.sequence_logps()[0], scores.logps[0, :len(flat_r[0])].sum())


def test_generation_metrics_self_kl_is_zero(tiny, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model, tok = tiny
    prompts = _prompts(tok)
    twin = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    calls: list[tuple[int, str]] = []

    def verifier(i: int, text: str) -> bool:
        calls.append((i, text))
        return i == 0

    out = generation_metrics(model, twin, tok, prompts, n_samples=3, max_new_tokens=8, verifier=verifier,
                             keep_samples=True)
    assert out["kl"] == 0.0 and out["kl_k3"] == 0.0
    same = generation_metrics(model, model, tok, prompts, n_samples=3, max_new_tokens=8)
    assert same["kl"] == 0.0 and same["kl_k3"] == 0.0
    assert len(calls) == 9 and out["pass_rate"] == pytest.approx(1 / 3)
    assert [t for _, t in calls] == [t for per in out["samples"] for t in per]
    for key in ("distinct_1", "distinct_2", "self_bleu", "entropy", "response_length"):
        assert math.isfinite(out[key]), key
    assert 0 <= out["distinct_1"] <= 1 and 0 <= out["self_bleu"] <= 1
    assert 1 <= out["response_length"] <= 8
    # A random model over ~400 tokens is close to uniform: entropy near log(V).
    assert 0.5 * math.log(len(tok)) < out["entropy"] <= math.log(len(tok)) + 1e-4
    assert "pass_rate" not in same


def test_generation_metrics_kl_differs_for_another_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from unipo.testing import make_tiny_model

    model, tok = tiny
    other = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "other", seed=1),
                                                 dtype=torch.float32)
    prompts = _prompts(tok)
    out = generation_metrics(model, other, tok, prompts, n_samples=2, max_new_tokens=6,
                             diversity_unit="tokens")
    assert out["kl_k3"] > 0
    assert math.isfinite(out["kl"]) and out["kl_std_err"] > 0
    none_ref = generation_metrics(model, None, tok, prompts, n_samples=1, max_new_tokens=4)
    assert "kl" not in none_ref and math.isnan(none_ref["self_bleu"])


@pytest.mark.parametrize("segments", [False, True], ids=["dense-mask", "segment-attention"])
def test_shared_prompt_scores_equal_one_row_per_response(tiny_model_dir, segments):
    """K = 4 samples of 3 prompts (one response empty, batch 3 so a prompt's samples span two forwards), in
    float64: the shared-prompt path's log-probs and entropies equal the one-row-per-response path's, with the
    dense 4-D mask and with segment attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unipo.models import segment_attention

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    if segments:
        assert segment_attention.enable(model)
    prompts = _prompts(tok)
    samples = sample_responses(model, tok, prompts, n_samples=4, max_new_tokens=9, seed=5)
    flat_p = [p for p, per in zip(prompts, samples, strict=True) for _ in per]
    flat_r = [r for per in samples for r in per]
    flat_r[5] = []
    rows = score_responses(model, tok, flat_p, flat_r, batch_size=3, shared_prompt=False)
    shared = score_responses(model, tok, flat_p, flat_r, batch_size=3)
    assert torch.equal(shared.mask, rows.mask) and shared.mask[5].sum() == 0
    assert torch.allclose(shared.logps, rows.logps, atol=1e-6, rtol=0)
    assert torch.allclose(shared.entropies, rows.entropies, atol=1e-6, rtol=0)
