"""unipo.models.builtin: the converted built-in model's cache is never left half-written (issue 23, item 3;
docs/faults.md; was tests/test_faults_save.py)."""

from __future__ import annotations

import pytest

from tests.helpers import tokenizer_save_fails_in


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
    tokenizer_save_fails_in(monkeypatch, lambda d: True)
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
