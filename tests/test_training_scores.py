"""Training with the responses' scores (``score_columns``, Uni-DPO) on the tiny model: the score columns flow from a
file through the prepared table and the batch to the objective's per-response input ``score``, and the real step
computes Uni-DPO's released loss on what the models compute (per-pair unpadded forwards as ground truth)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import naive_logps, train_args, write_jsonl

pytestmark = pytest.mark.integration

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}, or so I think",
         "score_chosen": 4.0 + i, "score_rejected": 1.5 * i} for i in range(4)]


def test_score_columns_reach_the_batch_through_the_prepared_table():
    from unipo.data.table import PairsTable
    from unipo.data.tokenize import PrepOptions, prepare_pairs
    from unipo.layout import PackedBatch
    from unipo.testing import make_tiny_tokenizer
    from unipo.training.collate import collate_pairs

    tok = make_tiny_tokenizer()
    opts = PrepOptions(score_columns=("score_chosen", "score_rejected"))
    pairs, _ = prepare_pairs(ROWS, tok, opts)
    assert [(p.chosen_score, p.rejected_score) for p in pairs] == [(r["score_chosen"], r["score_rejected"])
                                                                   for r in ROWS]
    table = PairsTable.from_pairs(pairs, opts)
    batch = PackedBatch.from_dict(collate_pairs([table[i] for i in range(len(table))], pad_token_id=tok.pad_token_id))
    expected = torch.tensor([[r["score_chosen"], r["score_rejected"]] for r in ROWS], dtype=torch.float64)

    def scores(b):  # [B, 2]: each side's per-response data column ``score`` ([B] each)
        return torch.stack([b.chosen.score, b.rejected.score], dim=1)

    assert torch.equal(scores(batch), expected)
    assert torch.equal(scores(PackedBatch.from_dict(batch.to_dict())), expected)
    # without score columns nothing is carried
    plain = PackedBatch.from_dict(collate_pairs([p.to_dict() for p in prepare_pairs(ROWS, tok)[0]],
                                                pad_token_id=tok.pad_token_id))
    assert plain.chosen.score is None and plain.rejected.score is None


def test_a_row_without_its_score_is_invalid_naming_the_column():
    from unipo.data.tokenize import prepare_pairs
    from unipo.errors import DataError
    from unipo.testing import make_tiny_tokenizer

    rows = [dict(ROWS[0]), {k: v for k, v in ROWS[1].items() if k != "score_rejected"}]
    with pytest.raises(DataError, match="score_rejected.*finite number, got missing"):
        prepare_pairs(rows, make_tiny_tokenizer(), score_columns=("score_chosen", "score_rejected"))
    pairs, summary = prepare_pairs(rows, make_tiny_tokenizer(), score_columns=("score_chosen", "score_rejected"),
                                   on_invalid="skip")
    assert len(pairs) == 1 and summary.to_dict()["dropped"]["invalid"] == 1


def test_uni_dpo_step_is_the_released_loss_on_both_models(tiny_model_dir):
    """preference_step with the uni_dpo preset on a policy moved from its reference equals the released
    ``uni_dpo_loss`` on mean token log-probs computed one unpadded pair at a time."""
    from unipo.data.tokenize import prepare_pairs
    from unipo.layout import PackedBatch
    from unipo.models.loading import load_model
    from unipo.objective import Objective
    from unipo.testing import make_tiny_tokenizer
    from unipo.training.collate import collate_for
    from unipo.training.reference import Reference
    from unipo.training.step import preference_step

    tok = make_tiny_tokenizer()
    policy, ref_model = (load_model(str(tiny_model_dir), trainable=False) for _ in range(2))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    pairs, _ = prepare_pairs(ROWS, tok, score_columns=("score_chosen", "score_rejected"))
    batch = PackedBatch.from_dict(collate_for(policy, tok.pad_token_id)([p.to_dict() for p in pairs]))
    beta, eta, tau_ref, gamma, lam, tau_good = 2.0, 0.7, 0.8, 3.0, 0.5, 5.0
    objective = Objective("uni_dpo", uni_nll_lambda=lam, uni_tau_good=tau_good).train(False)
    with torch.no_grad():
        out = preference_step(policy, Reference("copy", ref_model), batch, objective)

        def mean_logp(model, p, response):
            return naive_logps(model, p.prompt_ids, response).double().mean()

        pcl = torch.stack([mean_logp(policy, p, p.chosen_ids) for p in pairs])
        prl = torch.stack([mean_logp(policy, p, p.rejected_ids) for p in pairs])
        rcl = torch.stack([mean_logp(ref_model, p, p.chosen_ids) for p in pairs])
        rrl = torch.stack([mean_logp(ref_model, p, p.rejected_ids) for p in pairs])
    s_w = torch.tensor([r["score_chosen"] for r in ROWS], dtype=torch.float64)
    s_l = torch.tensor([r["score_rejected"] for r in ROWS], dtype=torch.float64)
    w_qual = torch.sigmoid(eta * (s_w - s_l))
    w_perf = (1 - torch.sigmoid(beta * (pcl - prl) - tau_ref)) ** gamma
    nll = torch.where(s_w >= tau_good, torch.clamp(torch.sign(rcl - pcl), min=0), 0)
    expected = -w_qual * w_perf * F.logsigmoid(beta * ((pcl - prl) - (rcl - rrl))) - lam * nll * pcl
    assert bool((nll > 0).any()), "the batch must exercise the calibrated NLL"
    torch.testing.assert_close(out.losses.double(), expected, rtol=1e-4, atol=1e-5)


def test_unipo_train_uni_dpo_reads_the_score_columns(tiny_model_dir, tmp_path, capsys):
    from unipo.cli import main

    renamed = [{**{k: v for k, v in r.items() if not k.startswith("score")}, "sw": r["score_chosen"],
                "sl": r["score_rejected"]} for r in ROWS * 3]
    data = write_jsonl(tmp_path / "scored.jsonl", renamed)
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--variant", "uni_dpo", "--score-columns", "sw", "sl",
                           "--set", "plots=false")) == 0
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 2 and 0 < steps[0]["pair_weighting/mean"] < 1
    # the default columns (UltraFeedback's names) are absent from this file: a clear error naming them
    capsys.readouterr()
    assert main(train_args(tiny_model_dir, data, tmp_path / "run2", "--variant", "uni_dpo")) == 2
    assert "score_chosen" in capsys.readouterr().err
