"""unipo.tisdpo.importance (and ``unipo weights estimate --method ti_dpo``): TI-DPO's token-importance producer
(Yang et al., ICLR 2026, arXiv 2505.19653); its weighted DPO term, the preset ti_dpo_w, is tested in
tests/objective/test_presets.py.

Ground truth written here from the paper's camera-ready text (§4.2, Eq. 5–8, Table B13):

- Eq. 5–6: I_i = ‖∇_{e_i} max(logits at the final position)‖₁, checked against central finite differences of the
  largest final logit over every coordinate of every response token's embedding (a float64 copy of the tiny model);
- Eq. 7: P(t) = exp(−½((t − μ)/σ)²), μ = (T − 1)/2, σ = T/4;  Eq. 8: W = λ·I/ΣI + (1 − λ)·P, λ = 0.7.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from unipo.cli import main
from unipo.errors import ConfigError
from unipo.tisdpo.estimate import EstimateOptions, estimate_weights
from unipo.tisdpo.importance import attribution_scores, gaussian_prior, hybrid_weights

# ------------------------------------------------------------------------------------------- the formulas


@pytest.mark.unit
def test_gaussian_prior_is_eq_7():
    # T = 5: μ = 2, σ = 1.25; by hand: exp(−½(2/1.25)²) = exp(−1.28), exp(−½(1/1.25)²) = exp(−0.32)
    raw = [math.exp(-1.28), math.exp(-0.32), 1.0, math.exp(-0.32), math.exp(-1.28)]
    assert gaussian_prior(5, "none") == pytest.approx(raw, rel=1e-15)
    assert gaussian_prior(5, "sum") == pytest.approx([p / sum(raw) for p in raw], rel=1e-15)
    # T = 4: μ = 1.5, σ = 1: the two middle tokens share the peak exp(−1/8)
    assert gaussian_prior(4, "none") == pytest.approx([math.exp(-1.125), math.exp(-0.125), math.exp(-0.125),
                                                       math.exp(-1.125)], rel=1e-15)
    assert gaussian_prior(1, "none") == [1.0]


@pytest.mark.unit
def test_hybrid_weights_are_eq_8():
    scores = [3.0, 1.0, 0.5, 2.5]
    prior = [math.exp(-1.125), math.exp(-0.125), math.exp(-0.125), math.exp(-1.125)]
    for lam in (0.0, 0.3, 0.7, 1.0):
        for norm, p in (("none", prior), ("sum", [x / sum(prior) for x in prior])):
            want = [lam * s / 7.0 + (1 - lam) * q for s, q in zip(scores, p, strict=True)]
            assert hybrid_weights(scores, lam, norm) == pytest.approx(want, rel=1e-14)
    assert sum(hybrid_weights(scores, 0.7, "sum")) == pytest.approx(1.0, rel=1e-14)
    assert hybrid_weights([0.0, 0.0], 1.0) == [0.5, 0.5]  # no gradient: uniform
    with pytest.raises(ValueError, match="λ"):
        hybrid_weights(scores, 1.5)


# ------------------------------------------------------------------------------------------- the producer


def _double_model(path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
    model.eval()
    model.requires_grad_(False)
    return model


def _rms_norm_in_float64(self, x):
    """Llama's RMSNorm without its cast to float32, so that the whole forward is float64 (finite differences of
    1e-6 drown in float32 rounding otherwise)."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


@pytest.mark.integration
def test_attribution_is_the_l1_norm_of_the_max_logit_gradient_by_finite_differences(tiny_model_dir, monkeypatch):
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _rms_norm_in_float64)
    model = _double_model(tiny_model_dir)
    prompt, response = [5, 17, 42, 8], [60, 7]
    scores = attribution_scores(model, prompt, response, torch.device("cpu"))
    emb = model.get_input_embeddings()(torch.tensor([prompt + response])).detach()
    argmax = int(model(inputs_embeds=emb).logits[0, -1].argmax())
    h, fd = 1e-6, []
    for i in range(len(response)):
        total = 0.0
        for k in range(emb.shape[-1]):
            vals = []
            for sign in (1, -1):
                e = emb.clone()
                e[0, len(prompt) + i, k] += sign * h
                vals.append(model(inputs_embeds=e).logits[0, -1].max().item())
            # the argmax stays the same under a 1e-6 step: the max is differentiable there
            total += abs((vals[0] - vals[1]) / (2 * h))
        fd.append(total)
    assert int(model(inputs_embeds=emb).logits[0, -1].argmax()) == argmax
    assert scores == pytest.approx(fd, rel=1e-6)
    assert all(s > 0 for s in scores)


def _rows() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "chosen": [{"role": "assistant", "content": f"{2 * i}"}],
             "rejected": [{"role": "assistant", "content": f"{2 * i + 1}, I cannot help with that."}]}
            for i in range(3)]


def _independent_ids(tok, row: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids from the chat template directly (as tests/test_weights.py builds them)."""
    p_text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    ids = [tok(p_text, add_special_tokens=False)["input_ids"]]
    for side in ("chosen", "rejected"):
        full = tok.apply_chat_template(row["prompt"] + row[side], tokenize=False)
        ids.append(tok(full[len(p_text):-1], add_special_tokens=False)["input_ids"])  # up to <|im_end|>
    return ids[0], ids[1], ids[2]


def _grad_l1(model, prompt: list[int], resp: list[int]) -> list[float]:
    """Eq. 5–6 in float64 (the producer scores in float32): the gradient of the largest final logit w.r.t. an
    additive offset on the input embeddings, read on the response positions."""
    emb = model.get_input_embeddings()(torch.tensor([prompt + resp])).detach()
    offset = torch.zeros_like(emb, requires_grad=True)
    target = model(inputs_embeds=emb + offset).logits[0, -1].max()
    (g,) = torch.autograd.grad(target, offset)
    return g[0, len(prompt):].abs().sum(-1).tolist()


@pytest.mark.integration
def test_estimate_method_ti_dpo_writes_eq_8_weights_and_train_reads_them(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "ti.jsonl"
    rc = main(["weights", "estimate", "--method", "ti_dpo", "--model", str(tiny_model_dir), "--data", str(data),
               "--out", str(out), "--no-progress", "--ti-lambda", "0.6"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["method"] == "ti_dpo" and meta["ti_lambda"] == 0.6 and meta["contrastive_models"] is None
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = _double_model(tiny_model_dir)
    for row, got in zip(_rows(), rows, strict=True):
        prompt, chosen, rejected = _independent_ids(tok, row)
        for side, resp in (("chosen", chosen), ("rejected", rejected)):
            raw = _grad_l1(model, prompt, resp)
            prior = [math.exp(-0.5 * ((t - (len(resp) - 1) / 2) / (len(resp) / 4)) ** 2) for t in range(len(resp))]
            want = [0.6 * s / sum(raw) + 0.4 * p / sum(prior) for s, p in zip(raw, prior, strict=True)]
            assert got[f"{side}_weights"] == pytest.approx(want, rel=1e-5)
    rc = main(["train", "--model", str(tiny_model_dir), "--data", str(out), "--variant", "ti_dpo_w",
               "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--per-device-batch-size", "3",
               "--no-progress", "--set", "plots=false"])
    assert rc == 0
    assert (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.unit
def test_ti_dpo_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="--ti-lambda"):
        estimate_weights("x.jsonl", tmp_path / "o.jsonl", "m", EstimateOptions(method="ti_dpo", ti_lambda=2.0))
    with pytest.raises(ConfigError, match="--ti-prior-norm"):
        estimate_weights("x.jsonl", tmp_path / "o.jsonl", "m", EstimateOptions(method="ti_dpo", ti_prior_norm="max"))
