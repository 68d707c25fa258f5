"""unipo.models.loading: a model path that is neither a directory nor a hub name says so (issue 17, item 4)."""

from __future__ import annotations

import pytest

from tests.helpers import ROWS, write_jsonl
from unipo.cli import main
from unipo.errors import UnipoError


@pytest.mark.unit
def test_model_path_that_is_neither_a_directory_nor_a_hub_name(tmp_path, capsys):
    from unipo.models.loading import resolve_model_path

    for name in ("/no/such/dir", "./no/such", "runs/x/../y"):
        with pytest.raises(UnipoError, match="is not a directory and not a hub name"):
            resolve_model_path(name)
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"")
    with pytest.raises(UnipoError, match="is a file, not a model directory"):
        resolve_model_path(str(a_file))
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert main(["train", "--model", "/no/such/dir", "--data", str(data), "--output-dir", str(tmp_path / "r")]) != 0
    assert "model '/no/such/dir' is not a directory and not a hub name" in capsys.readouterr().err
