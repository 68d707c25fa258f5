"""Per-pair weights from the data (issue 14): a numeric column multiplies each pair's loss, the batch loss
is the weighted mean Σ w_i ℓ_i / Σ w_i; bad values are refused naming the row and the field."""

from __future__ import annotations

import math

import pytest
import torch

import unipo
from unipo.data.batching import collate_pairs
from unipo.data.tokenize import prepare_pairs
from unipo.errors import DataError, UnipoError
from unipo.testing import make_tiny_tokenizer

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1} maybe", "w": w}
        for i, w in enumerate([1.0, 0.0, 2.5, 3])]


def _logps(seed=0, b=4, t=5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    x = {k: -torch.rand(b, t, generator=g, dtype=torch.float64) for k in ("aw", "al", "rw", "rl")}
    x["aw"].requires_grad_(True)
    return x, mask


@pytest.mark.unit
def test_the_loss_is_the_weighted_mean_of_the_pairs_losses():
    x, m = _logps()
    w = torch.tensor([1.0, 0.0, 2.5, 3.0], dtype=torch.float64)
    kw = dict(policy_chosen_logps=x["aw"], policy_rejected_logps=x["al"], chosen_mask=m, rejected_mask=m,
              ref_chosen_logps=x["rw"], ref_rejected_logps=x["rl"])
    plain = unipo.compute_loss("dpo", **kw)
    weighted = unipo.compute_loss("dpo", pair_weights=w, **kw)
    torch.testing.assert_close(weighted.losses, plain.losses)  # per-pair losses unchanged
    expected = sum(float(wi) * float(li) for wi, li in zip(w, plain.losses, strict=True)) / float(w.sum())
    assert abs(float(weighted.loss) - expected) < 1e-12
    (g,) = torch.autograd.grad(weighted.loss, [x["aw"]])
    assert torch.all(g[1] == 0) and g[0].abs().sum() > 0  # a weight-0 pair contributes nothing
    ones = unipo.compute_loss("dpo", pair_weights=torch.ones(4, dtype=torch.float64), **kw)
    assert abs(float(ones.loss) - float(plain.loss)) < 1e-12
    zeros = unipo.compute_loss("dpo", pair_weights=torch.zeros(4, dtype=torch.float64), **kw)
    assert float(zeros.loss) == 0.0
    with pytest.raises(UnipoError, match="finite"):
        unipo.compute_loss("dpo", pair_weights=torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64), **kw)


@pytest.mark.unit
def test_the_weight_column_is_read_validated_and_collated():
    tok = make_tiny_tokenizer()
    pairs, _ = prepare_pairs(ROWS, tok, pair_weight_column="w")
    assert [p.pair_weight for p in pairs] == [1.0, 0.0, 2.5, 3.0]
    batch = collate_pairs([p.to_dict() for p in pairs], pad_token_id=0)
    assert batch["pair_weight"].tolist() == [1.0, 0.0, 2.5, 3.0]
    assert "pair_weight" not in collate_pairs([p.to_dict() for p in prepare_pairs(ROWS, tok)[0]], pad_token_id=0)
    for bad, shown in ((-1, "-1"), (math.nan, "nan"), ("2", "'2'"), (True, "True"), (None, "missing")):
        rows = [dict(ROWS[0]), {**ROWS[1], "w": bad}]
        if bad is None:
            del rows[1]["w"]
        with pytest.raises(DataError, match=rf"row 2, field 'w': the pair weight must be a finite number >= 0, "
                                            rf"got {shown}"):
            prepare_pairs(rows, tok, pair_weight_column="w")
        kept, summary = prepare_pairs(rows, tok, pair_weight_column="w", on_invalid="skip")
        assert len(kept) == 1 and summary.dropped == {"invalid": 1}


@pytest.mark.integration
def test_a_training_step_weights_its_pairs(tiny_model_dir):
    from unipo.models.loading import load_model
    from unipo.objective import Objective
    from unipo.training.collate import collate_for
    from unipo.training.reference import Reference
    from unipo.training.step import preference_step

    tok = make_tiny_tokenizer()
    policy = load_model(str(tiny_model_dir), trainable=False)
    reference = Reference("copy", load_model(str(tiny_model_dir), trainable=False))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference, so the pairs' losses differ
        for p in policy.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    rows = [p.to_dict() for p in prepare_pairs(ROWS, tok, pair_weight_column="w")[0]]
    with torch.no_grad():
        out = preference_step(policy, reference, collate_for(policy, tok.pad_token_id)(rows), Objective("dpo"))
    w = torch.tensor([1.0, 0.0, 2.5, 3.0])
    assert float(out.losses.max() - out.losses.min()) > 1e-3
    assert out.pair_weights.tolist() == w.tolist()
    assert abs(float(out.loss) - float((w * out.losses).sum() / w.sum())) < 1e-6


@pytest.mark.integration
def test_unipo_train_with_a_weight_column(tiny_model_dir, tmp_path, capsys):
    import json

    from unipo.cli import main

    data = tmp_path / "weighted.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out),
                 "--max-steps", "1", "--per-device-batch-size", "4", "--weight-column", "w", "--no-progress",
                 "--set", "plots=false"]) == 0
    step = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(step["loss"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({**r, "w": -1}) + "\n" for r in ROWS))
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(bad), "--output-dir", str(tmp_path / "b"),
                 "--weight-column", "w", "--no-progress"]) == 2
    assert "row 1, field 'w': the pair weight must be a finite number >= 0" in capsys.readouterr().err
