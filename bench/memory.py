"""Measured memory of one process's training steps, to check the formulas of docs/scaling.md.

    .venv/bin/python bench/memory.py                      # every configuration below, one subprocess each
    .venv/bin/python bench/memory.py --one copy 0 1024    # one: reference mode, gradient checkpointing, tokens

For SmolLM2-135M-Instruct in float32 on the CPU (AdamW, unipo's path: one padding-free row, segment
attention, the chunked head), per configuration (reference ``copy`` | ``precomputed`` | ``adapter`` with LoRA
r=16; gradient checkpointing off/on; tokens per step), in a fresh process: the resident set before the models
load, after they load, and the peak (VmHWM, reset after loading) over 2 training steps. It prints one JSON
line per configuration (``MEMORY {...}``) with the parameter counts the formulas need.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = [("precomputed", 0, 512), ("copy", 0, 512), ("copy", 1, 512), ("adapter", 0, 512), ("copy", 0, 1024)]


def pairs(tokens: int, vocab: int) -> list[dict]:
    """Pairs of prompt 128 and responses 64 + 64 tokens (256 positions each), ``tokens // 256`` of them."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(10, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [{"prompt_ids": ids(128), "chosen_ids": ids(64), "rejected_ids": ids(64)} for _ in range(tokens // 256)]


def measure(mode: str, checkpointing: bool, tokens: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from run_one import _read_status, _reset_peak_rss

    from unipo.data.batching import collate_pairs
    from unipo.models.builtin import resolve_builtin
    from unipo.models.loading import apply_lora, load_model
    from unipo.objective import Objective
    from unipo.training.reference import Reference, reference_pass
    from unipo.training.step import preference_step

    torch.manual_seed(0)
    path = str(resolve_builtin("smollm2-135m-instruct"))
    rss_start = _read_status("VmRSS")
    policy = load_model(path)
    n_params = sum(p.numel() for p in policy.parameters())
    exs = pairs(tokens, policy.config.vocab_size)
    ref_model = load_model(path, trainable=False) if mode == "copy" else None
    if mode == "precomputed":
        out = reference_pass(None, policy, collate_pairs(exs, 0, one_row=True), chunk_size=1024, need_hidden=False)
        for i, ex in enumerate(exs):
            ex["ref_chosen_logps"], ex["ref_rejected_logps"] = (out.logps.chosen[i].tolist(),
                                                                out.logps.rejected[i].tolist())
    if mode == "adapter":
        policy = apply_lora(policy, {"r": 16, "alpha": 32, "dropout": 0.0})
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if mode == "adapter":
            policy.enable_input_require_grads()
    policy.train()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-6)
    batch = collate_pairs(exs, 0, one_row=True)
    reference, objective = Reference(mode, ref_model), Objective("dpo")
    rss_loaded = _read_status("VmRSS")
    _reset_peak_rss()
    for _ in range(2):
        preference_step(policy, reference, batch, objective).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    cfg = policy.config if mode != "adapter" else policy.get_base_model().config
    return {"mode": mode, "checkpointing": checkpointing, "tokens": int(batch["input_ids"].numel()),
            "n_params": n_params, "n_trainable": sum(p.numel() for p in trainable),
            "n_embedding": cfg.vocab_size * cfg.hidden_size, "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size, "vocab": cfg.vocab_size,
            "rss_start": rss_start, "rss_loaded": rss_loaded, "peak": _read_status("VmHWM"),
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=3, metavar=("MODE", "CHECKPOINTING", "TOKENS"))
    ap.add_argument("--skip", type=int, default=0, help="skip the first N configurations")
    args = ap.parse_args(argv)
    if args.one:
        mode, ckpt, tokens = args.one
        print("MEMORY " + json.dumps(measure(mode, bool(int(ckpt)), int(tokens))), flush=True)
        return 0
    for mode, ckpt, tokens in CONFIGS[args.skip:]:
        proc = subprocess.run([sys.executable, __file__, "--one", mode, str(ckpt), str(tokens)],
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")]
        print(lines[-1] if lines else f"FAILED {mode} {ckpt} {tokens}: {proc.stderr[-2000:]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
