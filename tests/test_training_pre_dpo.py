"""Pre-DPO (Pan et al., arXiv 2504.15843) as a recipe on ``ref_model``: a second run from the same initial model with
the first run's policy as its reference, on the tiny model (unpadded forwards of the saved model as ground truth)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import naive_logps, train_args, write_jsonl

pytestmark = pytest.mark.integration


def test_pre_dpo_second_run_uses_the_first_runs_policy_as_its_reference(tiny_model_dir, tmp_path):
    """Pre-DPO (Pan et al., arXiv 2504.15843): train DPO (or SimPO) from the initial model, then train DPO again
    from the SAME initial model with the first run's policy as the reference (``ref_model``). The second run's
    reference log-probs are the first run's policy's (unpadded forwards of the saved model), not the initial
    model's, for a live reference (``copy``) and a precomputed one."""
    import yaml

    from tests.helpers import ROWS
    from unipo.cli import main
    from unipo.models.loading import load_model, load_tokenizer
    from unipo.training.config import TrainConfig
    from unipo.training.plan import plan_training
    from unipo.training.train import load_data, load_models

    data = write_jsonl(tmp_path / "data.jsonl", ROWS)
    guide = tmp_path / "guide"
    assert main(train_args(tiny_model_dir, data, guide, "--variant", "simpo", "--set", "plots=false")) == 0
    second = tmp_path / "pre_dpo"
    assert main(train_args(tiny_model_dir, data, second, "--variant", "dpo", "--ref-model", str(guide),
                           "--set", "plots=false")) == 0
    run_cfg = yaml.safe_load((second / "unipo_config.yaml").read_text())
    assert run_cfg["ref_model_path"] == str(guide) and run_cfg["model_path"] == str(tiny_model_dir)

    guide_model = load_model(str(guide), trainable=False)
    initial = load_model(str(tiny_model_dir), trainable=False)
    tok = load_tokenizer(str(tiny_model_dir))
    for mode in ("copy", "precomputed"):
        cfg = TrainConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / mode),
                          variant="dpo", ref_model=str(guide), reference=mode, limit=3)
        plan = plan_training(cfg)
        run_data = load_data(plan, tok)
        models = load_models(plan, str(tiny_model_dir), tok, run_data)
        for row in list(run_data.train)[:3]:
            with torch.no_grad():
                want = naive_logps(guide_model, row["prompt_ids"], row["chosen_ids"])
                if mode == "copy":
                    got = naive_logps(models.ref_model, row["prompt_ids"], row["chosen_ids"])
                else:
                    got = torch.tensor(row["ref_chosen_logps"])
                start = naive_logps(initial, row["prompt_ids"], row["chosen_ids"])
            torch.testing.assert_close(got.float(), want.float(), rtol=1e-4, atol=1e-4)
            assert not torch.allclose(start, want, atol=1e-3), "the guide must differ from the initial model"
