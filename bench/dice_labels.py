"""DICE's implicit labelling of one round: the prompt once per sample (before) vs once per prompt (after).

    .venv/bin/python bench/dice_labels.py                         # small random Llama, 16 prompts × K=4
    .venv/bin/python bench/dice_labels.py --k 8 --prompt-len 384  # longer prompts, more samples
    .venv/bin/python bench/dice_labels.py --tiny                  # seconds: a smoke test

A round's labelling is :class:`unipo.iterate.labels.ImplicitLabeller`: the K samples of every prompt scored
teacher-forced in the policy and in the reference (Chen et al., ICLR 2025, arXiv:2406.09760, §3). Both paths
run here in one process on the same random-init Llama (random token ids: the cost does not depend on the text),
alternating, ``--repeats`` times each, and the best time of each is reported:

- ``per-sample``: :func:`unipo.eval.generation.score_responses` with ``shared_prompt=False``, one
  ``[prompt | response]`` row per sample (what the labeller did before);
- ``shared prompt``: the default, one ``[prompt | y_1 | … | y_K]`` sequence per prompt
  (:mod:`unipo.models.shared_prompt`).

Printed: seconds per round (policy + reference), the ratio, the token positions fed to the models (counted by a
hook on the input embeddings) and the largest difference between the two paths' labels. One JSON line at the
end (``RESULT {...}``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def small_llama(vocab: int, hidden: int, layers: int, seed: int):
    """A random-init Llama (SmolLM2-like proportions, scaled down), float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3),
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 192), max_position_embeddings=4096,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The random model's shape, the repetitions and the torch threads (this script's and bench/generation.py's)."""
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def _round(pol, ref, prompts, responses, batch_size: int, shared: bool) -> tuple[float, list[float], int]:
    from unipo.eval.generation import score_responses

    seen = [0]
    hooks = [m.get_input_embeddings().register_forward_pre_hook(
        lambda mod, args: seen.__setitem__(0, seen[0] + args[0].numel())) for m in (pol, ref)]
    start = time.perf_counter()
    a = score_responses(pol, None, prompts, responses, batch_size=batch_size, shared_prompt=shared)
    b = score_responses(ref, None, prompts, responses, batch_size=batch_size, shared_prompt=shared)
    seconds = time.perf_counter() - start
    for h in hooks:
        h.remove()
    return seconds, (a.sequence_logps() - b.sequence_logps()).tolist(), seen[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="responses per forward (the labeller's default)")
    add_model_args(ap)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model, 4 prompts: a smoke test")
    args = ap.parse_args()
    if args.tiny:
        args.prompts, args.hidden, args.layers, args.vocab, args.repeats = 4, 64, 2, 512, 1
        args.prompt_len, args.response_len = 48, 12
    if args.threads:
        torch.set_num_threads(args.threads)
    pol, ref = small_llama(args.vocab, args.hidden, args.layers, 0), small_llama(args.vocab, args.hidden,
                                                                                   args.layers, 1)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, args.vocab, (args.prompt_len - 17 * (i % 3),), generator=g).tolist()
               for i in range(args.prompts)]
    flat_p = [p for p in prompts for _ in range(args.k)]
    responses = [torch.randint(3, args.vocab, (max(1, args.response_len - 5 * (n % 4)),), generator=g).tolist()
                 for n in range(len(flat_p))]
    best: dict[str, float] = {}
    labels, tokens = {}, {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, shared in (("per-sample", False), ("shared prompt", True)):
                secs, labels[name], tokens[name] = _round(pol, ref, flat_p, responses, args.batch_size, shared)
                best[name] = min(best.get(name, float("inf")), secs)
    diff = max(abs(a - b) for a, b in zip(labels["per-sample"], labels["shared prompt"], strict=True))
    for name in best:
        print(f"{name:14s} {best[name]:8.3f} s/round  {tokens[name]:9d} token positions (policy + reference)")
    ratio = best["per-sample"] / best["shared prompt"]
    print(f"speed-up {ratio:.2f}x; token positions {tokens['per-sample'] / tokens['shared prompt']:.2f}x fewer; "
          f"largest label difference {diff:.2e}")
    result = dict(vars(args), seconds=best, token_positions=tokens, speedup=ratio, max_label_diff=diff,
                  threads=torch.get_num_threads())
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
