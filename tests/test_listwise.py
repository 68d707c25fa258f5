"""One chosen response against several rejected ones (listwise DPO, the Plackett–Luce form of DPO's
Appendix A.3): the loss against its formula written out here in plain floats, K = 1 against DPO, gradients by
finite differences, the data format and its errors, the batch layout, and, on the tiny model, the packed
forward against one (prompt, response) at a time, held-out scoring and a two-step training run."""

from __future__ import annotations

import math

import pytest
import torch

import unipo
from tests.helpers import naive_logps, train_args, write_jsonl
from unipo.data.batching import collate_pairs
from unipo.data.formats import normalize_row
from unipo.data.tokenize import prepare_pairs
from unipo.errors import DataError, UnipoError
from unipo.layout import PROMPT, attention_mask_4d
from unipo.objective import Objective
from unipo.testing import make_tiny_tokenizer

KS = [1, 3, 2, 4]  # rejected responses per pair
T = 6


def listwise_batch(seed: int = 0, ks: list[int] = KS) -> dict[str, torch.Tensor]:
    """float64 inputs: chosen [B, T], rejected [ΣK, T], ragged masks, -1e9 garbage in the padding."""
    g = torch.Generator().manual_seed(seed)
    b, n = len(ks), sum(ks)

    def side(rows: int) -> tuple[torch.Tensor, ...]:
        lengths = torch.randint(1, T + 1, (rows,), generator=g)
        mask = torch.arange(T)[None] < lengths[:, None]
        a = torch.where(mask, -torch.rand(rows, T, generator=g, dtype=torch.float64) * 3, -1e9)
        r = torch.where(mask, -torch.rand(rows, T, generator=g, dtype=torch.float64) * 3, -1e9)
        return a.requires_grad_(True), r, mask

    a_w, r_w, m_w = side(b)
    a_l, r_l, m_l = side(n)
    groups = torch.repeat_interleave(torch.arange(b), torch.tensor(ks))
    return {"policy_chosen_logps": a_w, "ref_chosen_logps": r_w, "chosen_mask": m_w,
            "policy_rejected_logps": a_l, "ref_rejected_logps": r_l, "rejected_mask": m_l, "rejected_pair": groups}


def expected_losses(d: dict[str, torch.Tensor], beta: float, ks: list[int] = KS) -> list[float]:
    """−log(exp(βρ_w) / Σ_{y ∈ {w, l_1..l_K}} exp(βρ_y)), ρ = Σ_t (a_t − r_t), in plain Python floats."""
    def rho(a, r, m, i):
        return sum(float(a[i, t].detach()) - float(r[i, t]) for t in range(T) if bool(m[i, t]))

    out, row = [], 0
    for i, k in enumerate(ks):
        sw = beta * rho(d["policy_chosen_logps"], d["ref_chosen_logps"], d["chosen_mask"], i)
        sls = [beta * rho(d["policy_rejected_logps"], d["ref_rejected_logps"], d["rejected_mask"], row + j)
               for j in range(k)]
        row += k
        out.append(-(sw - math.log(math.exp(sw) + sum(math.exp(s) for s in sls))))
    return out


# -- the loss ------------------------------------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_loss_equals_the_plackett_luce_formula(beta):
    d = listwise_batch()
    out = unipo.compute_loss("listwise_dpo", beta=beta, **d)
    assert out.losses.shape == (len(KS),) and out.losses.dtype == torch.float64
    for got, want in zip(out.losses.tolist(), expected_losses(d, beta), strict=True):
        assert got == pytest.approx(want, abs=1e-10, rel=1e-10)


@pytest.mark.unit
def test_k1_is_dpo_exactly():
    d = listwise_batch(ks=[1, 1, 1, 1])
    pairs = {k: v for k, v in d.items() if k != "rejected_pair"}
    dpo = unipo.compute_loss("dpo", **pairs)
    plain = unipo.compute_loss("listwise_dpo", **pairs)  # no rejected_pair: DPO's own computation, bit for bit
    assert torch.equal(plain.losses, dpo.losses)
    grouped = unipo.compute_loss("listwise_dpo", **d)  # one rejected per pair through the listwise reduction
    torch.testing.assert_close(grouped.losses, dpo.losses, rtol=0, atol=1e-14)
    g_dpo = torch.autograd.grad(dpo.losses.sum(), [pairs["policy_chosen_logps"], pairs["policy_rejected_logps"]])
    g_lw = torch.autograd.grad(unipo.compute_loss("listwise_dpo", **d).losses.sum(),
                               [d["policy_chosen_logps"], d["policy_rejected_logps"]])
    for x, y in zip(g_lw, g_dpo, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-14)
    for key in ("rewards/accuracies", "rewards/margins", "logratio/margins"):
        torch.testing.assert_close(grouped.metrics[key], dpo.metrics[key], rtol=0, atol=1e-14)


@pytest.mark.unit
def test_gradient_by_finite_differences():
    d = listwise_batch(seed=1)
    beta = 0.7

    def total(a_w, a_l):
        return unipo.compute_loss("listwise_dpo", beta=beta, **{**d, "policy_chosen_logps": a_w,
                                                                 "policy_rejected_logps": a_l}).losses.sum()

    a_w, a_l = d["policy_chosen_logps"], d["policy_rejected_logps"]
    g_w, g_l = torch.autograd.grad(total(a_w, a_l), [a_w, a_l])
    eps = 1e-6
    for x, g, m in ((a_w, g_w, d["chosen_mask"]), (a_l, g_l, d["rejected_mask"])):
        for i, t in torch.nonzero(torch.ones_like(m)).tolist():
            bump = torch.zeros_like(x)
            bump[i, t] = eps
            with torch.no_grad():
                if x is a_w:
                    fd = (total(a_w + bump, a_l) - total(a_w - bump, a_l)) / (2 * eps)
                else:
                    fd = (total(a_w, a_l + bump) - total(a_w, a_l - bump)) / (2 * eps)
            assert float(g[i, t]) == pytest.approx(float(fd), abs=1e-8), (i, t)
            if not bool(m[i, t]):
                assert float(g[i, t]) == 0.0  # padding gets no gradient


@pytest.mark.unit
def test_stable_for_huge_log_ratios():
    d = listwise_batch()
    with torch.no_grad():
        d["policy_rejected_logps"] += torch.where(d["rejected_mask"], 3e3, 0.0)  # every rejected far ahead
    out = unipo.compute_loss("listwise_dpo", **d)
    g = torch.autograd.grad(out.losses.sum(), [d["policy_chosen_logps"]])[0]
    assert torch.isfinite(out.losses).all() and torch.isfinite(g).all() and bool((out.losses > 100).all())


@pytest.mark.unit
def test_metrics_compare_the_chosen_with_the_strongest_rejected():
    # pair 0: chosen 1.0 vs rejected (0.5, 2.0) -> loses to one; pair 1: 1.0 vs (0.2,) -> wins
    a_w = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    a_l = torch.tensor([[0.5], [2.0], [0.2]], dtype=torch.float64)
    out = unipo.compute_loss("listwise_dpo", policy_chosen_logps=a_w, policy_rejected_logps=a_l,
                             chosen_mask=torch.ones(2, 1), rejected_mask=torch.ones(3, 1),
                             ref_chosen_logps=torch.zeros(2, 1, dtype=torch.float64),
                             ref_rejected_logps=torch.zeros(3, 1, dtype=torch.float64),
                             rejected_pair=torch.tensor([0, 0, 1]), beta=1.0)
    assert out.rejected_rewards.tolist() == [2.0, 0.2]
    assert out.log_ratio_margins.tolist() == pytest.approx([-1.0, 0.8])
    assert out.metrics["rewards/accuracies"].item() == 0.5
    assert out.metrics["rewards/rejected_all"].item() == pytest.approx((0.5 + 2.0 + 0.2) / 3)


@pytest.mark.unit
def test_pairwise_losses_and_token_level_parts_refuse_several_rejected():
    d = listwise_batch()
    with pytest.raises(UnipoError, match="listwise_dpo"):
        unipo.compute_loss("dpo", **d)
    with pytest.raises(UnipoError, match="sequence-level parts only"):
        unipo.compute_loss({"preset": "tdpo2", "pair_loss": "plackett_luce"}, **d,
                           chosen_kl=torch.zeros(4, T), rejected_kl=torch.zeros(10, T))
    assert Objective({"preset": "simpo", "pair_loss": "plackett_luce"}).listwise_refusal() is None
    bad = {**d, "rejected_pair": torch.tensor([0, 1, 0, 1, 1, 1, 2, 2, 2, 3])}
    with pytest.raises(UnipoError, match="non-decreasing"):
        unipo.compute_loss("listwise_dpo", **bad)
    bad = {**d, "rejected_pair": torch.tensor([0, 0, 0, 0, 2, 2, 2, 3, 3, 3])}
    with pytest.raises(UnipoError, match=r"pairs \[1\] have no rejected"):
        unipo.compute_loss("listwise_dpo", **bad)


# -- data -----------------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_rows_with_a_list_of_rejected_responses():
    text = normalize_row({"prompt": "Q?", "chosen": " yes", "rejected": [" no", " maybe"], "id": 3},
                         file="f.jsonl", row_number=1)
    assert (text.rejected, text.more_rejected, text.extras) == (" no", [" maybe"], {"id": 3})
    assert text.to_row()["rejected"] == [" no", " maybe"]
    chat = normalize_row({"prompt": [{"role": "user", "content": "Q?"}], "chosen": "yes",
                          "rejected": ["no", [{"role": "assistant", "content": "maybe"}]]}, file="f", row_number=1)
    assert chat.conversational and chat.all_rejected == [[{"role": "assistant", "content": "no"}],
                                                         [{"role": "assistant", "content": "maybe"}]]
    one = normalize_row({"prompt": "Q?", "chosen": "a", "rejected": ["b"]}, file="f", row_number=1)
    assert one.rejected == "b" and one.more_rejected == []
    conversation = normalize_row({"prompt": [{"role": "user", "content": "Q?"}], "chosen": "a",
                                  "rejected": [{"role": "assistant", "content": "b"}]}, file="f", row_number=1)
    assert conversation.more_rejected == []  # a list of message objects is ONE conversational response


@pytest.mark.unit
@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "Q?", "chosen": "a", "rejected": []}, "rejected", "list of rejected responses is empty"),
    ({"prompt": "Q?", "chosen": "a", "rejected": ["b", 7]}, "rejected[1]", "rejected response 1 is a int"),
    ({"prompt": "Q?", "chosen": "a", "rejected": ["b", None]}, "rejected[1]", "is a NoneType"),
    ({"prompt": "Q?", "chosen": "a", "rejected": ["b", "  "]}, "rejected[1]", "empty response"),
    ({"prompt": "Q?", "chosen": "a", "rejected": ["b", [{"role": "assistant", "content": "c"}]]}, "rejected[1]",
     "the prompt is text"),
    ({"chosen": "Q? a", "rejected": ["Q? b", "Q? c"]}, "prompt", "need an explicit 'prompt'"),
    ({"prompt": [{"role": "user", "content": "Q?"}], "chosen": "a",
      "rejected": ["b", [{"role": "user", "content": "c"}]]}, "rejected[1]", "assistant"),
])
def test_bad_listwise_rows_name_file_row_and_field(row, field, message):
    with pytest.raises(DataError, match=message) as err:
        normalize_row(row, file="data.jsonl", row_number=7)
    assert (err.value.file, err.value.row, err.value.field) == ("data.jsonl", 7, field)


@pytest.mark.unit
def test_tokenised_listwise_rows_and_their_summary():
    tok = make_tiny_tokenizer()
    rows = [{"prompt": [{"role": "user", "content": "Q?"}], "chosen": "yes", "rejected": ["no", "maybe", "x"]},
            {"prompt": "Q?", "chosen": " yes", "rejected": " no"},
            {"prompt": "Q?", "chosen": " yes", "rejected": [" no", 3]}]
    with pytest.raises(DataError, match=r"row 3.*rejected\[1\]"):
        prepare_pairs(rows, tok)
    pairs, summary = prepare_pairs(rows, tok, on_invalid="skip")
    assert [len(p.more_rejected_ids or []) for p in pairs] == [2, 0]
    assert (summary.listwise, summary.listwise_rejected, summary.dropped) == (1, 3, {"invalid": 1})
    chat = tok.apply_chat_template([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "maybe"}],
                                   tokenize=False)
    assert tok.decode(pairs[0].prompt_ids + pairs[0].more_rejected_ids[0]) == chat.rstrip("\n")
    with pytest.raises(DataError, match="BMC masks"):
        prepare_pairs(rows[:1], tok, bmc_masks=True)


@pytest.mark.unit
def test_bridging_refuses_listwise_rows(tmp_path):
    from unipo.bridge.pipeline import read_pairs

    path = write_jsonl(tmp_path / "lw.jsonl", [{"prompt": "Q?", "chosen": " a", "rejected": [" b", " c"]}])
    with pytest.raises(DataError, match="one rejected response") as err:
        list(read_pairs(path))
    assert (err.value.row, err.value.field) == (1, "rejected")


# -- the batch layout -----------------------------------------------------------------------------------------
def listwise_examples() -> list[dict]:
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(5), "chosen_ids": ids(3), "rejected_ids": ids(4), "more_rejected_ids": [ids(2), ids(5)]},
            {"prompt_ids": ids(2), "chosen_ids": ids(6), "rejected_ids": ids(1)},
            {"prompt_ids": ids(1), "chosen_ids": ids(2), "rejected_ids": ids(3), "more_rejected_ids": [ids(1)]}]


@pytest.mark.unit
def test_every_rejected_branch_shares_the_prompt_and_sees_only_it():
    batch = collate_pairs(listwise_examples(), pad_token_id=0)
    assert batch["rejected_pair"].tolist() == [0, 0, 0, 1, 2, 2]
    assert batch["rejected_mask"].sum(-1).tolist() == [4, 2, 5, 1, 3, 1]
    seg, pos = batch["segments"][0].tolist(), batch["position_ids"][0].tolist()
    assert seg[:19] == [PROMPT] * 5 + [1] * 3 + [2] * 4 + [3] * 2 + [4] * 5  # the prompt once, then K + 1 responses
    assert pos[:19] == list(range(8)) + [5, 6, 7, 8] + [5, 6] + [5, 6, 7, 8, 9]  # each branch continues the prompt
    mask = attention_mask_4d(batch["segments"], batch["documents"])[0, 0]
    for q in range(5, 19):
        seen = {seg[k] for k in range(19) if mask[q, k]}
        assert seen == {PROMPT, seg[q]}, q  # a response sees the prompt and itself, never another response
    assert batch["input_ids"].shape[0] == 3  # one sequence per pair: no extra row per rejected response
    plain = collate_pairs(listwise_examples(), pad_token_id=0, share_prompt=False)
    assert plain["input_ids"].shape[0] == 3 + 6  # [prompt | chosen] per pair, [prompt | rejected] per response


# -- on the tiny model ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.mark.integration
def test_packed_forward_equals_each_response_alone(model):
    """Segment attention over one padding-free row, the dense mask over packed rows, and the plain unshared
    layout all give each response the log-probs of scoring [prompt | response] on its own."""
    from unipo.models import segment_attention
    from unipo.models.forward import response_logps

    exs = listwise_examples()
    rejected = [(ex["prompt_ids"], r) for ex in exs for r in [ex["rejected_ids"], *ex.get("more_rejected_ids", [])]]
    items = {"chosen": [(ex["prompt_ids"], ex["chosen_ids"]) for ex in exs], "rejected": rejected}
    expected = {side: [naive_logps(model, p, r) for p, r in pairs] for side, pairs in items.items()}
    for layout in ("segments_one_row", "dense_packed", "dense_unshared"):
        segments = layout == "segments_one_row"
        if segments:
            assert segment_attention.enable(model)
        try:
            batch = collate_pairs(exs, 0, share_prompt=layout != "dense_unshared", packing=True, one_row=segments)
            with torch.no_grad():
                out = response_logps(model, batch, chunk_size=5)
        finally:
            model.config._attn_implementation = "sdpa"
        for side, want in expected.items():
            for row, (_, r) in enumerate(items[side]):
                torch.testing.assert_close(out.logps[side][row, :len(r)], want[row], rtol=1e-4, atol=1e-4,
                                           msg=lambda m, layout=layout: f"{layout}: {m}")


@pytest.mark.integration
def test_held_out_scoring_compares_with_the_strongest_rejected(model, tmp_path):
    """Margins against the strongest rejected response, with the live reference and with its log-probs
    precomputed into the on-disk cache (written, then read back), both against one response at a time."""
    import copy

    from unipo.eval.evaluate import pair_scores
    from unipo.training.reference import precompute_reference

    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.02 * torch.randn_like(p))

    def collate(rows):
        return collate_pairs(rows, 0, packing=True)

    def rho(prompt, response):
        with torch.no_grad():
            return float((naive_logps(model, prompt, response) - naive_logps(reference, prompt, response)).sum())

    exs = [listwise_examples()[i] for i in (0, 2)]  # K = 3 and K = 2
    want = [rho(ex["prompt_ids"], ex["chosen_ids"])
            - max(rho(ex["prompt_ids"], r) for r in [ex["rejected_ids"], *ex["more_rejected_ids"]]) for ex in exs]
    live = pair_scores(model, reference, Objective("listwise_dpo"), exs, collate, batch_size=2)
    assert live["dpo_margins"] == pytest.approx(want, abs=2e-4)
    assert live["variant_margins"] == pytest.approx([0.1 * m for m in live["dpo_margins"]], abs=1e-6)
    def precomputed():
        return precompute_reference(reference, [dict(ex) for ex in exs], collate, batch_size=2, chunk_size=4,
                                    cache_file=tmp_path / "ref.pt", device=torch.device("cpu"), progress=False)

    computed = precomputed()
    assert [len(ex["ref_more_rejected_logps"]) for ex in computed] == [2, 1]
    assert precomputed() == computed  # read back from the cache file
    # the batch carries the reference's log-probs (with reference=None the policy would serve as its own)
    scores = pair_scores(model, None, Objective("listwise_dpo"), computed, collate, batch_size=2)
    assert scores["dpo_margins"] == pytest.approx(want, abs=2e-4)


#: 8 rows with 1, 2 or 3 rejected responses (K varies within a batch)
LISTWISE_ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}",
                  "rejected": [f"{2 * i + 1} maybe", f"It is {2 * i - 1}."][: 1 + i % 2]
                  + ([f"{i} + {i}"] if i % 3 == 0 else [])} for i in range(8)]


@pytest.mark.integration
def test_two_training_steps_on_listwise_rows(tiny_model_dir, tmp_path, capsys):
    from tests.helpers import read_jsonl
    from unipo.cli import main

    data = write_jsonl(tmp_path / "lw.jsonl", LISTWISE_ROWS)
    assert main(train_args(tiny_model_dir, data, tmp_path / "dpo", "--variant", "dpo")) == 2
    err = capsys.readouterr().err
    assert "row 1 (and maybe others) has 2 rejected responses" in err and "listwise_dpo" in err, err
    assert main(train_args(tiny_model_dir, data, tmp_path / "run", "--variant", "listwise_dpo", "--set",
                           "plots=false")) == 0
    logged = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(logged) == 2 and all(math.isfinite(r["loss"]) for r in logged)
    assert "rewards/rejected_all" in logged[0]
