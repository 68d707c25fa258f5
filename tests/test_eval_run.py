"""``evaluate_run`` on a tiny trained run: the reference cache gives the numbers the live reference gives."""

from __future__ import annotations

import json

import pytest

from tests.helpers import train_args
from unipo.cli import main
from unipo.eval.config import EvalOptions
from unipo.eval.evaluate import evaluate_run

pytestmark = pytest.mark.integration


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
