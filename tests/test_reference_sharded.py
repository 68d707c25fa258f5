"""The precomputed reference under data parallel: 2 processes (gloo, torchrun) each run half of the batches
through the reference model, gather once and end with exactly the one-process result, and write the same cache
file byte for byte (``tests/refshard_worker.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

WORKER = Path(__file__).resolve().parent / "refshard_worker.py"


def _run(cmd: list[str], cache: Path) -> None:
    env = {**os.environ, "UNIPO_CACHE": str(cache)}
    res = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]


def _one_process(model_dir: Path) -> tuple[dict, torch.nn.Module]:
    """The worker's two calls in this process (no process group), on one thread as in the workers."""
    from transformers import AutoTokenizer

    from tests.refshard_worker import run
    from unipo.models.loading import load_model

    model = load_model(str(model_dir), dtype=torch.float32, trainable=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"first": run(model, str(model_dir), tokenizer), "second": run(model, str(model_dir), tokenizer)}, model
    finally:
        torch.set_num_threads(threads)


def test_sharded_precompute_equals_one_process(tiny_model_dir, tmp_path, monkeypatch):
    from tests.refshard_worker import pairs

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is installed with torch, next to this Python"
    _run([torchrun, "--nproc_per_node", "2", "--master_port", "29543", str(WORKER), str(tiny_model_dir),
          str(tmp_path)], tmp_path / "two")
    monkeypatch.setenv("UNIPO_CACHE", str(tmp_path / "one"))
    one, model = _one_process(tiny_model_dir)
    two = [torch.load(tmp_path / f"world2-rank{r}.pt") for r in (0, 1)]

    # each rank ran its own batches (of 2 pairs: batches 0 and 2 on rank 0, 1 and 3 on rank 1) and nothing else
    assert one["first"]["pairs"] == list(range(7)) and one["first"]["forwards"] == 4
    assert two[0]["first"]["pairs"] == [0, 1, 4, 5] and two[0]["first"]["forwards"] == 2
    assert two[1]["first"]["pairs"] == [2, 3, 6] and two[1]["first"]["forwards"] == 2
    # every rank ends with all pairs' log-probs, in order, bitwise those of one process; same key
    for rank in two:
        assert rank["first"]["key"] == one["first"]["key"]
        assert rank["first"]["logps"] == one["first"]["logps"]
    # one cache file, the same bytes; a second call reads it on every rank (no forward call anywhere)
    (a,), (b,) = ((tmp_path / d / "reflogps").glob("*.pt") for d in ("one", "two"))
    assert a.name == b.name == f"{one['first']['key']}.pt"
    assert a.read_bytes() == b.read_bytes()
    for run in (one, *two):
        assert run["second"]["forwards"] == 0 and run["second"]["pairs"] == []
        assert run["second"]["logps"] == one["first"]["logps"]

    # ground truth for the values: log-softmax of the model's logits over prompt + response, float64
    for ex, (chosen, rejected, more) in zip(pairs(), one["first"]["logps"], strict=True):
        responses = [ex["chosen_ids"], ex["rejected_ids"], *(ex.get("more_rejected_ids") or [])]
        got = [chosen, rejected, *(more or [])]
        for resp, values in zip(responses, got, strict=True):
            ids = torch.tensor([ex["prompt_ids"] + resp])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0].double()
            logp = torch.log_softmax(logits, -1)[len(ex["prompt_ids"]) - 1:-1].gather(
                -1, torch.tensor(resp)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(values, dtype=torch.float64), logp, rtol=1e-4, atol=1e-5)
