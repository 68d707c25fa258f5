"""The offset a lower-precision reference adds to every log-ratio, at step 1 (policy = reference).

    .venv/bin/python bench/ref_precision.py [--data FILE] [--pairs 8] [--max-length 256] [--json OUT]

For each pair of held-out data it computes the sequence log-ratio Σ_t (log π − log π_ref) of both responses
with the policy as unipo trains it under ``precision: bf16`` (float32 weights under bf16 autocast, bf16 LM-head
input) and the reference as

- ``auto``: the same (float32 weights under the same autocast): the log-ratio must be exactly 0;
- ``bfloat16``: bfloat16 weights (``ref_dtype: bfloat16``, half the memory): the offset measured here;

and prints the mean and largest |log-ratio| and the DPO reward offset β·Δ at β = 0.1. Forward passes only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SLICE = HERE.parent / "tests" / "data" / "hh-rlhf-harmless-base-test-200.jsonl.gz"


def main() -> None:
    from unipo.data.tokenize import prepare_pairs
    from unipo.layout import PackedBatch
    from unipo.models.loading import load_model, load_tokenizer, resolve_model_path
    from unipo.training.collate import collate_for
    from unipo.training.reference import reference_pass

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(SLICE))
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    path = resolve_model_path(args.model)
    tok = load_tokenizer(path)
    pairs, _ = prepare_pairs(args.data, tok, max_length=args.max_length, max_prompt_length=args.max_length // 2,
                             limit=args.pairs * 2, on_invalid="skip")
    rows = [p.to_dict() for p in pairs[: args.pairs]]
    policy = load_model(path, dtype=torch.float32, trainable=False)
    batch = PackedBatch.from_dict(collate_for(policy, tok.pad_token_id)(rows))
    bf16 = torch.bfloat16

    def seq_logps(model) -> torch.Tensor:
        t0 = time.perf_counter()
        out = reference_pass(None, model, batch, chunk_size=1024, need_hidden=False, autocast_dtype=bf16,
                             head_dtype=bf16)
        print(f"  forward in {time.perf_counter() - t0:.1f} s")
        return torch.cat([(out.logps[s] * batch.side(s).mask).sum(-1) for s in ("chosen", "rejected")]).double()

    pol = seq_logps(policy)
    result = {"pairs": len(rows), "tokens": int(batch.chosen.mask.sum() + batch.rejected.mask.sum())}
    for name, dtype in (("auto (float32 under the policy's autocast)", torch.float32), ("bfloat16", bf16)):
        ref = seq_logps(load_model(path, dtype=dtype, trainable=False))
        d = (pol - ref).abs()
        result[name] = {"mean_abs_log_ratio": float(d.mean()), "max_abs_log_ratio": float(d.max()),
                        "mean_abs_reward_at_beta_0.1": float(0.1 * d.mean())}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
