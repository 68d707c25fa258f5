"""The fast forward path (shared prompt, 4-D mask, chunked head) equals the plain per-sequence path."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import examples, naive_logps
from unipo.data.batching import collate_pairs, pack_rows
from unipo.layout import attention_mask_4d
from unipo.models.forward import response_logps


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.mark.integration
@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("share_prompt", [True, False])
def test_packed_logps_equal_naive(model, share_prompt, packing):
    exs = examples()
    batch = collate_pairs(exs, pad_token_id=0, share_prompt=share_prompt, packing=packing)
    with torch.no_grad():
        out = response_logps(model, batch, chunk_size=4)
    for i, ex in enumerate(exs):
        for side in ("chosen", "rejected"):
            expected = naive_logps(model, ex["prompt_ids"], ex[f"{side}_ids"])
            got = out.logps[side][i, : len(ex[f"{side}_ids"])]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            assert torch.all(out.logps[side][i, len(ex[f"{side}_ids"]):] == 0)


@pytest.mark.integration
def test_gradients_equal_between_layouts(model):
    exs = examples()
    grads = []
    for share, packing in ((True, False), (False, False), (True, True), (False, True)):
        model.zero_grad()
        out = response_logps(model, collate_pairs(exs, 0, share_prompt=share, packing=packing), chunk_size=3)
        (out.logps.chosen.sum() - 0.5 * out.logps.rejected.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-4, atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("packing", [False, True])
def test_eager_attention_with_float_mask_matches(tiny_model_dir, packing):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    exs = examples()
    with torch.no_grad():
        out = response_logps(m, collate_pairs(exs, 0, packing=packing))
    for i in (0, 3):  # pair 3 shares a row with pair 2 when packed
        expected = naive_logps(m, exs[i]["prompt_ids"], exs[i]["rejected_ids"])
        n = len(exs[i]["rejected_ids"])
        torch.testing.assert_close(out.logps.rejected[i, :n], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.unit
def test_pack_rows_first_fit_decreasing():
    # longest first, each into the first row with room; ties keep their order
    assert pack_rows([14, 12, 10, 4], 14) == [[0], [1], [2, 3]]
    assert pack_rows([3, 5, 2, 5, 4], 7) == [[1, 2], [3], [4, 0]]
    assert pack_rows([1, 1, 1], 3) == [[0, 1, 2]]


@pytest.mark.unit
def test_packing_removes_padding_and_keeps_sequences_apart():
    exs = examples()  # sequence lengths 14, 12, 10, 4
    plain, packed = collate_pairs(exs, 0), collate_pairs(exs, 0, packing=True)
    assert plain["input_ids"].shape == (4, 14) and packed["input_ids"].shape == (3, 14)
    assert int((packed["segments"] == -1).sum()) == 3 * 14 - 40  # only the row tails are padding
    assert packed["documents"][2].tolist() == [2] * 10 + [3] * 4
    assert packed["position_ids"][2, 10:].tolist() == [0, 1, 2, 1]  # the short pair starts at position 0
    m = attention_mask_4d(packed["segments"], packed["documents"])[2, 0]
    assert not m[10:, :10].any() and not m[:10, 10:].any()  # no attention between the two pairs


@pytest.mark.unit
def test_mask_rejected_never_sees_chosen():
    batch = collate_pairs([{"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]}], 0)
    m = attention_mask_4d(batch["segments"])[0, 0]
    # row order: p p c c r ; rejected (index 4) sees prompt (0, 1) and itself, not chosen (2, 3)
    assert m[4].tolist() == [True, True, False, False, True]
    assert m[3].tolist() == [True, True, True, True, False]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 2]
