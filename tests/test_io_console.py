"""The package's one logger (``unipo.io.console``) and ``--no-progress`` reaching transformers' own progress bars
("Loading weights", "Writing model shards": ``transformers.utils.logging.tqdm``) (issue 24)."""

from __future__ import annotations

import json

import pytest

from unipo.io.console import log, logger, progress_bars


@pytest.mark.unit
def test_log_lines_carry_the_commands_prefix_on_stderr(capsys):
    log("saved")
    logger("unipo iterate")("round 1")
    out = capsys.readouterr()
    assert out.out == "" and out.err == "unipo: saved\nunipo iterate: round 1\n"


@pytest.mark.unit
def test_progress_bars_off_silences_transformers_bars_and_restores_them(capsys):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    with progress_bars(False):
        assert not hf_logging.is_progress_bar_enabled()
        list(hf_logging.tqdm(range(3), desc="Loading weights"))
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the setting before the block
    list(hf_logging.tqdm(range(3), desc="Writing model shards"))
    assert "Writing model shards" in capsys.readouterr().err  # the same bar prints when progress is on
    with progress_bars(True):  # on: left as it is (a user's own switch-off stays)
        hf_logging.disable_progress_bar()
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()


@pytest.mark.integration
@pytest.mark.parametrize("progress", [False, True])
def test_train_with_no_progress_runs_with_transformers_bars_off(tiny_model_dir, tmp_path, monkeypatch, progress):
    from transformers.utils import logging as hf_logging

    import unipo.training.train as train_module
    from unipo.training.config import TrainConfig
    from unipo.training.train import TrainResult

    seen = []

    def fake_run(plan, model_path, callbacks):
        seen.append(hf_logging.is_progress_bar_enabled())
        return TrainResult(plan.run, {})

    monkeypatch.setattr(train_module, "_run", fake_run)
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    hf_logging.enable_progress_bar()
    result = train_module.train(TrainConfig(model=str(tiny_model_dir), data=str(data), progress=progress,
                                            output_dir=str(tmp_path / "run")))
    assert seen == [progress] and result.run.path == tmp_path / "run"
    assert hf_logging.is_progress_bar_enabled()
