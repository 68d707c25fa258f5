"""The GPU check in one command (issue 16, item 3): four parts, one JSON file, about 8 minutes on one H200.

    .venv/bin/python bench/gpu.py                       # all parts, writes runs/gpu_check.json
    .venv/bin/python bench/gpu.py --parts attention,flex --out /tmp/g.json
    .venv/bin/python bench/gpu.py --device cpu --parts attention --length 300   # a dry run of part (a) on CPU

(a) ``attention``: segment attention (unipo's default) vs the dense-mask SDPA path on one padding-free row of
    preference pairs (shared prompts, chosen + rejected branches, several sequences), in bf16 and fp32, values
    and the gradients of q, k, v against a float64 dense-mask reference, for each SDPA backend forced alone
    (flash, efficient, cudnn, math) and the default dispatch: accepted or rejected, max error, time fwd+bwd.
(b) ``throughput``: unipo vs TRL's DPOTrainer (default, and with ``use_liger_kernel=True``) on a randomly
    initialised ~1.1B Llama (TinyLlama's shape) at prompts 700-1200 / responses 300-800 tokens, bf16: tokens/s,
    peak memory, MFU against a bf16 matmul peak measured in the same run (``bench/run_one.py`` subprocesses).
(c) ``flex``: torch's FlexAttention with a block mask (same sequence, causal, a key in the prompt or in the
    query's own response) vs segment attention, same inputs as (a): values, gradients, time (and the compile
    and block-mask build time apart), and which one is faster.
(d) ``fsdp``: ``accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 -m unipo train``
    on the tiny model for tdpo2 (a sharded reference) and sparsepo (a token signal inside the policy).

Without CUDA it prints one line and exits 0 (``--device cpu`` runs (a) on the CPU, to check the code: those
figures mean nothing; FlexAttention has no backward on CPU). Each part's result, or its error, is written to
the JSON as soon as it is known.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("attention", "throughput", "flex", "fsdp")


# ------------------------------------------------------------------------------------------ inputs
def attention_inputs(device: str, length: int, seed: int = 0, heads: int = 32, kv_heads: int = 8, dim: int = 64):
    """One padding-free row of preference pairs (about ``length`` tokens; pairs of prompt 700-1200 and responses
    300-800 scaled to it) with float64 q, k, v ``[1, heads, L, dim]`` (GQA), an output gradient, the segment
    spans and the dense boolean mask ``[1, 1, L, L]``."""
    import torch

    from unipo.data.batching import collate_pairs
    from unipo.layout import attention_mask_4d
    from unipo.models.segment_attention import spans_from_batch

    g = torch.Generator().manual_seed(seed)
    scale, pairs, total = length / 7600, [], 0
    while total < length:
        lp, lc, lr = (max(2, int(scale * int(torch.randint(lo, hi, (1,), generator=g))))
                      for lo, hi in ((700, 1200), (300, 800), (300, 800)))
        lp, lc, lr = min(lp, length), min(lc, length), min(lr, length)
        pairs.append({"prompt_ids": [5] * lp, "chosen_ids": [6] * lc, "rejected_ids": [7] * lr})
        total += lp + lc + lr
    batch = collate_pairs(pairs, pad_token_id=0, one_row=True)
    seg, doc = batch["segments"], batch["documents"]
    n = seg.shape[1]
    q = torch.randn(1, heads, n, dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, kv_heads, n, dim, generator=g, dtype=torch.float64)
    v = torch.randn(1, kv_heads, n, dim, generator=g, dtype=torch.float64)
    grad_out = torch.randn(1, n, heads, dim, generator=g, dtype=torch.float64)
    return {"q": q.to(device), "k": k.to(device), "v": v.to(device), "grad_out": grad_out.to(device),
            "spans": spans_from_batch(seg, doc), "mask": attention_mask_4d(seg, doc).to(device),
            "segments": seg[0].to(device), "documents": doc[0].to(device), "pairs": len(pairs), "tokens": n}


class _Module:  # what transformers' attention functions read of the attention layer
    training = False
    is_causal = True


def _segment(inp, q, k, v):
    from unipo.models.segment_attention import segment_attention

    return segment_attention(_Module(), q, k, v, None, unipo_spans=inp["spans"])[0]


def _dense(inp, q, k, v):
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, attn_mask=inp["mask"], enable_gqa=True).transpose(1, 2)


def _run(fn, inp, dtype, reps: int = 3) -> dict:
    """``fn`` forward + backward at ``dtype``: output, gradients (float64) and the median time of ``reps``."""

    def once():
        q, k, v = (inp[x].to(dtype, copy=True).requires_grad_(True) for x in "qkv")
        out = fn(inp, q, k, v)
        out.backward(inp["grad_out"].to(dtype))
        return out, q.grad, k.grad, v.grad

    res = once()  # warm-up (and compilation)
    if reps == 0:
        return {"out": [r.detach().double() for r in res], "ms": None}
    times = []
    for _ in range(reps):
        _sync(inp["q"].device)
        t = time.perf_counter()
        res = once()
        _sync(inp["q"].device)
        times.append(time.perf_counter() - t)
    return {"out": [r.detach().double() for r in res], "ms": 1000 * statistics.median(times)}


def _sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def _errors(got: list, ref: list) -> dict[str, float]:
    """Max |got − ref| / max |ref| for the output and the gradients of q, k, v."""
    names = ("out", "dq", "dk", "dv")
    return {n: float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) for n, a, b in zip(names, got, ref,
                                                                                              strict=True)}


def reference(inp) -> list:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        return _run(_dense, inp, torch.float64, reps=0)["out"]


# ------------------------------------------------------------------------------------------ (a)
def part_attention(args) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    inp = attention_inputs(args.device, args.length)
    ref = reference(inp)
    backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    rows = []
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for backend, enum in backends.items():
            for path, fn in (("segment", _segment), ("dense_mask", _dense)):
                row = {"dtype": dtype_name, "backend": backend, "path": path}
                try:
                    with sdpa_kernel([enum]) if enum is not None else _nullcontext():
                        res = _run(fn, inp, dtype)
                    row.update(accepted=True, ms_fwd_bwd=res["ms"], rel_err=_errors(res["out"], ref))
                except RuntimeError as exc:
                    row.update(accepted=False, reason=str(exc).splitlines()[0][:300])
                rows.append(row)
                log(f"attention {row}")
    return {"tokens": inp["tokens"], "pairs": inp["pairs"], "heads": 32, "kv_heads": 8, "head_dim": 64,
            "reference": "dense mask, float64, math backend", "rows": rows}


def _nullcontext():
    from contextlib import nullcontext

    return nullcontext()


# ------------------------------------------------------------------------------------------ (c)
def part_flex(args) -> dict:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    inp = attention_inputs(args.device, args.length)
    ref = reference(inp)
    seg, doc = inp["segments"], inp["documents"]

    def mask_mod(b, h, q_idx, kv_idx):
        same_piece = (seg[kv_idx] == 0) | (seg[kv_idx] == seg[q_idx])
        return (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx) & same_piece

    n = inp["tokens"]
    t = time.perf_counter()
    block_mask = create_block_mask(mask_mod, None, None, n, n, device=args.device)
    build_s = time.perf_counter() - t
    compiled = torch.compile(flex_attention)

    def flex(inp_, q, k, v):
        return compiled(q, k, v, block_mask=block_mask, enable_gqa=True).transpose(1, 2)

    out = {"tokens": n, "block_mask_build_s": build_s, "block_mask": str(block_mask)[:300], "rows": []}
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        t = time.perf_counter()
        flex_res = _run(flex, inp, dtype)
        first_s = time.perf_counter() - t
        seg_res = _run(_segment, inp, dtype)
        row = {"dtype": dtype_name, "flex_ms_fwd_bwd": flex_res["ms"], "segment_ms_fwd_bwd": seg_res["ms"],
               "flex_first_call_s": first_s, "flex_rel_err": _errors(flex_res["out"], ref),
               "segment_rel_err": _errors(seg_res["out"], ref),
               "faster": "flex" if flex_res["ms"] < seg_res["ms"] else "segment"}
        out["rows"].append(row)
        log(f"flex {row}")
    return out


def log(msg: str) -> None:
    print(f"[gpu] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ (b)
def gpu_model(out_dir: Path) -> Path:
    """A randomly initialised ~1.1B Llama (TinyLlama's shape, SmolLM2's vocabulary size 49152) with the tiny
    test tokenizer (built here: nothing to download; the ids are synthetic anyway)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unipo.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    config = LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def part_throughput(args) -> dict:
    sys.path.insert(0, str(HERE))
    import compare  # bench/compare.py: the same subprocess runner, summary and MFU as the CPU benchmark

    entries = [("unipo dpo (copy ref)", "unipo", "default", "dpo", {}),
               ("TRL default", "trl", "default", "dpo", {}),
               ("TRL default + use_liger_kernel", "trl", "default", "dpo", {"liger": 1})]
    peak = compare.matmul_peak("cuda", "bf16", 8192)
    out: dict = {"matmul_peak_flops": peak, "peak_desc": "bf16 8192x8192 matmul, best of 5", "rows": {}}
    with tempfile.TemporaryDirectory(prefix="unipo-gpu-") as tmp:
        model = str(gpu_model(Path(tmp) / "model"))
        n = (args.warmup + args.steps) * args.batch_size
        data = Path(tmp) / "pairs.json"
        data.write_text(json.dumps(compare.synthetic_pairs(49152, n, (700, 1200), (300, 800), seed=1)))
        opts = {"batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps, "precision": "bf16",
                "max_length": 4096}
        for name, framework, mode, variant, extra in entries:
            if extra.get("liger") and not _importable("liger_kernel"):
                out["rows"][name] = {"skipped": "liger-kernel is not installed (pip install liger-kernel)"}
                continue
            try:
                runs = [compare.run_one(model, data, framework, mode, variant, {**opts, **extra})]
                out["rows"][name] = compare.summarise(name, runs, args.warmup, peak)
            except RuntimeError as exc:
                out["rows"][name] = {"error": str(exc)[-2000:]}
            log(f"throughput {name}: {out['rows'][name].get('tok_s', out['rows'][name])}")
    out["matmul_peak_after_flops"] = compare.matmul_peak("cuda", "bf16", 8192)
    return out


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ------------------------------------------------------------------------------------------ (d)
def part_fsdp(args) -> dict:
    from unipo.testing import make_tiny_model

    out = {}
    with tempfile.TemporaryDirectory(prefix="unipo-gpu-fsdp-") as tmp:
        model = make_tiny_model(Path(tmp) / "tiny")
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}",
                                            "rejected": f"{2 * i + 1} maybe"}) + "\n" for i in range(8)))
        for variant in ("tdpo2", "sparsepo"):
            run_dir = Path(tmp) / variant
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1", "-m", "unipo",
                   "train", "--model", str(model), "--data", str(data), "--variant", variant, "--output-dir",
                   str(run_dir), "--max-steps", "2", "--per-device-batch-size", "2", "--no-progress",
                   "--save-steps", "1", "--set", "plots=false"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
            metrics = run_dir / "metrics.jsonl"
            steps = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
            out[variant] = {"returncode": proc.returncode, "seconds": time.perf_counter() - t,
                            "losses": [s["loss"] for s in steps if "loss" in s],
                            "checkpoints": sorted(p.name for p in run_dir.glob("checkpoint-*")),
                            "stderr_tail": proc.stderr[-3000:], "command": " ".join(cmd)}
            log(f"fsdp {variant}: exit {proc.returncode}, losses {out[variant]['losses']}")
    return out


# ------------------------------------------------------------------------------------------ main
def environment(device: str) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": device, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   gpu_memory_bytes=torch.cuda.get_device_properties(0).total_memory)
    for name in ("trl", "accelerate", "liger_kernel"):
        try:
            env[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            env[name] = None
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check.json", help="the JSON file written")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: a dry run of the attention part (checks the code; figures mean nothing)")
    ap.add_argument("--length", type=int, default=7600, help="tokens in the attention row (a, c)")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step (b)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps (b)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (b)")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu.py: no CUDA device here (torch {torch.__version__}): nothing measured, no JSON written")
        return 0
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown or (args.device == "cpu" and set(parts) - {"attention"}):
        ap.error(f"parts: {', '.join(PARTS)} (on --device cpu: attention only); got {args.parts}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"environment": environment(args.device), "parts": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for part in parts:
        t = time.perf_counter()
        try:
            result["parts"][part] = globals()[f"part_{part}"](args)
        except Exception as exc:  # one part's failure is a result too: the others still run
            result["parts"][part] = {"error": f"{type(exc).__name__}: {exc}"[-3000:]}
        result["parts"][part]["seconds"] = time.perf_counter() - t
        result["total_seconds"] = time.perf_counter() - start
        args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"bench/gpu.py: {', '.join(parts)} in {result['total_seconds']:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
