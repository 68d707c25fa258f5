"""unipo.objective.inputs: the one table of the objective's inputs (issue 24), and everything that derives from it.

Ground truth: the lists each consumer had written out by hand before issue 24 (literals here), the attributes of the
producers' classes, and a copy of the package with one entry added to the table (nothing else edited).
"""

from __future__ import annotations

import dataclasses
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import unipo
from unipo.objective.inputs import (
    INPUTS,
    KEYWORDS,
    PAIR_INPUTS,
    RESPONSE_INPUTS,
    SIDE_INPUTS,
    TOKEN_INPUTS,
    input_keywords,
)
from unipo.objective.sides import ObjectiveInputs, Side

pytestmark = pytest.mark.unit

#: the per-token inputs as Side declared them field by field before the table
BEFORE = ("ref_logps", "weights", "kl", "kl_weights", "diff_mask", "prior_offsets", "log_sum_sq_probs",
          "eps_plus_logps", "eps_minus_logps")
#: the per-response inputs (one value per response, ``[B]``) added by issue 25 as table entries: Uni-DPO's scores
RESPONSE = ("score",)


def test_side_and_objective_inputs_have_one_field_per_entry():
    assert tuple(TOKEN_INPUTS) == BEFORE and tuple(RESPONSE_INPUTS) == RESPONSE
    names = [f.name for f in dataclasses.fields(Side)]
    assert names == ["name", "logps", "mask", *BEFORE, *RESPONSE, "partner_mask", "pair_ids"]
    # gold: TPO's third response, a whole Side (its own log-probs and mask), not an input of the chosen / rejected
    assert [f.name for f in dataclasses.fields(ObjectiveInputs)] == ["chosen", "rejected", "pair_weights",
                                                                     "rejected_pair", "pair_ids", "gold"]
    assert Side.__dataclass_params__.frozen and ObjectiveInputs.__dataclass_params__.frozen
    assert set(PAIR_INPUTS) | set(TOKEN_INPUTS) | set(RESPONSE_INPUTS) == {s.name for s in INPUTS}


def test_compute_loss_keywords_come_from_the_table():
    assert KEYWORDS["ref_logps"] == "ref_{}_logps" and KEYWORDS["eps_minus_logps"] == "{}_eps_minus_logps"
    assert KEYWORDS["score"] == "{}_score"
    keywords = set(input_keywords())
    assert {"ref_chosen_logps", "rejected_log_sum_sq_probs", "chosen_kl_weights", "pair_weights", "rejected_pair",
            "pair_ids", "chosen_score", "rejected_score"} <= keywords
    assert len(keywords) == 2 * (len(TOKEN_INPUTS) + len(RESPONSE_INPUTS)) + len(PAIR_INPUTS)
    params = inspect.signature(unipo.compute_loss).parameters
    assert keywords <= set(params)
    assert all(params[k].default is None for k in keywords)


def test_every_consumer_reads_the_table():
    from unipo.integrations.trl import SUPPLIED_INPUTS  # noqa: F401  (TRL installed in the dev environment)
    from unipo.layout import RESPONSE_KEYS, SIDE_COLUMNS, TOKEN_COLUMNS, SideLayout
    from unipo.models.signals import SIGNAL_ONLY_INPUTS
    from unipo.objective.registry import SIDE_INPUTS as REGISTRY_SIDE_INPUTS

    # what each had written by hand before the table
    assert SIDE_COLUMNS == {"ref_logps": "ref_{}_logps", "weights": "{}_weights", "diff_mask": "{}_diff_mask",
                            "score": "{}_score"}
    assert set(TOKEN_COLUMNS) == {"ref_chosen_logps", "ref_rejected_logps", "chosen_weights", "rejected_weights",
                                  "chosen_diff_mask", "rejected_diff_mask"}
    assert RESPONSE_KEYS == ("chosen_score", "rejected_score")  # [B] each, not padded per token
    assert [f.name for f in dataclasses.fields(SideLayout)] == ["src", "labels", "mask", *SIDE_COLUMNS]
    assert SUPPLIED_INPUTS == {"ref_logps", "diff_mask"}
    assert SIGNAL_ONLY_INPUTS == ("kl_weights", "prior_offsets")
    assert REGISTRY_SIDE_INPUTS is SIDE_INPUTS and set(SIDE_INPUTS) == set(BEFORE) | set(RESPONSE)


def test_each_producer_names_an_attribute_that_exists():
    from unipo.layout import PackedBatch, SideLayout
    from unipo.models.forward import ForwardOutput, ReferenceOutputs

    holders = {"reference": ReferenceOutputs, "policy": ForwardOutput, "data": SideLayout, "batch": PackedBatch}
    for spec in INPUTS:
        assert spec.producers, f"{spec.name} has no producer"
        for producer in spec.producers:
            if producer.source == "signal":
                continue  # a token signal's outputs are keyed by the input's name
            fields = {f.name for f in dataclasses.fields(holders[producer.source])}
            assert producer.attribute in fields, f"{spec.name}: {producer.source}.{producer.attribute}"


def test_the_step_hands_every_produced_input_to_the_objective():
    """objective_inputs on stub producers: each input comes from the producer its entry names."""
    import torch

    from unipo.layout import Sides
    from unipo.models.forward import ForwardOutput, ReferenceOutputs
    from unipo.models.signals import SignalOutput
    from unipo.training.step import objective_inputs

    def sides(value):
        return Sides(torch.full((2, 3), value), torch.full((2, 3), value + 0.5))

    layout = dict(src=torch.zeros(2, 3, dtype=torch.long), labels=torch.zeros(2, 3, dtype=torch.long),
                  mask=torch.ones(2, 3, dtype=torch.bool), weights=torch.full((2, 3), 4.0),
                  diff_mask=torch.full((2, 3), 5.0), score=torch.tensor([12.0, 13.0]))
    from unipo.layout import PackedBatch, SideLayout

    batch = PackedBatch(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long),
                        torch.zeros(1, 4, dtype=torch.int8), SideLayout(**layout), SideLayout(**layout),
                        index=torch.tensor([7, 8]), pair_weights=torch.tensor([1.0, 2.0]))
    policy = ForwardOutput(sides(-1.0), None, sides(6.0), None, log_sum_sq=sides(7.0), eps_plus=sides(8.0),
                           eps_minus=sides(9.0))
    signal = SignalOutput(inputs={"chosen": {"kl_weights": torch.full((2, 3), 10.0),
                                             "weights": torch.full((2, 3), 11.0)}}, metrics={})
    out = objective_inputs(batch, ReferenceOutputs(logps=sides(3.0)), policy, signal)
    expected = {"ref_logps": 3.0, "kl": 6.0, "log_sum_sq_probs": 7.0, "eps_plus_logps": 8.0, "eps_minus_logps": 9.0,
                "diff_mask": 5.0, "kl_weights": 10.0, "weights": 11.0}  # the signal's weights over the data's
    for name, value in expected.items():
        assert float(getattr(out.chosen, name)[0, 0]) == value, name
    assert float(out.rejected.weights[0, 0]) == 4.0 and out.rejected.kl_weights is None  # no signal output there
    assert float(out.rejected.ref_logps[0, 0]) == 3.5 and out.chosen.prior_offsets is None
    assert out.pair_ids.tolist() == [7, 8] and out.pair_weights.tolist() == [1.0, 2.0] and out.rejected_pair is None
    assert out.chosen.score.tolist() == [12.0, 13.0] and out.rejected.score.tolist() == [12.0, 13.0]  # the data's


NEW_ENTRY = '''
INPUTS = INPUTS + (_token("novelty", "{}_novelty", "a new per-token input (test)", Producer("policy", "novelty")),)
'''


def test_a_new_input_is_one_entry(tmp_path):
    """A copy of the package with ONE entry appended to the table (and nothing else): a part that declares the new
    input reads it from compute_loss's keyword, Side has its field, the keyword is in the signature, a missing one is
    named (training also needs the producer the entry names: here none, so no training step runs)."""
    src = Path(unipo.__file__).parent
    shutil.copytree(src, tmp_path / "unipo", ignore=shutil.ignore_patterns("__pycache__"))
    table = tmp_path / "unipo" / "objective" / "inputs.py"
    text = table.read_text(encoding="utf-8")
    marker = "#: the per-token inputs (fields of"
    table.write_text(text.replace(marker, NEW_ENTRY + marker, 1), encoding="utf-8")
    script = '''
import dataclasses, inspect, torch, unipo
from unipo.objective.registry import Needs, register
from unipo.objective.sides import Side
from unipo.errors import UnipoError

@register("weights", "novel", needs=Needs(inputs=("novelty",)))
def novel(side, params):
    return side.novelty, None

assert "novelty" in [f.name for f in dataclasses.fields(Side)]
assert "chosen_novelty" in inspect.signature(unipo.compute_loss).parameters
m = torch.ones(1, 2, dtype=torch.bool)
kw = dict(policy_chosen_logps=torch.tensor([[-1.0, -2.0]]), policy_rejected_logps=torch.tensor([[-3.0, -1.0]]),
          chosen_mask=m, rejected_mask=m, ref_chosen_logps=torch.zeros(1, 2), ref_rejected_logps=torch.zeros(1, 2))
out = unipo.compute_loss({"preset": "dpo", "weights": "novel"}, chosen_novelty=torch.tensor([[2.0, 0.0]]),
                         rejected_novelty=torch.tensor([[1.0, 1.0]]), **kw)
# s_w = 2·(−1) = −2, s_l = −3 − 1 = −4: −log σ(0.1·2)
assert abs(float(out.loss) - float(torch.nn.functional.softplus(torch.tensor(-0.2)))) < 1e-6
try:
    unipo.compute_loss({"preset": "dpo", "weights": "novel"}, **kw)
    raise SystemExit("a missing input was accepted")
except UnipoError as err:
    assert "weights=novel needs the input 'chosen_novelty' (a new per-token input (test))" in str(err), err
print("ok")
'''
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
