"""unipo.models.checks: damaged model directories and non-finite weights (issue 23, items 4 and 5;
docs/faults.md; was tests/test_faults_models.py), refused by every command that loads a model. Two of
``unipo eval``'s full-disk writes stay here beside the trained run they share with the non-finite checks.

Each case must end in one line (exit status 2) naming the path and what is wrong, before any work; never a
traceback, a message about installing sentencepiece, or one about the hub.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import train_args
from unipo.cli import main

pytestmark = pytest.mark.integration


def _truncated(src: Path, d: Path) -> None:
    shutil.copytree(src, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _no_config(src: Path, d: Path) -> None:
    shutil.copytree(src, d)
    (d / "config.json").unlink()


def _no_tokenizer(src: Path, d: Path) -> None:
    shutil.copytree(src, d)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (d / name).unlink(missing_ok=True)


def _config_cut_short(src: Path, d: Path) -> None:
    shutil.copytree(src, d)
    (d / "config.json").write_text('{"model_type": "lla')


def _tokenizer_cut_short(src: Path, d: Path) -> None:
    shutil.copytree(src, d)
    (d / "tokenizer.json").write_text('{"version": "1.0", "trunc')


def _empty(src: Path, d: Path) -> None:
    d.mkdir()


def _loop(src: Path, d: Path) -> None:
    os.symlink(d.name, d)  # relative: "loop" alone would also be a well-formed hub name


CASES = {
    "truncated-weights": (_truncated, "model.safetensors is truncated"),
    "no-config": (_no_config, "no config.json"),
    "no-tokenizer": (_no_tokenizer, "no tokenizer files"),
    "empty": (_empty, "is empty"),
    "config-cut-short": (_config_cut_short, "config.json is not valid JSON"),
    "tokenizer-cut-short": (_tokenizer_cut_short, "tokenizer.json is not valid JSON"),
    "loop": (_loop, "symbolic link that loops back on itself"),
}


def _one_line_error(err: str, path: str, expected: str) -> None:
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    assert path in lines[0] and expected in lines[0], err
    for word in ("Traceback", "sentencepiece", "tiktoken", "hub", "huggingface.co"):
        assert word not in err, err


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_model_directory_is_refused_in_one_line(case, tiny_model_dir, data, tmp_path, capsys,
                                                          monkeypatch):
    make, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    make(Path(tiny_model_dir), tmp_path / "model")
    capsys.readouterr()
    rc = main(train_args("model", data, tmp_path / "out"))
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "model", expected)
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory) -> Path:
    from tests.helpers import ROWS, write_jsonl

    root = tmp_path_factory.mktemp("evalrun")
    data = write_jsonl(root / "data.jsonl", ROWS)
    assert main(train_args(tiny_model_dir, data, root / "run", "--set", "plots=false")) == 0
    return root / "run"


def _eval_args(run: Path, data: Path) -> list[str]:
    return ["eval", "--model", str(run), "--data", str(data), "--limit", "4", "--n-prompts", "2",
            "--n-samples", "2", "--max-new-tokens", "2"]


def test_eval_refuses_a_model_with_non_finite_weights(trained_run, data, tmp_path, capsys):
    """A run whose saved weights hold NaN (a diverged run's model): one line naming the run, how many
    tensors and the first one, the way out; no eval.json written (on the old code: a traceback from the
    calibration metric, ``probs must lie in [0, 1]``)."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    tensors = load_file(run / "model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone().fill_(float("nan"))
    save_file(tensors, run / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert main(_eval_args(run, data)) == 2
    err = capsys.readouterr().err
    _one_line_error(err, str(run), "hold NaN or inf")
    assert "1 of " in err and first in err and "lower learning rate" in err
    assert not (run / "eval.json").exists()


def test_eval_refuses_a_run_with_truncated_weights(trained_run, data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    assert main(_eval_args(run, data)) == 2
    _one_line_error(capsys.readouterr().err, str(run), "model.safetensors is truncated")


# --- saving eval's outputs on a full disk (issue 23, item 3): the report and the reference cache ----------


def test_eval_report_on_a_full_disk_keeps_the_previous_report(trained_run, data, tmp_path, capsys, monkeypatch):
    """eval.json is written beside and renamed when complete: a full disk mid-write is one line, the
    previous eval.json is kept as it was and no temporary file is left."""
    import errno
    import json

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "eval.json").write_text('{"old": true}')
    monkeypatch.setenv("UNIPO_CACHE", str(tmp_path / "cache"))
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        if self.name.startswith(".eval.partial"):
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    capsys.readouterr()
    assert main(_eval_args(run, data)) == 2
    _one_line_error(capsys.readouterr().err, "eval.json", "no space left on the device")
    assert json.loads((run / "eval.json").read_text()) == {"old": True}
    assert not [p.name for p in run.iterdir() if ".partial" in p.name]


def test_reference_cache_on_a_full_disk_is_one_line_and_leaves_no_partial_file(trained_run, data, tmp_path,
                                                                                capsys, monkeypatch):
    """The cache file's write fails mid-file on a full disk (the archive is built in memory by torch.save, so the
    disk write is the cache's own): one line naming the cache file, no half-written cache file that a later run
    would read."""
    import errno

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    monkeypatch.setenv("UNIPO_CACHE", str(tmp_path / "cache"))
    real = Path.write_bytes

    def full(self, data, *args, **kwargs):
        if "reflogps" in str(self):
            real(self, b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_bytes", full)
    capsys.readouterr()
    assert main(_eval_args(run, data)) == 2
    _one_line_error(capsys.readouterr().err, "reflogps", "no space left on the device")
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("layout", ["sharded", "pytorch-bin", "sharded-missing-shard", "no-weights"])
def test_the_model_directory_check_knows_every_weights_layout(layout, tiny_model_dir, tmp_path):
    """Sharded safetensors (an index and its shards) and PyTorch .bin checkpoints pass the check and load;
    a missing shard or no weights at all is named."""
    from transformers import AutoModelForCausalLM

    from unipo.errors import UnipoError
    from unipo.models.checks import check_model_dir

    d = tmp_path / "m"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if layout == "pytorch-bin":
        model.save_pretrained(d, safe_serialization=False)
    else:
        model.save_pretrained(d, max_shard_size="20KB")
        assert (d / "model.safetensors.index.json").exists()
    if layout == "sharded-missing-shard":
        sorted(d.glob("model-*.safetensors"))[-1].unlink()
    if layout == "no-weights":
        for f in [*d.glob("*.safetensors"), *d.glob("*.bin"), *d.glob("*.index.json")]:
            f.unlink()
    if layout in ("sharded", "pytorch-bin"):
        check_model_dir(d)
        return
    with pytest.raises(UnipoError, match="is missing|no weights") as err:
        check_model_dir(d)
    assert str(d) in str(err.value)


def test_bridge_refuses_a_damaged_local_editor_but_takes_a_tokenizer_only_directory(tiny_model_dir, tmp_path,
                                                                                     capsys):
    """``--editor DIR`` with truncated weights is one line naming it; ``--tokenizer DIR`` needs only the
    tokenizer files (and the config.json that names it a model directory), not weights."""
    from tests.helpers import ROWS, write_jsonl

    data = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    editor = tmp_path / "editor"
    _truncated(Path(tiny_model_dir), editor)
    args = ["bridge", "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "2",
            "--keep-truncated", "--no-plot"]
    capsys.readouterr()
    assert main([*args, "--editor", str(editor)]) == 2
    _one_line_error(capsys.readouterr().err, str(editor), "model.safetensors is truncated")
    tok_only = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, tok_only)
    (tok_only / "model.safetensors").unlink()
    assert main([*args, "--editor", str(tiny_model_dir), "--tokenizer", str(tok_only)]) in (0, 1)
    assert "error" not in capsys.readouterr().err


def test_reward_models_of_eval_and_iterate_are_checked_too(tiny_model_dir, tmp_path):
    """The judges' local reward model (``unipo eval --judge DIR``, ``unipo iterate --reward-model DIR``): a
    damaged directory is the same one line (no model is loaded, so the causal tiny model's copy will do)."""
    from unipo.errors import UnipoError
    from unipo.eval.judge import reward_model_scores
    from unipo.iterate.labels import RewardModelLabeller

    damaged = tmp_path / "rm"
    _no_tokenizer(Path(tiny_model_dir), damaged)
    with pytest.raises(UnipoError, match=f"model directory {damaged}: no tokenizer files"):
        reward_model_scores(str(damaged), ["p"], ["r"])
    with pytest.raises(UnipoError, match=f"model directory {damaged}: no tokenizer files"):
        RewardModelLabeller(str(damaged)).check()
