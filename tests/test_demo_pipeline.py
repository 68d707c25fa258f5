"""``unipo demo``'s per-variant settings and its before/after table (no model: training and evaluation are
replaced by stand-ins that record what they were asked to do)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from unipo.demo import pipeline
from unipo.demo.pipeline import IMPROVEMENT, VARIANT_SETTINGS, before_after_table
from unipo.errors import ConfigError

pytestmark = pytest.mark.unit


def _run(greedy: float, lr: float | None = None) -> dict:
    return {"metrics": {"greedy_pass_rate": greedy, "pass_rate": 0.5, "reward_accuracy": 0.9, "margin": 1.0},
            **({"settings": {"learning_rate": lr}} if lr else {})}


def test_the_table_says_whether_each_variant_improved():
    runs = {"reference": _run(0.03125), "dpo": _run(0.28125, 5e-5), "simpo": _run(0.5625, 1e-5),
            "ipo": _run(0.09375, 1e-5), "cdpo": _run(0.03125 + IMPROVEMENT, 1e-5)}
    rows = {line.split(" | ")[0].strip("| "): line for line in before_after_table(runs).splitlines()[2:]}
    assert rows["dpo"].endswith("| yes (+0.250) |") and "| 5e-05 |" in rows["dpo"]
    assert rows["simpo"].endswith("| yes (+0.531) |") and "| 1e-05 |" in rows["simpo"]
    assert rows["ipo"].endswith("| no (+0.062) |")  # 2 of 32 problems more: not counted as an improvement
    assert rows["cdpo"].endswith("| yes (+0.100) |")  # the threshold itself counts
    assert rows["reference"].endswith("| – |")
    assert "improved? (greedy, ≥ +0.1)" in before_after_table(runs).splitlines()[0]


def test_each_variant_trains_with_its_own_settings(tmp_path, monkeypatch):
    """run_demo hands VARIANT_SETTINGS to compare, which trains each variant with its own settings, and the
    table reads back what each run was trained with."""
    import unipo.eval.evaluate as evaluate
    import unipo.eval.report as report
    import unipo.training.train as train_module

    trained = {}

    def fake_train(cfg, callbacks=()):
        trained[cfg.variant] = cfg
        run = tmp_path / "demo" / "runs" / cfg.variant
        run.mkdir(parents=True)
        (run / "unipo_config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "objective": {"preset": cfg.variant}}))
        (run / "metrics.jsonl").write_text(json.dumps({"loss": 0.5, "step": 1}) + "\n")

    def fake_evaluate(run_dir, data, options=None, judge=None):
        (run_dir / "eval.json").write_text(json.dumps({"metrics": {"greedy_pass_rate": 0.5}}))

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(evaluate, "evaluate_run", fake_evaluate)
    monkeypatch.setattr(report, "write_report", lambda out, runs, title: {"report": out / "report.md"})
    import unipo.compare.pipeline as compare_module

    real_compare = compare_module.compare  # without the starting model's evaluation (it loads the model)
    monkeypatch.setattr(compare_module, "compare",
                        lambda cfg: real_compare(dataclasses.replace(cfg, include_reference=False)))
    runs = pipeline.run_demo(str(tmp_path / "demo"), variants=["dpo", "simpo", "ipo"], progress=False)
    for name in ("dpo", "simpo", "ipo"):
        expected = VARIANT_SETTINGS.get(name, {}).get("learning_rate", pipeline.DEFAULTS["learning_rate"])
        assert trained[name].learning_rate == expected, name
        assert runs[name]["settings"]["learning_rate"] == expected
    assert trained["dpo"].learning_rate != trained["simpo"].learning_rate
    for key, expected in VARIANT_SETTINGS["dpo"].items():  # β and the number of steps reach training too
        assert getattr(trained["dpo"], key) == expected, key
    assert trained["simpo"].max_steps == pipeline.DEFAULTS["steps"] and trained["simpo"].beta is None
    assert runs["dpo"]["settings"]["steps"] == VARIANT_SETTINGS["dpo"]["max_steps"]


def test_unknown_training_overrides_are_refused(tmp_path):
    from unipo.compare.config import CompareConfig
    from unipo.compare.pipeline import compare
    from unipo.training.config import TrainConfig

    with pytest.raises(ConfigError, match=r"unknown training settings \['learnig_rate'\]"):
        compare(CompareConfig(base=TrainConfig(data="x.jsonl"), variants=["dpo"], out=tmp_path,
                              train_overrides={"dpo": {"learnig_rate": 1e-4}}))


def test_over_seeds_the_table_shows_mean_and_se_and_every_seed_must_improve():
    runs = {"reference": _run(0.03125),
            "dpo": {"metrics": {"greedy_pass_rate": 0.3, "greedy_pass_rate_se": 0.1, "pass_rate": 0.2},
                    "per_seed": {0: {"greedy_pass_rate": 0.5}, 1: {"greedy_pass_rate": 0.1},
                                 2: {"greedy_pass_rate": 0.3}}},
            "simpo": {"metrics": {"greedy_pass_rate": 0.5, "greedy_pass_rate_se": 0.02},
                      "per_seed": {0: {"greedy_pass_rate": 0.5}, 1: {"greedy_pass_rate": 0.46875}}}}
    rows = {line.split(" | ")[0].strip("| "): line for line in before_after_table(runs).splitlines()[2:]}
    assert "| 0.300 ± 0.100 |" in rows["dpo"]
    # the worst seed gained 0.1 − 0.03125 = 0.069 < 0.1: not every seed improved
    assert rows["dpo"].endswith("| no (every seed ≥ +0.069) |")
    assert rows["simpo"].endswith("| yes (every seed ≥ +0.438) |")
