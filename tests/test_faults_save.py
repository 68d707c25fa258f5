"""A full disk while something is saved (issue 23, item 3; docs/faults.md): one line, nothing half-written
left behind, ``--resume`` goes on from the last complete checkpoint.

The disk is filled by monkeypatching the writer to raise what it raises on a full disk: the tokenizers
library a plain ``Exception("No space left on device (os error 28)")`` (its Rust I/O error, not an
``OSError``), matplotlib / json / torch an ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.helpers import train_args
from unipo.cli import main

DISK_FULL = "No space left on device (os error 28)"


def _tokenizer_save_fails_in(monkeypatch, where):
    """The tokenizer's save into a directory for which ``where(dir)`` is true writes half a tokenizer.json,
    then raises the tokenizers library's plain Exception."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    real = TokenizersBackend._save_pretrained

    def save(self, save_directory, *args, **kwargs):
        if where(Path(save_directory)):
            Path(save_directory, "tokenizer.json").write_text('{"version": "1.0", "trunc')
            raise Exception(DISK_FULL)  # noqa: TRY002 - what the tokenizers library raises
        return real(self, save_directory, *args, **kwargs)

    monkeypatch.setattr(TokenizersBackend, "_save_pretrained", save)


def _one_line(err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ": error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], err


@pytest.mark.integration
def test_disk_full_in_a_checkpoint_then_in_the_final_save_then_resume(tiny_model_dir, data, tmp_path, capsys,
                                                                      monkeypatch):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out, "--save-steps", "1", "--set", "plots=false")
    # 1. the disk fills while checkpoint-2's tokenizer is saved
    _tokenizer_save_fails_in(monkeypatch, lambda d: d.name == "checkpoint-2")
    assert main(args) == 2
    _one_line(capsys.readouterr().err, "no space left on the device", "--resume")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # the torn one is removed
    assert not (out / "model.safetensors").exists()
    # 2. resumed; now the disk fills while the final model's tokenizer is saved
    monkeypatch.undo()
    _tokenizer_save_fails_in(monkeypatch, lambda d: d == out)
    assert main([*args, "--resume"]) == 2
    _one_line(capsys.readouterr().err, "no space left on the device")
    left = {p.name for p in out.iterdir()}
    assert {"checkpoint-1", "checkpoint-2", "metrics.jsonl"} <= left
    assert not left & {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.json",
                       "unipo_config.yaml"}, left  # the half-written final model is gone
    # 3. resumed with room on the disk: the final model is checkpoint-2's weights
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    final, ckpt = load_file(out / "model.safetensors"), load_file(out / "checkpoint-2" / "model.safetensors")
    assert final.keys() == ckpt.keys() and all(final[k].equal(ckpt[k]) for k in final)
    assert (out / "trainer_state.json").exists() and (out / "unipo_config.yaml").exists()  # marked finished


@pytest.mark.unit
def test_resume_skips_a_checkpoint_whose_weights_are_torn(tmp_path):
    """A checkpoint with its trainer_state.json but a weights file shorter than its header says is skipped."""
    import torch
    from safetensors.torch import save_file

    from unipo.training.rundir import last_complete_checkpoint

    for step in (1, 2):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        save_file({"w": torch.ones(64)}, ckpt / "model.safetensors")
        (ckpt / "trainer_state.json").write_text("{}")
    torn = tmp_path / "checkpoint-2" / "model.safetensors"
    torn.write_bytes(torn.read_bytes()[:-16])
    logged: list[str] = []
    assert last_complete_checkpoint(tmp_path, logged.append) == str(tmp_path / "checkpoint-1")
    assert "checkpoint-2 is torn (model.safetensors is truncated" in logged[0]


@pytest.mark.unit
@pytest.mark.parametrize("exc", [Exception(DISK_FULL), OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128")])
def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, exc):
    from unipo.errors import UnipoError
    from unipo.io.atomic import atomic_path

    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(UnipoError, match="no space left on the device while writing .*report.json"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise exc
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.unit
def test_an_atomic_write_lets_other_errors_through(tmp_path):
    from unipo.io.atomic import atomic_path

    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise KeyError("not a file-system error")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_the_built_in_model_cache_is_never_left_half_written(tiny_model_dir, tmp_path, monkeypatch):
    """The converted built-in model is saved beside its cache directory and renamed when whole: a full disk
    during the tokenizer's save is one line and leaves neither the cache nor its temporary; a damaged cache
    is not taken as converted."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unipo.errors import UnipoError
    from unipo.models.builtin import _complete, save_converted

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    target = tmp_path / "models" / "tiny"
    _tokenizer_save_fails_in(monkeypatch, lambda d: True)
    with pytest.raises(UnipoError, match="no space left on the device while writing .*tiny.tmp"):
        save_converted(model, tokenizer, target)
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []
    monkeypatch.undo()
    save_converted(model, tokenizer, target)
    assert _complete(target) and not target.with_name("tiny.tmp").exists()
    damaged = tmp_path / "damaged"
    shutil.copytree(target, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert not _complete(damaged)


@pytest.mark.integration
def test_iterate_merged_lora_model_is_never_left_half_written(tiny_model_dir, tmp_path, monkeypatch):
    """A LoRA round's merged model (the next round's policy) is saved beside and renamed when whole: a full
    disk mid-save leaves no ``merged`` directory for a resume to load, and the rerun merges it again."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unipo.errors import UnipoError
    from unipo.iterate.pipeline import _merge_lora

    adapter = tmp_path / "model"
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)
    _tokenizer_save_fails_in(monkeypatch, lambda d: d.name == "merged.partial")
    with pytest.raises(UnipoError, match="no space left on the device while writing .*merged"):
        _merge_lora(adapter, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    monkeypatch.undo()
    _merge_lora(adapter, tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").exists() and (tmp_path / "merged" / "tokenizer.json").exists()


@pytest.mark.unit
def test_a_file_system_error_of_any_type_that_reaches_the_command_line_is_one_line(monkeypatch, capsys):
    """The last net: a file-system error no save path described (here the tokenizers library's plain
    Exception) is one line with exit status 2; any other exception is not hidden."""
    import argparse

    from unipo.cli import main

    def parse_args(self, argv=None, namespace=None):
        def fail(_args):
            raise failure
        return argparse.Namespace(command="variants", func=fail)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    failure = Exception(DISK_FULL)
    assert main(["variants"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unipo variants: error: no space left on the device")
    failure = OSError(errno.EACCES, "Permission denied", "/data/x.jsonl")
    assert main(["variants"]) == 2
    assert capsys.readouterr().err == ("unipo variants: error: file-system error on /data/x.jsonl: Permission "
                                       "denied; fix it (space, permissions, the path), then run the command "
                                       "again\n")
    failure = ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        main(["variants"])
