"""Training with a gold response per pair (TPO, Saeidi et al. 2024, arXiv 2405.16681) on the tiny model: the data's
gold column is tokenised with the shared prompt like chosen and truncated alongside, travels through the prepared table
into the same packed row as its pair ([prompt | y_w | y_l | y_gold]), and the real step computes TRL's TPO loss on
what the model computes (per-response unpadded forwards as ground truth); `unipo train --variant tpo` trains, and a row
without the gold response is refused naming the column."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import naive_logps, train_args, train_error_line, write_jsonl

pytestmark = pytest.mark.integration

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}, or so I think",
         "reference": f"It is {2 * i}, since {i} + {i} = {2 * i}."} for i in range(4)]


def test_the_gold_column_is_tokenised_like_chosen_and_truncated_alongside():
    """gold_ids are the ids the same row would give with the gold text as its chosen response; a max_length that
    cuts the gold response cuts it like the others (each keeps its start); without gold_column nothing is read."""
    from unipo.data.table import PairsTable
    from unipo.data.tokenize import PrepOptions, prepare_pairs
    from unipo.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    pairs, _ = prepare_pairs(ROWS, tok, gold_column="reference")
    as_chosen, _ = prepare_pairs([{**r, "chosen": r["reference"]} for r in ROWS], tok)
    assert [p.gold_ids for p in pairs] == [p.chosen_ids for p in as_chosen]
    assert [p.chosen_ids for p in pairs] == [p.chosen_ids for p in prepare_pairs(ROWS, tok)[0]]
    assert all(p.gold_ids is None for p in prepare_pairs(ROWS, tok)[0])
    table = PairsTable.from_pairs(pairs, PrepOptions(gold_column="reference"))
    assert [r["gold_ids"] for r in table] == [p.gold_ids for p in pairs]
    room = len(pairs[0].prompt_ids) + 3
    cut, summary = prepare_pairs(ROWS[:1], tok, gold_column="reference", max_length=room, max_prompt_length=None)
    assert cut[0].gold_ids == pairs[0].gold_ids[:3] and summary.truncated_response == 1
    assert len(pairs[0].gold_ids) > 3


def test_conversational_and_implicit_prompt_rows_carry_the_gold_response():
    """Conversational rows (gold as messages, or as text: one assistant message) and rows without a prompt column
    whose gold response repeats the prompt (TRL's implicit-prompt ``reference``) give the ids of the gold response
    as the pair's chosen response."""
    from unipo.data.tokenize import prepare_pairs
    from unipo.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    user = [{"role": "user", "content": "What is 2 + 2?"}]

    def say(text):
        return [{"role": "assistant", "content": text}]

    chat = {"prompt": user, "chosen": say("4"), "rejected": say("5"), "reference": say("It is 4.")}
    for gold in (say("It is 4."), "It is 4."):
        pairs, _ = prepare_pairs([{**chat, "reference": gold}], tok, gold_column="reference")
        assert pairs[0].gold_ids == prepare_pairs([{**chat, "chosen": say("It is 4.")}], tok)[0][0].chosen_ids
    implicit = {"chosen": user + say("4"), "rejected": user + say("5"), "reference": user + say("It is 4.")}
    pairs, _ = prepare_pairs([implicit], tok, gold_column="reference")
    assert pairs[0].gold_ids == prepare_pairs([{**chat, "chosen": say("It is 4.")}], tok)[0][0].chosen_ids
    text = {"chosen": "Q: 2 + 2? A: 4", "rejected": "Q: 2 + 2? A: 5", "reference": "Q: 2 + 2? A: it is 4"}
    pairs, _ = prepare_pairs([text], tok, gold_column="reference")
    decoded = tok.decode(pairs[0].gold_ids, skip_special_tokens=True)
    assert decoded.strip() == "it is 4" and tok.decode(pairs[0].prompt_ids, skip_special_tokens=True).startswith("Q:")


def test_a_row_without_its_gold_response_is_invalid_naming_the_column():
    from unipo.data.tokenize import prepare_pairs
    from unipo.errors import DataError
    from unipo.testing import make_tiny_tokenizer

    rows = [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "reference"}]
    with pytest.raises(DataError, match="row 2.*reference.*missing the gold response"):
        prepare_pairs(rows, make_tiny_tokenizer(), gold_column="reference")
    pairs, summary = prepare_pairs(rows, make_tiny_tokenizer(), gold_column="reference", on_invalid="skip")
    assert len(pairs) == 1 and summary.dropped == {"invalid": 1}


@pytest.mark.parametrize(("share_prompt", "packing", "one_row"),
                         [(True, False, False), (True, True, False), (True, True, True), (False, False, False)])
def test_tpo_step_is_trls_loss_on_the_model(tiny_model_dir, share_prompt, packing, one_row):
    """preference_step with tpo on the packed batch (gold in the pair's row, a branch over the shared prompt) equals
    TRL's TPO loss on log-probs computed one unpadded response at a time: −log σ(β(Σa_w − Σa_l)) averaged over pairs
    plus the mean NLL over every gold token of the batch; the gold response gets gradient."""
    from unipo.data.batching import collate_pairs
    from unipo.data.tokenize import prepare_pairs
    from unipo.layout import GOLD, PackedBatch
    from unipo.models.loading import load_model
    from unipo.objective import Objective
    from unipo.testing import make_tiny_tokenizer
    from unipo.training.reference import Reference
    from unipo.training.step import preference_step

    tok = make_tiny_tokenizer()
    policy = load_model(str(tiny_model_dir), trainable=False)
    pairs, _ = prepare_pairs(ROWS, tok, gold_column="reference")
    batch = PackedBatch.from_dict(collate_pairs([p.to_dict() for p in pairs], tok.pad_token_id,
                                                share_prompt=share_prompt, packing=packing, one_row=one_row))
    assert batch.gold is not None and int((batch.segments == GOLD).sum()) == sum(len(p.gold_ids) for p in pairs)
    assert PackedBatch.from_dict(batch.to_dict()).gold.labels.equal(batch.gold.labels)
    out = preference_step(policy, Reference("none"), batch, Objective("tpo").train(False))
    with torch.no_grad():
        chosen = torch.stack([naive_logps(policy, p.prompt_ids, p.chosen_ids).double().sum() for p in pairs])
        rejected = torch.stack([naive_logps(policy, p.prompt_ids, p.rejected_ids).double().sum() for p in pairs])
        gold = torch.cat([naive_logps(policy, p.prompt_ids, p.gold_ids).double() for p in pairs])
    expected = -F.logsigmoid(0.01 * (chosen - rejected)).mean() - gold.mean()
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.metrics["gold_nll"].double(), -gold.mean(), rtol=1e-4, atol=1e-5)


def test_gold_beside_several_rejected_responses(tiny_model_dir):
    """A listwise row ([prompt | y_w | y_l1 | y_l2 | y_gold]) with the gold term: the gold NLL is the mean over every
    gold token of per-response unpadded forwards, and the listwise loss is unchanged by the gold branch."""
    from unipo.data.batching import collate_pairs
    from unipo.data.tokenize import prepare_pairs
    from unipo.layout import PackedBatch
    from unipo.models.loading import load_model
    from unipo.objective import Objective
    from unipo.testing import make_tiny_tokenizer
    from unipo.training.reference import Reference
    from unipo.training.step import preference_step

    tok = make_tiny_tokenizer()
    policy = load_model(str(tiny_model_dir), trainable=False)
    rows = [{**r, "rejected": [r["rejected"], f"maybe {i}"]} for i, r in enumerate(ROWS)]
    pairs, _ = prepare_pairs(rows, tok, gold_column="reference")
    variant = {"preset": "listwise_dpo", "prior": "none", "gold_nll_weight": 1.0, "nll_token_mean": True}
    batch = PackedBatch.from_dict(collate_pairs([p.to_dict() for p in pairs], tok.pad_token_id))
    out = preference_step(policy, Reference("none"), batch, Objective(variant).train(False))
    plain = PackedBatch.from_dict(collate_pairs([{**p.to_dict(), "gold_ids": None} for p in pairs],
                                                tok.pad_token_id))
    without = preference_step(policy, Reference("none"), plain, Objective({**variant, "gold_nll_weight": 0.0}))
    with torch.no_grad():
        gold = torch.cat([naive_logps(policy, p.prompt_ids, p.gold_ids).double() for p in pairs])
    assert batch.rejected_pair is not None and plain.gold is None
    torch.testing.assert_close(out.metrics["gold_nll"].double(), -gold.mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss.double(), without.loss.double() - gold.mean(), rtol=1e-4, atol=1e-5)


def test_a_variant_without_gold_never_reads_the_column(tiny_model_dir, tmp_path):
    """dpo on rows that carry a reference column: the plan asks for no gold column, the batch carries none."""
    from unipo.training.config import TrainConfig
    from unipo.training.plan import plan_training

    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert plan_training(TrainConfig(data=str(data), variant="dpo")).gold_column is None
    assert plan_training(TrainConfig(data=str(data), variant="tpo")).gold_column == "reference"
    assert plan_training(TrainConfig(data=str(data), variant="tpo_l", gold_column="gold")).gold_column == "gold"


def test_unipo_train_tpo_reads_the_gold_column(tiny_model_dir, tmp_path, capsys):
    from unipo.cli import main

    data = write_jsonl(tmp_path / "tpo.jsonl", ROWS * 3)
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--variant", "tpo", "--set", "plots=false")) == 0
    steps = [h for h in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in h]
    assert len(steps) == 2 and all(h["gold_nll"] > 0 for h in steps)
    capsys.readouterr()
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{**{k: v for k, v in r.items() if k != "reference"},
                                                       "gold": r["reference"]} for r in ROWS * 3])
    assert main(train_args(tiny_model_dir, renamed, tmp_path / "run2", "--variant", "tpo")) == 2
    line = train_error_line(capsys)
    assert "'reference'" in line and "gold_column" in line
    assert main(train_args(tiny_model_dir, renamed, tmp_path / "run3", "--variant", "tpo_l", "--set",
                           "gold_column=gold", "--set", "plots=false")) == 0
