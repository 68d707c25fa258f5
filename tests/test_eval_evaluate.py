"""unipo.eval.evaluate: ``unipo eval --verifier module:function`` and ``unipo compare --seeds`` (the scorer and the
flags, no model); ``evaluate_run`` on a tiny trained run (the reference cache gives the numbers the live reference
gives; was tests/test_eval_run.py); held-out rows that fail validation (was tests/test_first_contact.py)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import BLANK, ROWS, WAY_OUT, train_args, write_jsonl
from unipo.cli import main
from unipo.cli.eval import parse_seeds
from unipo.errors import ConfigError, UnipoError
from unipo.eval.config import EvalOptions
from unipo.eval.evaluate import evaluate_run, prompt_verifier


class _Tok:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def contains_answer(prompt: str, response: str) -> bool:
    return response.strip() == prompt.split("=")[-1]


def half(prompt: str, response: str) -> float:
    return 0.5


def broken(prompt: str, response: str) -> float:
    raise KeyError("no such problem")


def out_of_range(prompt: str, response: str) -> float:
    return 7.0


PAIRS = [{"prompt_ids": [ord(c) for c in "1+1=2"]}, {"prompt_ids": [ord(c) for c in "2+2=4"]}]


@pytest.mark.unit
def test_a_user_verifier_scores_the_decoded_held_out_prompt():
    check = prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:contains_answer")
    assert check(0, " 2 ") == 1.0 and check(1, "2") == 0.0 and check(1, "4") == 1.0
    assert prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:half")(0, "x") == 0.5


@pytest.mark.unit
def test_a_verifier_that_fails_gets_one_line_naming_it_and_the_prompt():
    with pytest.raises(UnipoError, match=r"broken raised KeyError on held-out prompt 1"):
        prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:broken")(1, "x")
    with pytest.raises(UnipoError, match=r"returned 7.0 on held-out prompt 0: expected a bool or a number in"):
        prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:out_of_range")(0, "x")
    with pytest.raises(ConfigError, match="expected module:function"):
        prompt_verifier(_Tok(), PAIRS, None, "no_colon")
    with pytest.raises(ConfigError, match="cannot import it"):
        prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:missing")


@pytest.mark.unit
def test_the_built_in_task_scores_one_or_zero():
    pairs = [{"prompt_ids": [ord(c) for c in "What is 2 + 3? Reply with only the number."]}]
    check = prompt_verifier(_Tok(), pairs, "arithmetic")
    assert check(0, "5") == 1.0 and check(0, "2 + 3 = 5") == 0.0
    assert prompt_verifier(_Tok(), pairs, None) is None


@pytest.mark.unit
@pytest.mark.parametrize(("given", "seeds"), [([], None), (["3"], [0, 1, 2]), (["1", "7", "42"], [1, 7, 42])])
def test_seeds_are_a_count_or_a_list(given, seeds):
    assert parse_seeds(given) == seeds


@pytest.mark.unit
@pytest.mark.parametrize("given", [["0"], ["a"], ["1", "1"], ["3", "-1"]])
def test_bad_seeds_are_refused(given):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(given)


# ---- held-out rows that fail validation (issue 17, item 4; was tests/test_first_contact.py) ----

@pytest.mark.slow  # a training run and two evaluations: ~4 s on an idle 2-core machine
def test_eval_on_invalid_skip_counts_in_eval_json(tiny_model_dir, data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, run, "--max-steps", "1", "--set", "plots=false")) == 0
    held_out = write_jsonl(tmp_path / "held.jsonl", [*ROWS[:3], BLANK])
    args = ["eval", "--model", str(run), "--data", str(held_out), "--n-samples", "0", "--limit", "8"]
    assert main(args) != 0
    assert f"{WAY_OUT} eval.json (data_summary)" in capsys.readouterr().err
    assert main([*args, "--on-invalid", "skip"]) == 0
    record = json.loads((run / "eval.json").read_text())
    assert record["data_summary"]["dropped"] == {"invalid": 1} and record["metrics"]["n_pairs"] == 3


# ---- evaluate_run on a tiny trained run: the reference cache (was tests/test_eval_run.py) ----

@pytest.mark.integration
@pytest.mark.parametrize("variant", ["dpo", "tdpo2"])
def test_reference_cache_gives_the_same_scores(tiny_model_dir, data, tmp_path, monkeypatch, variant):
    monkeypatch.setenv("UNIPO_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, run, "--variant", variant, "--set", "plots=false")) == 0
    kw = {"limit": 12, "n_samples": 0, "batch_size": 5}
    live = evaluate_run(run, str(data), EvalOptions(reference_cache=False, out=str(tmp_path / "live.json"), **kw))
    cached = evaluate_run(run, str(data), EvalOptions(out=str(tmp_path / "cached.json"), **kw))
    caches = list((tmp_path / "cache" / "reflogps").glob("*.pt")) if (tmp_path / "cache").exists() else []
    assert len(caches) == (0 if variant == "tdpo2" else 1)  # KL variants need the live reference
    again = evaluate_run(run, str(data), EvalOptions(out=str(tmp_path / "again.json"), **kw))  # from the cache
    for res in (cached, again):
        for key in ("reward_accuracy", "margin", "dpo_reward_accuracy", "dpo_margin", "ece", "ece_fdpo"):
            assert res["metrics"][key] == pytest.approx(live["metrics"][key], rel=1e-4, abs=1e-6), key
    assert live["metrics"]["margin"] != 0  # the trained policy differs from its reference
    assert 0 <= live["metrics"]["ece_fdpo"] <= 1  # the f-DPO code's calibration, beside unipo's pairwise ece
    assert json.loads((tmp_path / "again.json").read_text())["metrics"]["n_pairs"] == 12
