"""A run directory is a unit of work (issue 13): one writer, no clobbering, no double training, preflight and
clear file-system errors, and a reference that starts exactly at the policy under mixed precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unipo.cli import main

pytestmark = pytest.mark.integration

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1} maybe"} for i in range(8)]


@pytest.fixture()
def data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def run(model, data, out, *extra) -> int:
    return main(["train", "--model", str(model), "--data", str(data), "--output-dir", str(out), "--max-steps", "1",
                 "--per-device-batch-size", "4", "--learning-rate", "1e-3", "--no-progress", "--set", "plots=false",
                 *extra])


def first_step(out: Path) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("variant,reference", [("dpo", "copy"), ("dpo", "precomputed"), ("tdpo2", "copy")])
def test_bf16_rewards_start_at_exactly_zero(tiny_model_dir, data, tmp_path, variant, reference, monkeypatch):
    monkeypatch.setenv("UNIPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert run(tiny_model_dir, data, out, "--variant", variant, "--precision", "bf16",
               "--reference", reference) == 0
    step = first_step(out)
    assert step["rewards/chosen"] == 0.0 and step["rewards/rejected"] == 0.0, step
    if variant == "tdpo2":  # the KL's own rounding (Σq·log q − Σq·log p), not an offset of the reference
        assert abs(step["kl/chosen"]) < 1e-6 and abs(step["kl/rejected"]) < 1e-6


def test_a_bfloat16_reference_copy_stays_available_and_is_offset(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    assert run(tiny_model_dir, data, out, "--precision", "bf16", "--set", "ref_dtype=bfloat16") == 0
    step = first_step(out)
    assert step["rewards/chosen"] != 0.0 or step["rewards/rejected"] != 0.0  # the documented bias
