"""The TRL drop-in (unipo.integrations.trl): TRL's DPOTrainer, data pipeline and DPOConfig with a unipo loss.

Ground truth: unipo's own preference step (``unipo.training.step.preference_step``, packed segment-attention
forward, a different code path from TRL's padded two-row forward with its fused LM head) on the same token ids,
and for plain DPO TRL's own loss (``DPOTrainer.compute_loss`` with ``loss_type="sigmoid"``).
"""

from __future__ import annotations

import importlib
import re
import sys

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[test]' installs it)")

from tests.helpers import ROWS  # noqa: E402
from unipo.errors import ConfigError  # noqa: E402

#: variants checked against unipo's own trainer: sequence-level (dpo, ipo), reference-free with mean
#: aggregation and a margin (simpo), token-weighted (bmc: per-token weights from the difference masks) and a
#: composition of parts no preset has (simpo's score with BMC weights and the JS link)
VARIANTS = ["dpo", "simpo", "ipo", "bmc", {"preset": "simpo", "weights": "bmc", "link": "js"}]


def _config(tmp_path, **kw):
    from trl import DPOConfig

    # bf16=False: TRL's config turns bf16 on where the machine has it, and accelerate then wraps the reference
    # model's forward in bf16 autocast; the comparison is of the losses, in full precision
    return DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=4,
                     disable_tqdm=True, bf16=False, **kw)


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    """(policy directory, reference directory): the tiny model, and a copy with seeded noise on every weight, so
    that policy and reference differ (rewards, margins and losses are not all at their starting values)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    policy_dir = tmp_path_factory.mktemp("policy")
    model.save_pretrained(policy_dir)
    return policy_dir, tiny_model_dir


def _load(path):
    from transformers import AutoModelForCausalLM

    # float64 weights: the two forwards then agree to ~1e-7 (TRL's fused LM head computes its log-softmax in float32)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)


@pytest.fixture(scope="module")
def setup(models, tiny_model_dir, tmp_path_factory):
    """A UnipoDPOTrainer on the 12 arithmetic pairs (TRL's own dataset preparation), and one batch of 4 pairs."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from unipo.integrations.trl import UnipoDPOTrainer

    policy_dir, ref_dir = models
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = UnipoDPOTrainer(model=_load(policy_dir), ref_model=_load(ref_dir),
                              args=_config(tmp_path_factory.mktemp("trl")), train_dataset=Dataset.from_list(ROWS),
                              processing_class=tok, variant="dpo")
    trainer.model.train()  # as in trainer.train() (the tiny model has no dropout): metrics are logged as "train"
    rows = [trainer.train_dataset[i] for i in (0, 3, 5, 10)]
    return trainer, rows, trainer.data_collator(rows)


@pytest.fixture(scope="module")
def unipo_models(models):
    """unipo's side: the same policy and reference, loaded once (the steps below take no optimizer step)."""
    from unipo.training.reference import Reference

    return _load(models[0]), Reference("copy", _load(models[1]))


def _unipo_step(unipo_models, tokenizer, rows, variant):
    """unipo's own preference step on the same token ids (BMC's masks as ``unipo train`` computes them)."""
    from unipo.data.bmc_align import StopTokens, diff_masks
    from unipo.objective import Objective
    from unipo.training.collate import collate_for
    from unipo.training.step import preference_step

    policy, reference = unipo_models
    objective = Objective(variant)
    examples = []
    for r in rows:
        ex = {k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
        if "diff_mask" in objective.requirements.inputs:  # unipo train's defaults (TrainConfig.bmc_*)
            ex["chosen_diff_mask"], ex["rejected_diff_mask"] = diff_masks(
                r["chosen_ids"], r["rejected_ids"], stopword_ids=StopTokens(tokenizer), alignment="levenshtein")
        examples.append(ex)
    return preference_step(policy, reference, collate_for(policy, tokenizer.pad_token_id)(examples), objective)


@pytest.mark.integration
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v if isinstance(v, str) else "simpo+bmc+js")
def test_loss_equals_unipos_own_trainer(setup, unipo_models, variant):
    """Equal to float32 rounding (TRL's fused LM head returns float32 log-probs; the models are float64)."""
    from unipo.integrations.trl import build_objective

    trainer, rows, batch = setup
    trainer.objective = build_objective(variant, trainer.args)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        ours = _unipo_step(unipo_models, trainer.processing_class, rows, variant)
    assert abs(float(ours.metrics["rewards/margins"])) > 1e-3, "policy and reference differ"
    assert float(loss) == pytest.approx(float(ours.loss), rel=2e-6)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for key in ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert logged[key] == pytest.approx(float(ours.metrics[key]), rel=1e-6, abs=1e-5), key


@pytest.mark.integration
def test_dpo_loss_and_gradient_equal_trls_and_unipos(setup, unipo_models):
    """The drop-in's DPO loss equals TRL's own sigmoid loss on the same batch, and its gradient unipo's."""
    from trl import DPOTrainer

    from unipo.integrations.trl import build_objective

    trainer, rows, batch = setup
    trainer.objective = build_objective("dpo", trainer.args)
    with torch.no_grad():
        trl_loss = DPOTrainer.compute_loss(trainer, trainer.model, batch)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grad = trainer.model.model.embed_tokens.weight.grad.clone()
    trainer.model.zero_grad()
    assert float(loss) == pytest.approx(float(trl_loss), rel=2e-6)
    policy = unipo_models[0]
    policy.zero_grad()
    _unipo_step(unipo_models, trainer.processing_class, rows, "dpo").loss.backward()
    torch.testing.assert_close(grad.double(), policy.model.embed_tokens.weight.grad, rtol=1e-4, atol=1e-7)
    policy.zero_grad()


@pytest.mark.integration
@pytest.mark.parametrize("variant", ["dpo", "ipo", {"preset": "dpo", "aggregation": "mean", "link": "js"}],
                         ids=["dpo", "ipo", "dpo+mean+js"])
def test_precomputed_reference_sums_give_the_same_loss(setup, variant):
    """With precompute_ref_log_probs, TRL keeps one summed reference log-prob per response (its own
    compute_ref_log_probs); spread over the tokens it gives the loss of the per-token reference."""
    from unipo.integrations.trl import build_objective

    trainer, _, batch = setup
    trainer.objective = build_objective(variant, trainer.args)
    with torch.no_grad():
        live = trainer.compute_loss(trainer.model, batch)
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
        trainer.precompute_ref_logps = True
        try:
            precomputed = trainer.compute_loss(trainer.model, {**batch, "ref_chosen_logps": ref_chosen,
                                                               "ref_rejected_logps": ref_rejected})
        finally:
            trainer.precompute_ref_logps = False
    assert float(precomputed) == pytest.approx(float(live), rel=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("variant, missing", [
    ("tdpo2", "per-position KL over the vocabulary"),
    ("tisdpo", "the per-token input 'weights'"),
    ("tisdpo_nokl", "the per-token input 'weights' (token weights"),
    ("sparsepo", "the token signal sparsepo_masks"),
    ("learned_prior", "the per-token input 'prior_offsets'"),
    ("uni_dpo", "the per-response input 'score' (the response's score from the data"),
    ("tpo", "a third, gold response per pair (gold_nll_weight = 1: TPO's NLL term)"),
    ("tpo_l", "a third, gold response per pair"),
])
def test_variants_whose_inputs_trl_cannot_give_are_refused(tmp_path, variant, missing):
    from unipo.integrations.trl import build_objective

    with pytest.raises(ConfigError, match="TRL's DPOTrainer gives per-token log-probs") as err:
        build_objective(variant, _config(tmp_path))
    assert missing in str(err.value) and f"unipo train --variant {variant}" in str(err.value)
    assert "\n" not in str(err.value)  # one line


@pytest.mark.unit
def test_trl_loss_options_and_beta(tmp_path):
    from unipo.integrations.trl import build_objective

    with pytest.raises(ConfigError, match=r"loss_type=\['ipo'\].*variant=\{'preset': 'ipo'\}"):
        build_objective("dpo", _config(tmp_path, loss_type="ipo"))
    with pytest.raises(ConfigError, match="precompute_ref_log_probs=True keeps one summed"):
        build_objective("bmc", _config(tmp_path, precompute_ref_log_probs=True))
    # a sequence-level variant is served by precomputed sums
    assert build_objective("dpo", _config(tmp_path, precompute_ref_log_probs=True)).config.name == "dpo"
    # DPOConfig.beta, when changed from TRL's default, is the objective's beta unless the objective gives one
    assert build_objective("dpo", _config(tmp_path, beta=0.5)).params["beta"] == 0.5
    assert build_objective("simpo", _config(tmp_path)).params["beta"] != 0.1  # TRL's default is not forced on it
    with pytest.raises(ConfigError, match="give beta in one place"):
        build_objective({"preset": "dpo", "beta": 0.2}, _config(tmp_path, beta=0.5))


@pytest.mark.unit
def test_beta_follows_the_one_rule_of_unipo_train(tmp_path):
    """One β rule for the drop-in and TrainConfig (issue 24): given once → used; two different explicit values →
    refused in one line naming both; the same value twice → fine. An Objective passed in carries an explicit β."""
    from unipo.integrations.trl import build_objective
    from unipo.objective import Objective
    from unipo.training.config import TrainConfig

    # given once: the variant's, or DPOConfig's over the preset's default (simpo's 2.0)
    assert build_objective({"preset": "simpo", "beta": 3.0}, _config(tmp_path)).params["beta"] == 3.0
    assert build_objective("simpo", _config(tmp_path, beta=0.5)).params["beta"] == 0.5
    assert TrainConfig.from_dict({"variant": {"preset": "simpo", "beta": 3.0}}).variant_spec()["beta"] == 3.0
    assert TrainConfig.from_dict({"variant": "simpo", "beta": 0.5}).variant_spec()["beta"] == 0.5
    # the same value twice
    assert build_objective({"preset": "dpo", "beta": 0.5}, _config(tmp_path, beta=0.5)).params["beta"] == 0.5
    assert TrainConfig.from_dict({"variant": {"preset": "dpo", "beta": 0.5}, "beta": 0.5}).variant_spec()["beta"] == 0.5
    # two different values: refused by both, with the same words
    with pytest.raises(ConfigError, match=r"^config: beta=0.2 but the variant sets beta=2.0: give beta in one place"):
        TrainConfig.from_dict({"variant": {"preset": "simpo", "beta": 2.0}, "beta": 0.2})
    with pytest.raises(ConfigError, match=r"^DPOConfig.beta=0.5 but the variant sets beta=0.2: give beta in one place"):
        build_objective(Objective("dpo", beta=0.2), _config(tmp_path, beta=0.5))


@pytest.mark.unit
def test_the_trainer_takes_variant_and_its_former_name_objective(tmp_path):
    """``variant=`` is the keyword (as unipo train's --variant); ``objective=`` is still accepted; both: refused."""
    from unipo.integrations.trl import UnipoDPOTrainer

    with pytest.raises(ConfigError, match="variant= .*objective=.*not both"):
        UnipoDPOTrainer(variant="dpo", objective="ipo", args=_config(tmp_path))
    for keyword in ("variant", "objective"):  # refused on the variant itself, before TRL builds anything
        with pytest.raises(ConfigError, match="unknown variant 'nope'"):
            UnipoDPOTrainer(**{keyword: "nope"}, args=_config(tmp_path))


@pytest.mark.unit
def test_left_align_moves_the_masked_values_to_the_front():
    from unipo.integrations.trl import left_align

    values = torch.tensor([[9.0, 1.0, 2.0, 9.0], [9.0, 9.0, 9.0, 3.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 1]])
    out, out_mask = left_align(values, mask)
    assert out[out_mask].tolist() == [1.0, 2.0, 3.0]
    assert out_mask.tolist() == [[True, True], [True, False]]


@pytest.mark.unit
def test_without_trl_the_integration_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # what `import trl` meets where TRL is not installed
    monkeypatch.delitem(sys.modules, "unipo.integrations.trl", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'unipo\[trl\]'"):
        importlib.import_module("unipo.integrations.trl")
    monkeypatch.delitem(sys.modules, "unipo.integrations.trl", raising=False)


@pytest.mark.unit
def test_a_trl_below_the_floor_is_refused_at_import(monkeypatch):
    """TRL_FLOOR is the first version the drop-in ran on (docs/trl.md, "Which TRL"): an older TRL (its version
    monkeypatched) is refused when the module is imported, in one line naming both versions and the way out."""
    from unipo.integrations.trl import TRL_FLOOR, check_trl_version

    assert TRL_FLOOR == "1.16"
    for older in ("1.0.0", "1.14.2", "1.15.0", "0.29.1"):
        with pytest.raises(ImportError, match=rf"needs trl>=1\.16, but trl {re.escape(older)} is installed") as err:
            check_trl_version(older)
        assert "\n" not in str(err.value) and "pip install -U 'trl>=1.16'" in str(err.value)
    for ok in ("1.16.0", "1.16.1", "1.17.0", "2.0.0"):
        check_trl_version(ok)
    monkeypatch.setattr(trl, "__version__", "1.15.0")
    monkeypatch.delitem(sys.modules, "unipo.integrations.trl", raising=False)
    with pytest.raises(ImportError, match=r"needs trl>=1\.16, but trl 1\.15\.0 is installed"):
        importlib.import_module("unipo.integrations.trl")
    monkeypatch.delitem(sys.modules, "unipo.integrations.trl", raising=False)


@pytest.mark.unit
def test_the_extras_name_the_floor_the_drop_in_checks():
    """pyproject's `trl`, `test` and `bench` extras ask pip for the floor the module enforces."""
    from pathlib import Path

    import tomllib

    from unipo.integrations.trl import TRL_FLOOR

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for name in ("trl", "test", "bench"):
        assert f"trl>={TRL_FLOOR}" in extras[name], name


@pytest.mark.integration
def test_ld_dpo_with_precomputed_sums_is_refused_and_its_live_loss_is_trls(setup, models, tiny_model_dir, tmp_path):
    """TRL's own ``DPOTrainer(ld_alpha=0.5, precompute_ref_log_probs=True)`` scales the reference's excess tokens
    before summing; the drop-in receives plain sums (its TRL options stay at their defaults) and spreading them
    evenly over the tokens gives another loss. So the drop-in refuses ld_dpo (and any part that declares
    ``token_reference``) under precomputed sums, and with a live reference its loss is TRL's."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from unipo.integrations.trl import build_objective

    # first (building a DPOConfig resets accelerate's state, which the trainers below then set up again)
    for variant, part in (("ld_dpo", "weights=ld"), ("sampo", "weights=sampo")):
        with pytest.raises(ConfigError, match=rf"weights the reference's tokens unequally \({part}\).*"
                                              rf"precompute_ref_log_probs=False"):
            build_objective(variant, _config(tmp_path, precompute_ref_log_probs=True))
    for variant in ("dpo", "hdpo", "simpo", "alpha_dpo"):  # sums and means of the reference serve these
        build_objective(variant, _config(tmp_path, precompute_ref_log_probs=True))
    rows = [ROWS[i] for i in (0, 3, 5, 10)]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trl_trainer = DPOTrainer(model=_load(models[0]), ref_model=_load(models[1]), processing_class=tok,
                             args=_config(tmp_path, ld_alpha=0.5, precompute_ref_log_probs=True),
                             train_dataset=Dataset.from_list(rows))
    trl_trainer.model.train()
    batch = trl_trainer.data_collator([trl_trainer.train_dataset[i] for i in range(len(rows))])
    assert "ref_chosen_logps" in batch
    live_batch = {k: v for k, v in batch.items() if not k.startswith("ref_")}
    trainer = setup[0]
    with torch.no_grad():
        trl_loss = trl_trainer.compute_loss(trl_trainer.model, batch)
        trainer.objective = build_objective("ld_dpo", trainer.args)  # ld_alpha 0.5, β 0.1: TRL's
        live = trainer.compute_loss(trainer.model, live_batch)
        plain_sums = trainer.compute_ref_log_probs(trainer.ref_model, live_batch)  # what the drop-in would get
        trainer.precompute_ref_logps = True
        try:
            spread = trainer.compute_loss(trainer.model, {**live_batch, "ref_chosen_logps": plain_sums[0],
                                                          "ref_rejected_logps": plain_sums[1]})
        finally:
            trainer.precompute_ref_logps = False
    lens = batch["completion_mask"].sum(-1).chunk(2)
    assert bool((lens[0] != lens[1]).all())  # every pair has an excess to scale
    assert float(live) == pytest.approx(float(trl_loss), rel=2e-6)
    assert abs(float(spread) - float(trl_loss)) > 1e-4  # the even spread is wrong: hence the refusal


@pytest.mark.integration
def test_mpo_through_the_drop_in_equals_trls_mpo(setup):
    """The drop-in with objective="mpo" on TRL's batch equals TRL's own loss with loss_type=["sigmoid", "bco_pair",
    "sft"], loss_weights=[0.8, 0.2, 1.0] (TRL's documented MPO), and logs each mixed loss."""
    from trl import DPOTrainer

    from unipo.integrations.trl import build_objective

    trainer, _, batch = setup
    trainer.objective = build_objective("mpo", trainer.args)
    types, weights = trainer.loss_types, trainer.loss_weights
    trainer.loss_types, trainer.loss_weights = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]
    try:
        with torch.no_grad():
            trl_loss = DPOTrainer.compute_loss(trainer, trainer.model, batch)
    finally:
        trainer.loss_types, trainer.loss_weights = types, weights
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    assert float(loss) == pytest.approx(float(trl_loss), rel=2e-6)
    assert {"mixture/sigmoid", "mixture/bco_pair", "nll"} <= set(trainer._metrics["train"])


@pytest.mark.integration
def test_stateful_parts_move_only_in_training(setup):
    """TRL's evaluation (model in eval mode) leaves the objective's state alone: SamPO's batch count advances on
    training batches only, so evaluation does not shift the training draws."""
    from unipo.integrations.trl import build_objective

    trainer, _, batch = setup
    trainer.objective = build_objective("sampo", trainer.args)
    try:
        with torch.no_grad():
            trainer.model.eval()
            trainer.compute_loss(trainer.model, batch)
            assert trainer.objective.state_dict() == {"weights": {"steps": 0.0}}
            trainer.model.train()
            trainer.compute_loss(trainer.model, batch)
            assert trainer.objective.state_dict() == {"weights": {"steps": 1.0}}
    finally:
        trainer.model.train()
