"""The built-in task's generator and verifier."""

from __future__ import annotations

import pytest

from unipo.tasks.arithmetic import Problem, parse_problem, preference_rows, problems, verify

pytestmark = pytest.mark.unit


def test_verifier_requires_exact_format():
    p = Problem(7, 9)
    assert verify(p, "16") and verify(p, " 16\n")
    for reply in ("7 + 9 = 16", "16.", "The answer is 16.", "15", "16\n\nThis is", ""):
        assert not verify(p, reply), reply


def test_problems_are_distinct_and_in_range():
    probs = problems(144, seed=3)
    assert len({(p.a, p.b) for p in probs}) == 144
    assert all(1 <= p.a <= 12 and 1 <= p.b <= 12 for p in probs)
    with pytest.raises(ValueError):
        problems(145, seed=0)


def test_pairs_prefer_the_bare_correct_sum():
    probs = problems(60, seed=0)
    rows = preference_rows(probs, seed=0)
    for p, row in zip(probs, rows, strict=True):
        chosen = row["chosen"][0]["content"]
        rejected = row["rejected"][0]["content"]
        assert verify(p, chosen) and not verify(p, rejected)
        assert parse_problem(row["prompt"][0]["content"]) == p
