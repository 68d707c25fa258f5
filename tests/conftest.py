from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HH_FILE = SHARED / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture()
def data(tmp_path) -> Path:
    """The 12 arithmetic pairs of ``tests.helpers.ROWS`` as a JSONL file."""
    from tests.helpers import ROWS, write_jsonl

    return write_jsonl(tmp_path / "data.jsonl", ROWS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + byte-level BPE tokenizer with a ChatML template (built, not downloaded)."""
    from unipo.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def hh_file() -> Path:
    if not HH_FILE.exists():
        pytest.skip(f"{HH_FILE} not present (only developers and CI have ../shared)")
    return HH_FILE
