"""Generation tokens/s: unipo's ``sample_responses`` against a plain ``model.generate`` of the same prompts.

    .venv/bin/python bench/generation.py              # small random Llama, 8 prompts × K=4, 64 new tokens
    .venv/bin/python bench/generation.py --tiny       # seconds: a smoke test

Both sample at temperature 1 with no top-k / top-p (``generate`` is given ``top_k=0, top_p=1.0``: a checkpoint's
``generation_config`` defaults would otherwise change the distribution), the same prompts, the same batch of
``--batch-size`` sequences (``generate``: ``batch_size / K`` prompts with ``num_return_sequences=K``), and the
same ``--new-tokens`` (the end-of-sequence token is one the random model never samples in practice, so every row
runs to the end; the tokens actually produced are counted). Each method runs ``--repeats`` times, alternating,
and the best wall time is reported, with the best CPU time of the process (less sensitive to other work on a
shared machine). One JSON line at the end (``RESULT {...}``).

- ``unipo sample_responses``: :func:`unipo.eval.generation.sample_responses` (its own ancestral loop, one random
  stream per (prompt, sample), each distinct prompt prefilled once);
- ``model.generate``: transformers' ``generate(do_sample=True, ...)``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from dice_labels import add_model_args, small_llama


def _unipo(model, prompts, k: int, new: int, batch_size: int) -> int:
    from unipo.eval.generation import sample_responses

    out = sample_responses(model, None, prompts, k, new, temperature=1.0, batch_size=batch_size, seed=0)
    return sum(len(r) for per in out for r in per)


def _generate(model, prompts, k: int, new: int, batch_size: int) -> int:
    per_call, pad, tokens = max(1, batch_size // k), model.config.pad_token_id, 0
    for s in range(0, len(prompts), per_call):
        rows = prompts[s:s + per_call]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                             top_p=1.0, max_new_tokens=new, num_return_sequences=k, pad_token_id=pad)
        eos = model.generation_config.eos_token_id
        for row in out[:, width:].tolist():  # up to and including the first eos (generate pads after it)
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="sequences generated together")
    add_model_args(ap)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model: a smoke test")
    args = ap.parse_args()
    if args.tiny:
        args.prompts, args.hidden, args.layers, args.vocab, args.repeats = 4, 64, 2, 512, 1
        args.prompt_len, args.new_tokens = 24, 12
    if args.threads:
        torch.set_num_threads(args.threads)
    model = small_llama(args.vocab, args.hidden, args.layers, 0)
    model.generation_config.eos_token_id = model.config.eos_token_id = 1
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, args.vocab, (args.prompt_len - 9 * (i % 3),), generator=g).tolist()
               for i in range(args.prompts)]
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    tokens: dict[str, int] = {}
    methods = (("unipo sample_responses", _unipo), ("model.generate", _generate))
    for _ in range(args.repeats):
        for name, fn in methods:
            start, start_cpu = time.perf_counter(), time.process_time()
            tokens[name] = fn(model, prompts, args.k, args.new_tokens, args.batch_size)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
            cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - start_cpu)
    rate = {name: tokens[name] / best[name] for name in best}
    for name in best:
        print(f"{name:24s} {tokens[name]:6d} tokens  {best[name]:7.3f} s ({cpu[name]:7.3f} CPU s)  "
              f"{rate[name]:9.1f} tokens/s")
    ratio = rate["unipo sample_responses"] / rate["model.generate"]
    cpu_ratio = (tokens["unipo sample_responses"] / cpu["unipo sample_responses"]) / (
        tokens["model.generate"] / cpu["model.generate"])
    print(f"unipo / generate tokens/s: {ratio:.2f} (wall), {cpu_ratio:.2f} (CPU time)")
    print("RESULT " + json.dumps(dict(vars(args), seconds=best, cpu_seconds=cpu, tokens=tokens, tokens_per_s=rate,
                                      ratio=ratio, cpu_ratio=cpu_ratio, threads=torch.get_num_threads())))


if __name__ == "__main__":
    main()
