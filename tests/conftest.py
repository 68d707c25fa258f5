from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

#: the first 200 rows of Anthropic HH-RLHF harmless-base test (MIT licence; see tests/data/README.md)
HH_FILE = Path(__file__).resolve().parent / "data" / "hh-rlhf-harmless-base-test-200.jsonl.gz"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# the prepared-data cache of this test session (each xdist worker its own, removed at exit), not the user's
# ~/.cache/unipo/data
if "UNIPO_DATA_CACHE" not in os.environ:
    os.environ["UNIPO_DATA_CACHE"] = tempfile.mkdtemp(prefix="unipo-data-cache-")
    atexit.register(shutil.rmtree, os.environ["UNIPO_DATA_CACHE"], ignore_errors=True)

#: every test carries exactly one of these markers (declared in pyproject.toml; see docs/testing.md)
TIERS = ("unit", "integration", "slow")
#: fixtures that build or load a model: a unit test may not use them
MODEL_FIXTURES = {"tiny_model_dir", "tiny_reward_model_dir"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything: every collected test is checked
def pytest_collection_modifyitems(config, items):
    """Fail the collection of any test without exactly one tier marker, or a unit test that uses a model."""
    problems = []
    for item in items:
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(tiers) != 1:
            problems.append(f"{item.nodeid}: " + (f"{len(tiers)} tier markers ({', '.join(tiers)})" if tiers
                                                   else "no tier marker"))
        elif tiers == ["unit"] and MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            problems.append(f"{item.nodeid}: marked unit but uses a model fixture "
                            f"({', '.join(sorted(MODEL_FIXTURES & set(item.fixturenames)))})")
    if problems:
        raise pytest.UsageError(
            f"{len(problems)} test(s) not in exactly one tier of {', '.join(TIERS)} (mark the module with "
            f"`pytestmark = pytest.mark.unit` or the test with `@pytest.mark.unit`; see docs/testing.md):\n  "
            + "\n  ".join(problems))


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
    """Real preference pairs: 200 raw HH-RLHF transcripts (implicit prompt; row 87 has a blank chosen answer)."""
    return HH_FILE


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama sequence classifier with one output (a reward model) and the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from unipo.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("rm") / "rm"
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 16 rows and workers from 32 rows on, so that the 200-row slice crosses chunks and workers
    (data/prepare.py's batching; tests/test_data_prepare.py and tests/test_data_stream.py)."""
    from unipo.data import prepare

    monkeypatch.setattr(prepare, "CHUNK_ROWS", 16)
    monkeypatch.setattr(prepare, "MIN_ROWS_FOR_WORKERS", 32)
