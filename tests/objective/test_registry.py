"""unipo.objective.registry and the contracts around it (issue 24): a pair loss returns PairLossOut, a pair loss's
traits are its own record, presets have one home, requirements are computed once per objective."""

from __future__ import annotations

import copy

import pytest
import torch

import unipo
from tests.objective.helpers import batch
from unipo.errors import UnipoError
from unipo.objective import Objective, registry
from unipo.objective.presets import PRESETS, PresetSpec, _collect
from unipo.objective.registry import PairLossTraits, get_part, register
from unipo.objective.sides import PairLossOut

pytestmark = pytest.mark.unit


@pytest.fixture()
def scratch_registry(monkeypatch):
    """Parts registered by a test go to a copy of the registry (the real one is left as it was)."""
    monkeypatch.setattr(registry, "_REGISTRY", copy.copy({k: dict(v) for k, v in registry._REGISTRY.items()}))
    monkeypatch.setattr(registry, "PART_PRESETS", list(registry.PART_PRESETS))


def test_every_pair_loss_returns_pair_loss_out():
    d = batch()
    for name in ("sigmoid", "ipo", "exo_pair", "beta_dpo", "plackett_luce", "repo"):
        obj = Objective({"preset": "dpo", "pair_loss": name})
        terms = []
        fn = obj.fns["pair_loss"]
        obj.fns["pair_loss"] = lambda t, p, fn=fn, terms=terms: terms.append(fn(t, p)) or terms[-1]
        obj(**d)
        assert isinstance(terms[0], PairLossOut) and terms[0].losses.shape == (5,), name


def test_beta_dpo_selects_pairs_through_pair_loss_out():
    """In training β-DPO keeps (1 − ρ) of the pairs: ``selected`` 0/1 becomes the batch's pair weights."""
    out = unipo.compute_loss("beta_dpo", **batch())
    assert out.pair_weights is not None and sorted(out.pair_weights.tolist()) == [0.0, 1.0, 1.0, 1.0, 1.0]
    kept = out.pair_weights.bool()
    torch.testing.assert_close(out.loss, out.losses[kept].mean())
    held_out = Objective("beta_dpo").train(False)(**batch())
    assert held_out.pair_weights is None  # in evaluation every pair is kept: no selection


def test_a_pair_loss_returning_a_bare_tensor_is_named(scratch_registry):
    @register("pair_loss", "bare_sigmoid")
    def bare(t, params):
        return torch.nn.functional.softplus(-t.logits)

    with pytest.raises(UnipoError, match=r"pair_loss=bare_sigmoid returned Tensor; a pair loss returns "
                                         r"PairLossOut\(losses, selected=None\)"):
        unipo.compute_loss({"preset": "dpo", "pair_loss": "bare_sigmoid"}, **batch())


def test_pair_loss_traits_are_their_own_record(scratch_registry):
    orpo, mixture, pl = get_part("pair_loss", "orpo"), get_part("pair_loss", "mixture"), get_part("pair_loss",
                                                                                                    "plackett_luce")
    assert orpo.traits == PairLossTraits(uses_logit=False, uses_scores=False, uses_prior=False)
    assert mixture.traits.mixes == "pair_loss_weights" and mixture.mixes == "pair_loss_weights"
    assert pl.listwise and pl.traits.listwise
    assert get_part("kl", "tdpo").traits == PairLossTraits()  # every other kind has the defaults
    with pytest.raises(TypeError, match="kl=odd: uses_logit, uses_scores, uses_prior, listwise and mixes describe "
                                        "pair losses only"):
        register("kl", "odd", uses_logit=False)


def test_presets_have_one_home():
    # a preset that changes one part and gives no formula shows the part's formula: exo_pair's is written once
    assert PRESETS["exo_pair"].formula == get_part("pair_loss", "exo_pair").formula
    assert PRESETS["exo_pair"].formula == "σ(z)(log σ(z) − log(1−ε)) + σ(−z)(log σ(−z) − log ε)"
    # presets declared next to their part (beta_dpo) are in the same table, with the part implied
    assert PRESETS["beta_dpo"].parts == {"pair_loss": "beta_dpo"}
    with pytest.raises(ValueError, match="preset 'dpo' is declared twice"):
        _collect([PresetSpec("dpo", "x", "y"), PresetSpec("dpo", "x", "y")])
    with pytest.raises(ValueError, match="preset two: give its formula"):
        _collect([PresetSpec("two", "", "y", "", {"prior": "none", "aggregation": "mean"})])


def test_requirements_are_computed_once_per_objective(monkeypatch):
    objective = Objective("wpo")
    first = objective.requirements
    calls = []
    monkeypatch.setattr(registry.Part, "needs", property(lambda self: calls.append(self) or registry.Needs()),
                        raising=False)
    for _ in range(3):
        assert objective.requirements is first
        objective(**batch(), chosen_log_sum_sq_probs=-torch.ones(5, 7), rejected_log_sum_sq_probs=-torch.ones(5, 7))
    assert not calls  # no part's Needs read again after the first time
    assert "log_sum_sq_probs" in first.inputs
