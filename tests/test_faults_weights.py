"""``unipo weights estimate`` stopped while training the second contrastive model (issue 23, item 6):
the rerun keeps the finished first model and trains only the second (docs/faults.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

import unipo.training.train as train_module
from tests.helpers import ROWS
from unipo.data.formats import normalize_row
from unipo.tisdpo import contrastive

OVERRIDES = {"max_steps": 2, "per_device_batch_size": 4}


@pytest.mark.integration
def test_a_kill_while_training_the_negative_model_keeps_the_positive(tiny_model_dir, tmp_path, monkeypatch):
    pairs = [normalize_row(r, file="rows", row_number=i + 1) for i, r in enumerate(ROWS[:8])]
    real, trained, killed = train_module.train, [], []

    def killed_on_the_second(cfg, *args, **kwargs):
        trained.append(cfg.output_dir)
        if len(trained) == 2 and not killed:  # the kill lands while π− trains: its .partial is half-written
            killed.append(cfg.output_dir)
            Path(cfg.output_dir, "checkpoint-1").mkdir(parents=True)
            raise KeyboardInterrupt
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(train_module, "train", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        contrastive.ensure_pair("dpo", str(tiny_model_dir), pairs, models_dir=tmp_path, overrides=OVERRIDES,
                                progress=False)
    (positive,) = tmp_path.glob("dpo-*/positive")
    files = sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in positive.iterdir())
    assert any(name.endswith(".safetensors") for name, _, _ in files)

    trained.clear()
    pair = contrastive.ensure_pair("dpo", str(tiny_model_dir), pairs, models_dir=tmp_path, overrides=OVERRIDES,
                                   progress=False)
    assert [d.rsplit("/", 1)[-1] for d in trained] == ["negative.partial"]  # π− alone
    assert sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in positive.iterdir()) == files
    assert pair.positive == positive and pair.negative.is_dir() and pair.trained
    assert (pair.directory / contrastive.MANIFEST).exists() and not (pair.directory / "negative.partial").exists()


@pytest.mark.unit
def test_a_damaged_finished_model_is_trained_again(tmp_path):
    """What counts as finished: a directory that passes the model-directory check (no training here)."""
    done = tmp_path / "positive"
    done.mkdir()
    (done / "adapter_config.json").write_text("{}")
    (done / "adapter_model.safetensors").write_bytes(b"\x00" * 10)  # truncated
    assert not contrastive._finished(done) and not contrastive._finished(tmp_path / "negative")
