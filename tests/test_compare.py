"""``unipo compare`` on a tiny model: three variants, one report whose numbers agree with the runs."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.helpers import ROWS, write_jsonl
from unipo.cli import main


@pytest.mark.slow
def test_compare_three_variants(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    held = write_jsonl(tmp_path / "held.jsonl", ROWS[:6])
    out = tmp_path / "report"
    args = ["compare", "--model", str(tiny_model_dir), "--data", str(data), "--eval-data", str(held),
            "--max-steps", "2", "--variants", "dpo", "simpo", "{preset: tdpo2, beta: 0.2}", "--out", str(out),
            "--n-prompts", "3", "--n-samples", "2", "--max-new-tokens", "6"]
    assert main(args) == 0
    log = capsys.readouterr().err
    # the training pairs are prepared once for the three variants, the held-out pairs once for four evaluations
    assert log.count(f"data: {data}: 12 pairs prepared in") == 1, log
    assert log.count(f"data: {data}: 12 prepared pairs reused from the cache") == 2, log
    assert log.count(f"data: {held}: 6 pairs prepared in") == 1, log
    assert log.count(f"data: {held}: 6 prepared pairs reused from the cache") == 3, log
    report = (out / "report.md").read_text()
    rows = {r["run"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    names = ["reference", "dpo", "simpo", "tdpo2_beta=0.2"]
    assert set(rows) == set(names)
    for name in names[1:]:
        ev = json.loads((out / "runs" / name / "eval.json").read_text())["metrics"]
        for key in ("reward_accuracy", "margin", "kl", "distinct_1"):
            assert float(rows[name][key]) == pytest.approx(ev[key], rel=1e-6, abs=1e-9)
        assert name in report
    for png in ("training_curves.png", "reliability.png"):
        assert (out / png).exists(), png
    # resumes: a second call retrains nothing
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("finished earlier, not retrained") == 3
    # a trained run without its eval.json is evaluated again, not retrained
    before = (out / "runs" / "dpo" / "model.safetensors").stat().st_mtime_ns
    (out / "runs" / "dpo" / "eval.json").unlink()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "dpo: trained earlier, not retrained" in err and "dpo: evaluating" in err
    assert (out / "runs" / "dpo" / "eval.json").exists()
    assert (out / "runs" / "dpo" / "model.safetensors").stat().st_mtime_ns == before


# ---- --sweep over training keys (issue 14: MinorDPO's claim is robustness to a higher learning rate) ----

@pytest.mark.unit
def test_sweep_crosses_training_keys_into_each_runs_config(tmp_path):
    from unipo.cli.eval import parse_sweep
    from unipo.compare.pipeline import expand_sweep, run_config_for, run_name
    from unipo.training.config import TrainConfig

    base = TrainConfig.from_dict({"data": "pairs.jsonl", "learning_rate": 1e-6, "max_steps": 5})
    sweep = parse_sweep(["learning_rate=5e-7,1e-6,5e-6", "beta=0.2"])
    specs = expand_sweep(["dpo", {"preset": "minordpo", "max_steps": 7}], sweep)
    configs = {run_name(s): run_config_for(base, s, tmp_path) for s in specs}
    assert len(configs) == 6
    got = sorted((c.variant["preset"], c.learning_rate, c.max_steps, c.objective_spec().get("beta"))
                 for c in configs.values())
    assert got == sorted((p, lr, steps, 0.2) for p, steps in (("dpo", 5), ("minordpo", 7))
                         for lr in (5e-7, 1e-6, 5e-6))  # YAML's '5e-7' (a string) read as a number
    for name, cfg in configs.items():
        assert "learning_rate" not in cfg.variant and "max_steps" not in cfg.variant  # the objective's spec
        assert cfg.output_dir == str(tmp_path / "runs" / name) and cfg.resume and not cfg.plots
    assert len({c.output_dir for c in configs.values()}) == 6
    assert base.learning_rate == 1e-6 and base.variant == "dpo"  # the base is not changed


@pytest.mark.unit
@pytest.mark.parametrize("sweep,message", [
    ({"output_dir": ["a", "b"]}, "output_dir cannot be set per variant or swept"),
    ({"learning_rate": ["fast"]}, "learning_rate must be a number"),
    ({"lerning_rate": [1e-6]}, "lerning_rate"),  # neither a training key nor an objective key
])
def test_bad_sweeps_fail_before_any_training(sweep, message, tmp_path):
    from unipo.compare.config import CompareConfig
    from unipo.compare.pipeline import compare
    from unipo.errors import ConfigError
    from unipo.training.config import TrainConfig

    base = TrainConfig.from_dict({"data": "pairs.jsonl", "model": "/no/model/needed"})
    with pytest.raises(ConfigError, match=message):
        compare(CompareConfig(base=base, variants=["dpo"], out=tmp_path / "out", sweep=sweep))
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.slow
def test_sweep_of_the_learning_rate_trains_each_value(tiny_model_dir, tmp_path):
    """learning_rate=0 leaves the policy its reference (held-out margin exactly 0); 1e-2 moves it."""
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    out = tmp_path / "report"
    assert main(["compare", "--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "2",
                 "--variants", "dpo", "--sweep", "learning_rate=0,1e-2", "--out", str(out), "--n-samples", "0",
                 "--set", "progress=false"]) == 0
    rows = {r["run"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert {"dpo_learning_rate=0", "dpo_learning_rate=1e-2"} <= set(rows)
    assert float(rows["dpo_learning_rate=0"]["margin"]) == 0
    assert abs(float(rows["dpo_learning_rate=1e-2"]["margin"])) > 1e-4
    for name, lr in (("dpo_learning_rate=0", 0), ("dpo_learning_rate=1e-2", 0.01)):
        run_cfg = yaml.safe_load((out / "runs" / name / "unipo_config.yaml").read_text())
        assert run_cfg["learning_rate"] == lr


# ---- --seeds: every variant under each seed, mean ± se over seeds, paired differences (issue 22) ----

def verify_nonempty(prompt: str, response: str) -> float:
    """A user's verifier for ``--verifier tests.test_compare:verify_nonempty``: 1 for an answer with a letter."""
    return float(any(c.isalpha() for c in response))


@pytest.mark.slow
def test_compare_over_seeds_aggregates_and_pairs(tiny_model_dir, tmp_path, capsys):
    import statistics

    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    held = write_jsonl(tmp_path / "held.jsonl", ROWS[:6])
    out = tmp_path / "report"
    args = ["compare", "--model", str(tiny_model_dir), "--data", str(data), "--eval-data", str(held),
            "--max-steps", "2", "--variants", "dpo", "simpo", "--out", str(out), "--seeds", "2",
            "--n-prompts", "4", "--n-samples", "2", "--max-new-tokens", "6",
            "--verifier", "tests.test_compare:verify_nonempty", "--no-keep-models"]
    assert main(args) == 0
    for n in ("dpo", "simpo"):  # evaluated runs keep their record, not their weights
        for s in (0, 1):
            run = out / "runs" / n / f"seed-{s}"
            assert not list(run.glob("*.safetensors")) and not list(run.glob("checkpoint-*"))
            assert (run / "eval.json").exists() and (run / "unipo_config.yaml").exists()
    evals = {(n, s): json.loads((out / "runs" / n / f"seed-{s}" / "eval.json").read_text())
             for n in ("dpo", "simpo") for s in (0, 1)}
    for (n, s), ev in evals.items():  # each seed trained with its own seed; every greedy answer kept, scored
        assert yaml.safe_load((out / "runs" / n / f"seed-{s}" / "unipo_config.yaml").read_text())["seed"] == s
        items = ev["items"]
        assert len(items["greedy_answers"]) == 4
        assert items["greedy_pass"] == [verify_nonempty("", a) for a in items["greedy_answers"]]
        assert ev["metrics"]["greedy_pass_rate"] == pytest.approx(statistics.mean(items["greedy_pass"]))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {(r["run"], r["seed"]) for r in rows} == {("reference", "–"), ("dpo", "0"), ("dpo", "1"),
                                                      ("simpo", "0"), ("simpo", "1")}
    agg = json.loads((out / "metrics.json").read_text())["runs"]["simpo"]["metrics"]
    per_seed = [evals[("simpo", s)]["metrics"]["dpo_margin"] for s in (0, 1)]
    assert agg["dpo_margin"] == pytest.approx(statistics.mean(per_seed))
    assert agg["dpo_margin_se"] == pytest.approx(statistics.stdev(per_seed) / 2 ** 0.5)
    paired = json.loads((out / "paired.json").read_text())
    assert paired["baseline"] == "dpo"
    diff = paired["differences"]["simpo"]["dpo_margin"]
    cells = [a - b for s in (0, 1) for a, b in zip(evals[("simpo", s)]["pair_margins"]["dpo"],
                                                   evals[("dpo", s)]["pair_margins"]["dpo"], strict=True)]
    assert diff["mean"] == pytest.approx(statistics.mean(cells))
    assert diff["low"] <= diff["mean"] <= diff["high"] and diff["n_seeds"] == 2 and diff["n_items"] == 6
    report = (out / "report.md").read_text()
    assert "2 seeds" in report and "Paired differences from `dpo`" in report and " ± " in report
    capsys.readouterr()
    assert main(args) == 0  # resumable per (variant, seed)
    assert capsys.readouterr().err.count("finished earlier, not retrained") == 4
