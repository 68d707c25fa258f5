"""unipo.objective.config: resolving a variant, the names of its concepts and the one β rule (issue 24).

Ground truth: the resolved parts and parameters written out by hand, and a run configuration in the form that
``unipo train`` wrote before issue 24 (a literal, not produced by the code under test).
"""

from __future__ import annotations

import pytest
import yaml

import unipo
from unipo.errors import ConfigError
from unipo.objective import Objective, resolve
from unipo.objective.config import with_beta

pytestmark = pytest.mark.unit

#: ``unipo_config.yaml`` as unipo train wrote it before issue 24 (the TrainConfig keys abridged): the user's variant
#: under ``variant`` (with the mapping's former key ``variant:`` for ``preset:``), the resolved objective under
#: ``objective``
OLD_SAVED_CONFIG = """\
model: tiny
data: pairs.jsonl
variant: {variant: simpo, beta: 2.5}
beta: null
objective: {preset: simpo, prior: none, weights: none, aggregation: mean, link: reverse_kl, chosen_transform: none,
  rejected_transform: none, kl: none, pair_loss: sigmoid, pair_weighting: none, beta: 2.5, gamma: 0.5,
  gamma_beta_ratio: null, length_alpha: 0.0, nll_weight: 0.0, nll_token_mean: false, l1_weight: 0.0,
  prior_reg_weight: 0.0}
"""


def test_an_old_saved_run_config_reads_as_before():
    """Both of its keys still read: the saved objective resolves to itself, and the saved variant (with the former
    ``variant:`` key inside) rebuilds a TrainConfig whose variant resolves to the same objective."""
    from unipo.training.config import TrainConfig

    saved = yaml.safe_load(OLD_SAVED_CONFIG)
    objective = Objective(saved["objective"])
    assert objective.config.name == "simpo"
    assert objective.config.parts["prior"] == "none" and objective.config.parts["aggregation"] == "mean"
    assert objective.params["beta"] == 2.5 and objective.params["gamma"] == 0.5
    cfg = TrainConfig.from_dict({k: v for k, v in saved.items() if k in TrainConfig.keys()})
    assert resolve(cfg.variant_spec()) == objective.config
    assert cfg.objective_spec() == cfg.variant_spec()  # the method's former name


def test_preset_is_the_key_and_variant_its_former_spelling():
    assert resolve({"preset": "ipo"}) == resolve({"variant": "ipo"}) == resolve("ipo")
    assert resolve({"preset": "ipo"}).to_dict()["preset"] == "ipo"


@pytest.mark.parametrize("variant,beta,expected", [
    ("simpo", None, None),  # nothing given: the preset's default (resolve's)
    ("simpo", 0.5, 0.5),  # given beside the variant only
    ({"preset": "simpo", "beta": 3.0}, None, 3.0),  # given inside only
    ({"preset": "simpo", "beta": 3.0}, 3.0, 3.0),  # the same value in both places
    ({"preset": "simpo", "beta": 3}, 3.0, 3.0),  # the same number, int and float
])
def test_beta_given_once_or_twice_alike_is_used(variant, beta, expected):
    spec = with_beta(variant, beta, source="beta")
    assert spec.get("beta") == expected
    assert resolve(spec).params["beta"] == (2.0 if expected is None else expected)  # simpo's default β is 2.0


def test_two_different_betas_are_refused_in_one_line_naming_both():
    with pytest.raises(ConfigError) as err:
        with_beta({"preset": "simpo", "beta": 2.0}, 0.2, source="config: beta")
    assert str(err.value) == ("config: beta=0.2 but the variant sets beta=2.0: give beta in one place (or the same "
                              "value in both)")
    assert "\n" not in str(err.value)


def test_a_beta_inside_that_is_not_a_number_is_a_second_different_value():
    with pytest.raises(ConfigError, match="beta=0.2 but the variant sets beta=high: give beta in one place"):
        with_beta({"preset": "dpo", "beta": "high"}, 0.2, source="beta")


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'simpo'"):
        unipo.resolve("simp")


def test_unknown_key_lists_allowed():
    with pytest.raises(ConfigError, match="unknown key 'betta'.*did you mean 'beta'"):
        unipo.resolve({"preset": "dpo", "betta": 0.1})


def test_param_of_unselected_part_is_rejected():
    with pytest.raises(ConfigError, match="'bmc_delta' belongs to weights=bmc.*weights=none"):
        unipo.resolve("dpo", {"bmc_delta": 2.0})


def test_illegal_combination_rejected():
    with pytest.raises(ConfigError, match="nca_pair scores each side separately"):
        unipo.resolve({"preset": "nca_pair", "gamma": 0.5})
    with pytest.raises(ConfigError, match="either 'gamma'"):
        unipo.resolve("dpo", {"gamma": 0.5, "gamma_beta_ratio": 0.2})
    with pytest.raises(ConfigError, match="f_alpha"):
        unipo.resolve("fdpo_alpha", {"f_alpha": 1.5})
    with pytest.raises(ConfigError, match="unknown link 'jss'.*allowed link values"):
        unipo.resolve({"preset": "dpo", "link": "jss"})


def test_hyphenated_names_and_yaml_mapping():
    import yaml

    cfg = yaml.safe_load("preset: fdpo-js\nbeta: 0.3\naggregation: mean\n")
    c = unipo.resolve(cfg)
    assert c.parts["link"] == "js" and c.parts["aggregation"] == "mean" and c.params["beta"] == 0.3
