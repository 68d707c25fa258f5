"""Segment attention (unipo.models.segment_attention) equals the dense-mask path and the per-sequence truth."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import examples, naive_logps
from unipo.data.batching import collate_pairs
from unipo.layout import attention_mask_4d
from unipo.models import segment_attention as sa
from unipo.models.forward import response_logps
from unipo.models.loading import load_model
from unipo.training.collate import collate_for
from unipo.training.hf_compat import enable_activation_checkpointing

LAYOUTS = [{}, {"packing": True}, {"one_row": True}]


@pytest.fixture(scope="module")
def dense(tiny_model_dir):
    return load_model(str(tiny_model_dir), attn_implementation="sdpa")


@pytest.fixture(scope="module")
def seg(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.mark.integration
def test_load_model_enables_it_where_exact(dense, seg, tiny_model_dir, tmp_path):
    assert sa.enabled(seg) and not sa.enabled(dense)
    from transformers import MistralConfig, MistralForCausalLM

    windowed = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                sliding_window=8))
    assert not sa.enable(windowed)  # a sliding window is not applied by segment attention: keep SDPA
    seg.save_pretrained(tmp_path)  # what is saved loads anywhere: the implementation name is not persisted
    assert sa.NAME not in (tmp_path / "config.json").read_text()


@pytest.mark.unit
def test_spans_by_hand():
    batch = collate_pairs([{"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "rejected_ids": [6]},
                           {"prompt_ids": [7], "chosen_ids": [8], "rejected_ids": [9, 10]}], 0)
    spans = sa.spans_from_batch(batch["segments"], batch["documents"])
    # row 0: p p c c c | r ; row 1: p c | r r | 2 padding
    assert spans.sizes == [5, 1, 2, 2, 2]
    assert [(b.kind, b.head, b.prompt_len) for b in spans.blocks] == [
        ("causal", -1, 0), ("branch", 0, 2), ("causal", -1, 0), ("branch", 2, 1), ("pad", -1, 0)]
    assert spans.branch_mask(2, 3, torch.device("cpu")).tolist() == [
        [True, True, True, False, False], [True, True, True, True, False], [True, True, True, True, True]]


@pytest.mark.unit
def test_attention_function_equals_dense_mask_sdpa():
    """Ground truth: one SDPA call with the dense 4-D mask of batching.attention_mask_4d (GQA 4 → 2 heads)."""
    torch.manual_seed(0)
    batch = collate_pairs(examples(), 0, packing=True)
    rows, length = batch["segments"].shape
    q = torch.randn(rows, 4, length, 8, requires_grad=True)
    k = torch.randn(rows, 2, length, 8, requires_grad=True)
    v = torch.randn(rows, 2, length, 8, requires_grad=True)
    real = (batch["segments"] != -1)[:, :, None, None]  # padding outputs differ (zeros here) and are never read
    mask = attention_mask_4d(batch["segments"], batch["documents"])
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                              attn_mask=mask, scale=0.3).transpose(1, 2) * real
    module = torch.nn.Module()
    got, _ = sa.segment_attention(module, q, k, v, None, scaling=0.3,
                                  unipo_spans=sa.spans_from_batch(batch["segments"], batch["documents"]))
    torch.testing.assert_close(got * real, expected, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(expected)
    grads_expected = torch.autograd.grad((expected * g).sum(), (q, k, v))
    grads_got = torch.autograd.grad((got * real * g).sum(), (q, k, v))
    for a, b in zip(grads_got, grads_expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("layout", LAYOUTS, ids=["padded", "packed", "one_row"])
@pytest.mark.parametrize("share_prompt", [True, False])
def test_logps_equal_naive(seg, share_prompt, layout):
    exs = examples()
    with torch.no_grad():
        out = response_logps(seg, collate_pairs(exs, 0, share_prompt=share_prompt, **layout), chunk_size=4)
    for i, ex in enumerate(exs):
        for side in ("chosen", "rejected"):
            expected = naive_logps(seg, ex["prompt_ids"], ex[f"{side}_ids"])
            got = out.logps[side][i, : len(ex[f"{side}_ids"])]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _grads(model, batch):
    model.zero_grad()
    out = response_logps(model, batch, chunk_size=3)
    (out.logps.chosen.sum() - 0.5 * out.logps.rejected.sum()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.integration
def test_gradients_equal_dense_path(dense, seg):
    exs = examples()
    expected = _grads(dense, collate_pairs(exs, 0))
    for layout in LAYOUTS:
        torch.testing.assert_close(_grads(seg, collate_pairs(exs, 0, **layout)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.integration
def test_gradient_checkpointing_recomputes_the_same(tiny_model_dir):
    """The recomputed forward of a checkpointed layer gets the same blocks (they travel as kwargs)."""
    exs = examples()
    plain = load_model(str(tiny_model_dir)).train()
    ckpt = load_model(str(tiny_model_dir)).train()
    enable_activation_checkpointing(ckpt, use_reentrant=False)
    batch = collate_pairs(exs, 0, one_row=True)
    torch.testing.assert_close(_grads(ckpt, batch), _grads(plain, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_plain_forward_and_generation_fall_back_to_sdpa(dense, seg):
    """Without blocks (generation, a padded forward with a 2-D mask) the model is transformers' SDPA model."""
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    am = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(seg(input_ids=ids, attention_mask=am).logits,
                                   dense(input_ids=ids, attention_mask=am).logits)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert seg.generate(ids, attention_mask=am, **kw).tolist() == dense.generate(ids, attention_mask=am,
                                                                                     **kw).tolist()


@pytest.mark.integration
def test_collate_for_one_padding_free_row(dense, seg):
    exs = examples()
    one = collate_for(seg, 0)(exs)
    assert one["input_ids"].shape == (1, sum(len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"])
                                          for e in exs))
    assert not (one["segments"] == -1).any()
    assert collate_for(dense, 0)(exs)["input_ids"].shape[0] == 3  # dense mask: first-fit rows
    assert collate_for(seg, 0, packing=False)(exs)["input_ids"].shape[0] == 4
    json.dumps(one["documents"].tolist())  # plain ints, one id per sequence
    assert one["documents"][0].unique().tolist() == [0, 1, 2, 3]


@pytest.mark.integration
def test_bf16_autocast_matches_dense_path(dense, seg):
    exs = examples()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = response_logps(dense, collate_pairs(exs, 0))
        b = response_logps(seg, collate_pairs(exs, 0, one_row=True))
    for side in ("chosen", "rejected"):
        torch.testing.assert_close(b.logps[side], a.logps[side], rtol=0, atol=0.05)
