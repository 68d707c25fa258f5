"""The worker of ``tests/test_reference_sharded.py`` (not a test module): the precomputed reference pass
(:func:`unipo.training.reference.precompute_cached`) on the tiny model, as one plain process
(``python tests/refshard_worker.py MODEL OUT``) or in each process of ``torchrun --nproc_per_node 2``, where
the process group comes from accelerate's ``PartialState`` as in ``unipo.training.train._precompute``.

It saves ``OUT/world{W}-rank{R}.pt``: the cache key, every pair's reference log-probs, which pairs this process
ran through the model and how many forward calls it made; then the same for a second call, which must read
the cache file the first one wrote.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import torch
from transformers import AutoTokenizer

from unipo.data.batching import collate_pairs
from unipo.models.loading import load_model
from unipo.training.reference import precompute_cached

#: (prompt, chosen, rejected, further rejected) lengths; 7 pairs in batches of 2: 4 batches, the last of 1
LENGTHS = [(5, 3, 6, ()), (9, 1, 2, (4,)), (2, 7, 1, ()), (1, 2, 4, (3,)), (6, 6, 2, ()), (3, 1, 8, ()),
           (4, 5, 5, (2,))]
BATCH = 2


def pairs() -> list[dict]:
    """The tokenised pairs, fixed seed; some listwise (``more_rejected_ids``)."""
    g = torch.Generator().manual_seed(7)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()

    rows = []
    for p, c, r, more in LENGTHS:
        row = {"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)}
        if more:
            row["more_rejected_ids"] = [ids(n) for n in more]
        rows.append(row)
    return rows


def run(model, model_dir: str, tokenizer) -> dict:
    """One ``precompute_cached`` call, counting the pairs collated and the model's forward calls here."""
    data = pairs()
    index = {id(ex): i for i, ex in enumerate(data)}
    seen, forwards = [], []
    collate = partial(collate_pairs, pad_token_id=tokenizer.pad_token_id, share_prompt=True)

    def counting(part):
        seen.extend(index[id(ex)] for ex in part)
        return collate(part)

    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    key = precompute_cached(model, model_dir, tokenizer, data, counting, ref_dtype=torch.float32,
                            share_prompt=True, batch_size=BATCH, chunk_size=4, device=torch.device("cpu"),
                            progress=False)
    hook.remove()
    logps = [(ex["ref_chosen_logps"], ex["ref_rejected_logps"], ex.get("ref_more_rejected_logps")) for ex in data]
    return {"key": key, "logps": logps, "pairs": seen, "forwards": len(forwards)}


def main(model_dir: str, out: str) -> None:
    torch.set_num_threads(1)  # the same kernels in both runs: bitwise equal log-probs
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        from accelerate import PartialState

        PartialState(cpu=True)
    rank = int(os.environ.get("RANK", "0"))
    model = load_model(model_dir, dtype=torch.float32, trainable=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    first = run(model, model_dir, tokenizer)
    second = run(model, model_dir, tokenizer)
    torch.save({"first": first, "second": second}, Path(out) / f"world{world}-rank{rank}.pt")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
