from __future__ import annotations

import os
from pathlib import Path

import pytest

#: the first 200 rows of Anthropic HH-RLHF harmless-base test (MIT licence; see tests/data/README.md)
HH_FILE = Path(__file__).resolve().parent / "data" / "hh-rlhf-harmless-base-test-200.jsonl.gz"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + byte-level BPE tokenizer with a ChatML template (built, not downloaded)."""
    from unipo.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def hh_file() -> Path:
    """Real preference pairs: 200 raw HH-RLHF transcripts (implicit prompt; row 87 has a blank chosen answer)."""
    return HH_FILE
