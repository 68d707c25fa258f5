"""Logged means under data parallelism are weighted by the pairs each process actually had
(unipo.training.metrics.PairWeightedMeans, used by PreferenceTrainer.log): two gloo processes with unequal last
batches (4 + 3 and 4 + 1 pairs) log what one process computes over all 12 pairs at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.metrics_worker import BATCHES, all_pairs, batch_metrics
from unipo.training.metrics import PairWeightedMeans

WORKER = Path(__file__).resolve().parent / "metrics_worker.py"


def one_process() -> dict[str, float]:
    """The objective over all 12 pairs in one batch: the ground truth."""
    return batch_metrics(all_pairs(), 0, 12)


@pytest.mark.unit
def test_batches_of_one_process_weighted_by_pairs():
    """Batches of 4, 4, 3 and 1 pairs in one process: the logged mean is the mean over the 12 pairs, which a
    mean of batch means is not."""
    data, means, start, plain = all_pairs(), PairWeightedMeans(), 0, []
    for size in (4, 4, 3, 1):
        m = batch_metrics(data, start, size)
        means.add(m, size)
        plain.append(m)
        start += size
    got, truth = means.reduce(), one_process()
    assert set(got) == set(truth) and {"loss", "rewards/margins", "rewards/accuracies"} <= set(got)
    for key in truth:
        assert got[key] == pytest.approx(truth[key], rel=1e-6, abs=1e-7), key
    unweighted = sum(m["rewards/margins"] for m in plain) / len(plain)
    assert abs(unweighted - truth["rewards/margins"]) > 1e-3  # the case would not tell the two apart otherwise
    assert not means and means.reduce() == {}


@pytest.mark.slow
def test_two_processes_with_unequal_last_batches_match_one(tmp_path):
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), str(rank), "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    truth = one_process()
    per_process = []
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(got) == set(truth)
        for key in truth:
            assert got[key] == pytest.approx(truth[key], rel=1e-6, abs=1e-7), (rank, key)
    data = all_pairs()
    for rank, sizes in BATCHES.items():  # what a mean of per-process means would have logged: not the same
        start = sum(sum(BATCHES[r]) for r in range(rank))
        per_process.append(sum(batch_metrics(data, start + sum(sizes[:i]), s)["rewards/margins"] * s
                               for i, s in enumerate(sizes)) / sum(sizes))
    assert abs(sum(per_process) / 2 - truth["rewards/margins"]) > 1e-3
