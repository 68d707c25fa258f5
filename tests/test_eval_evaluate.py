"""``unipo eval --verifier module:function`` and ``unipo compare --seeds``: the scorer and the flags (no model)."""

from __future__ import annotations

import pytest

from unipo.cli.eval import parse_seeds
from unipo.errors import ConfigError, UnipoError
from unipo.eval.evaluate import prompt_verifier

pytestmark = pytest.mark.unit


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


def test_a_user_verifier_scores_the_decoded_held_out_prompt():
    check = prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:contains_answer")
    assert check(0, " 2 ") == 1.0 and check(1, "2") == 0.0 and check(1, "4") == 1.0
    assert prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:half")(0, "x") == 0.5


def test_a_verifier_that_fails_gets_one_line_naming_it_and_the_prompt():
    with pytest.raises(UnipoError, match=r"broken raised KeyError on held-out prompt 1"):
        prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:broken")(1, "x")
    with pytest.raises(UnipoError, match=r"returned 7.0 on held-out prompt 0: expected a bool or a number in"):
        prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:out_of_range")(0, "x")
    with pytest.raises(ConfigError, match="expected module:function"):
        prompt_verifier(_Tok(), PAIRS, None, "no_colon")
    with pytest.raises(ConfigError, match="cannot import it"):
        prompt_verifier(_Tok(), PAIRS, None, "tests.test_eval_evaluate:missing")


def test_the_built_in_task_scores_one_or_zero():
    pairs = [{"prompt_ids": [ord(c) for c in "What is 2 + 3? Reply with only the number."]}]
    check = prompt_verifier(_Tok(), pairs, "arithmetic")
    assert check(0, "5") == 1.0 and check(0, "2 + 3 = 5") == 0.0
    assert prompt_verifier(_Tok(), pairs, None) is None


@pytest.mark.parametrize(("given", "seeds"), [([], None), (["3"], [0, 1, 2]), (["1", "7", "42"], [1, 7, 42])])
def test_seeds_are_a_count_or_a_list(given, seeds):
    assert parse_seeds(given) == seeds


@pytest.mark.parametrize("given", [["0"], ["a"], ["1", "1"], ["3", "-1"]])
def test_bad_seeds_are_refused(given):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(given)
