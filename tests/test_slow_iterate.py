"""``unipo iterate`` on SmolLM2-135M-Instruct (built-in, cached offline): verifier-labelled rounds on the
arithmetic task raise the greedy pass rate; the pairs are what the verifier says. Slow tier."""

from __future__ import annotations

import json

import pytest

from tests.helpers import read_jsonl
from unipo.tasks.arithmetic import parse_problem, verify

pytestmark = pytest.mark.slow


def test_arithmetic_rounds_raise_the_greedy_pass_rate(tmp_path):
    from unipo.cli import main

    out = tmp_path / "run"
    assert main(["iterate", "--model", "smollm2-135m-instruct", "--task", "arithmetic", "--label", "verifier",
                 "--rounds", "2", "--prompts-per-round", "48", "--heldout", "24", "--eval-samples", "2",
                 "--out", str(out), "--no-progress"]) == 0
    start = json.loads((out / "round-0" / "eval.json").read_text())
    last = json.loads((out / "round-2" / "eval.json").read_text())
    for t in (1, 2):
        samples = {(s["prompt_index"], s["sample"]): s for s in read_jsonl(out / f"round-{t}" / "samples.jsonl")}
        # every label is the task's checker applied to the sampled text, written out again here
        assert all(s["score"] == float(verify(parse_problem(s["prompt"]), s["response"])) for s in samples.values())
        for p in read_jsonl(out / f"round-{t}" / "pairs.jsonl"):
            assert samples[(p["prompt_index"], p["chosen_sample"])]["score"] == 1.0
            assert samples[(p["prompt_index"], p["rejected_sample"])]["score"] == 0.0
    assert last["greedy_reward"] >= start["greedy_reward"] + 0.25, (start, last)
    assert 0 < last["kl"] < 50
