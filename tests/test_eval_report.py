"""The comparison report: numbers in report.md / metrics.csv / metrics.json agree with the input."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest

from unipo.eval import plots
from unipo.eval.metrics import pairwise_calibration
from unipo.eval.report import format_value, write_report

pytestmark = pytest.mark.unit


def make_runs() -> dict[str, dict]:
    """Five synthetic runs with distinct metrics, histories and calibration bins."""
    rng = np.random.default_rng(0)
    specs = {
        "dpo": ({"variant": "dpo", "beta": 0.1}, 1.0, 0.71, 4.2),
        "ipo": ({"variant": "ipo", "beta": 0.1}, 0.4, 0.69, 2.0),
        "fdpo-js": ({"variant": "fdpo", "beta": 0.1, "divergence": "js"}, 0.8, 0.705, 3.1),
        "fdpo-fkl": ({"variant": "fdpo", "beta": 0.03, "divergence": "forward_kl"}, 0.3, 0.66, 1.2),
        "simpo|g": ({"variant": "simpo", "beta": 2.0, "gamma_beta_ratio": 0.25}, 1.5, 0.72, 4.25),
    }
    runs = {}
    for k, (name, (config, scale, acc, kl)) in enumerate(specs.items()):
        margins = rng.normal(scale, 1.5 * scale, size=400)
        ece, bins = pairwise_calibration(margins)
        history = [{"step": s, "loss": 0.69 * math.exp(-s / (40 + 10 * k)) + 0.05 * rng.random(),
                    "rewards/accuracies": min(1.0, 0.5 + s / 300 + 0.05 * rng.random()),
                    "rewards/margins": scale * s / 100} for s in range(0, 101, 5)]
        history.append({"step": 100, "eval/loss": 0.5})  # a record without the plotted keys
        metrics = {"reward_accuracy": acc, "margin": float(margins.mean()), "ece": ece, "kl": kl,
                   "kl_k3": kl * 0.95, "distinct_1": 0.4 + 0.05 * k, "distinct_2": 0.8 - 0.03 * k,
                   "self_bleu": 0.2 + 0.04 * k, "entropy": 2.0 + 0.1 * k, "pass_rate": 0.5,
                   "response_length": 50.0 + k, "n_prompts": 8.0}
        if name == "ipo":
            metrics["pass_rate"] = float("nan")
        runs[name] = {"metrics": metrics, "history": history, "config": config, "calibration_bins": bins}
    return runs


def _table(md: str) -> tuple[list[str], list[list[str]]]:
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]
    return split[0], split[1:]


def test_report_numbers_agree_with_input(tmp_path):
    runs = make_runs()
    files = write_report(tmp_path, runs)
    assert {"report", "csv", "json", "reliability", "training_curves", "reward_bars", "reward_vs_kl",
            "accuracy_vs_diversity"} <= set(files)
    for f in files.values():
        assert f.exists() and f.stat().st_size > 0
    md = files["report"].read_text()
    for k in ("reliability", "training_curves", "reward_bars", "reward_vs_kl", "accuracy_vs_diversity"):
        assert f"]({k}.png)" in md
    assert "How to read this" in md

    header, rows = _table(md)
    assert header[:3] == ["run", "variant", "parameters"]
    assert len(rows) == len(runs)
    names = list(runs)
    for name, row in zip(names, rows, strict=True):
        assert row[0].replace("\\|", "|") == name
        assert row[1] == runs[name]["config"]["variant"]
        for col, cell in zip(header[3:], row[3:], strict=True):
            v = runs[name]["metrics"][col]
            text = cell.strip("*")
            if math.isnan(v):
                assert text == "–"
            else:
                assert text == format_value(v)
                assert float(text) == pytest.approx(v, rel=1e-3)

    # Bold: the best per column with a direction, nothing in KL / length columns.
    def bold(col: str) -> list[str]:
        j = header.index(col)
        return [names[i] for i, r in enumerate(rows) if r[j].startswith("**")]

    assert bold("reward_accuracy") == ["simpo|g"]
    assert bold("ece") == [min(names, key=lambda n: runs[n]["metrics"]["ece"])]
    assert bold("self_bleu") == ["dpo"] and bold("distinct_2") == ["dpo"]
    assert bold("entropy") == ["simpo|g"]
    assert bold("kl") == [] and bold("response_length") == []
    assert sorted(bold("pass_rate")) == ["dpo", "fdpo-fkl", "fdpo-js", "simpo|g"]  # tie, NaN skipped

    with files["csv"].open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["run"] for r in csv_rows] == names
    for r in csv_rows:
        for col, v in runs[r["run"]]["metrics"].items():
            if math.isnan(v):
                assert r[col] == ""
            else:
                assert float(r[col]) == v  # full precision

    data = json.loads(files["json"].read_text())
    assert list(data["runs"]) == names
    for name in names:
        got = data["runs"][name]
        assert got["config"] == runs[name]["config"]
        for col, v in runs[name]["metrics"].items():
            assert got["metrics"][col] == (None if math.isnan(v) else v)
        assert got["calibration_bins"] == runs[name]["calibration_bins"]
    assert data["best"]["reward_accuracy"] == ["simpo|g"]


def test_report_with_sparse_runs(tmp_path):
    # Metrics only, no history / bins / generation metrics: the table and bars still come out.
    runs = {"a": {"metrics": {"reward_accuracy": 0.6, "margin": 0.1}, "config": {"variant": "dpo"}},
            "b": {"metrics": {"reward_accuracy": 0.7, "margin": -0.2}, "config": {"variant": "ipo"}}}
    files = write_report(tmp_path, runs)
    assert set(files) == {"report", "csv", "json", "reward_bars"}
    header, rows = _table(files["report"].read_text())
    assert header[3:] == ["reward_accuracy", "margin"]
    assert rows[1][3] == "**0.7**" and rows[0][4] == "**0.1**"


def test_plots_write_pngs(tmp_path):
    runs = make_runs()
    metrics = {n: r["metrics"] for n, r in runs.items()}
    one = plots.reliability_diagram(runs["dpo"]["calibration_bins"], tmp_path / "one.png")
    margin_kl = plots.reward_kl_frontier(metrics, tmp_path / "f.png", y="margin")
    bleu = plots.accuracy_diversity_scatter(metrics, tmp_path / "d.png", x="self_bleu")
    empty = plots.labelled_scatter({}, tmp_path / "e.png", "kl", "margin", title="empty")
    for p in (one, margin_kl, bleu, empty):
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scatter_labels_do_not_overlap():
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    xs = [1.0 + 0.02 * (i % 3) for i in range(8)] + [3.0]
    ys = [0.7 + 0.001 * (i // 3) for i in range(8)] + [0.6]
    labels = [f"variant-{i}" for i in range(8)] + ["far"]
    fig, ax = plt.subplots(figsize=(6.8, 5.0))
    ax.scatter(xs, ys)
    ax.set_xlim(0.5, 3.5)
    ax.set_ylim(0.57, 0.73)
    plots._place_labels(fig, ax, xs, ys, labels)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text() in labels]
    assert sorted(t.get_text() for t in texts) == sorted(labels)
    # The text's own box (an Annotation's box would include its leader line).
    boxes = [Text.get_window_extent(t, renderer) for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    plt.close(fig)


def test_a_run_keeps_its_colour_in_every_plot(tmp_path, monkeypatch):
    """The reference row has no training history; the curves must not shift the other runs' colours."""
    runs = make_runs()
    runs = {"reference": {"metrics": dict(runs["dpo"]["metrics"]), "config": {"variant": "(starting model)"}},
            **runs}
    seen: dict[str, list[dict]] = {}
    for name in ("reliability_diagram", "training_curves", "metric_bars", "reward_kl_frontier",
                 "accuracy_diversity_scatter"):
        original = getattr(plots, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            seen.setdefault(_name, []).append(dict(kwargs["colours"]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(plots, name, spy)
    write_report(tmp_path, runs)
    assert len(seen) == 5
    maps = [m for calls in seen.values() for m in calls]
    for name in runs:
        assert len({tuple(m[name]) for m in maps}) == 1, name
    assert len({tuple(c) for c in maps[0].values()}) == len(runs)  # distinct colours


def test_moving_average_by_hand():
    assert plots.moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert plots.moving_average([4.0, 0.0, 2.0], 3) == [4.0, 2.0, 2.0]
    assert plots.moving_average_window(11) == 1 and plots.moving_average_window(32) == 4


def test_standard_errors_become_plus_minus_not_columns(tmp_path):
    runs = make_runs()
    for k, r in enumerate(runs.values()):
        r["metrics"]["reward_accuracy_se"] = 0.01 * (k + 1)
    md = write_report(tmp_path, runs)["report"].read_text()
    header, rows = _table(md)
    assert "reward_accuracy" in header and "reward_accuracy_se" not in header
    col = header.index("reward_accuracy")
    assert rows[0][col].endswith("± 0.01") and rows[1][col].endswith("± 0.02")
    assert "reward_accuracy_se" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
