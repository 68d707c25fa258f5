"""The parts of the GPU check (bench/gpu.py runs each one in its own process, inside a deadline).

Each ``part_<name>(args, rec)`` fills ``rec.data`` and calls ``rec.save()`` as soon as a row is known, so a
part killed at the budget still leaves its finished rows. ``args.device`` is ``cuda`` on the lent machine or
``cpu`` for the dry run here (tiny shapes: the figures mean nothing, the code paths are exercised).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: seconds a throughput entry needs at least (model load, warm-up, timed steps) before its deadline (H100 guess)
ENTRY_MIN_S = {"cuda": 50, "cpu": 20}


class PartRecord:
    """A part's result, rewritten to ``path`` (JSON) on every ``save()``."""

    def __init__(self, path: Path, deadline: float):
        self.path, self.deadline, self.data = path, deadline, {}

    def left(self) -> float:
        """Seconds to the deadline, less 5 s for this process to write its record and end before the kill."""
        return self.deadline - time.time() - 5

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def log(msg: str) -> None:
    print(f"[gpu] {msg}", file=sys.stderr, flush=True)


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


def _run(fn, inp, dtype, reps: int = 3, grad: bool = True) -> dict:
    """``fn`` forward (+ backward) at ``dtype``: output, gradients (float64) and the median time of ``reps``."""

    def once():
        q, k, v = (inp[x].to(dtype, copy=True).requires_grad_(grad) for x in "qkv")
        out = fn(inp, q, k, v)
        if grad:
            out.backward(inp["grad_out"].to(dtype))
        return out, q.grad, k.grad, v.grad

    res = once()  # warm-up (and compilation)
    times = []
    for _ in range(reps):
        _sync(inp["q"].device)
        t = time.perf_counter()
        res = once()
        _sync(inp["q"].device)
        times.append(time.perf_counter() - t)
    return {"out": [None if r is None else r.detach().double() for r in res],
            "ms": 1000 * statistics.median(times) if times else None}


def _sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def errors(got: list, ref: list) -> dict[str, float | None]:
    """Max |got − ref| / max |ref| for the output and the gradients of q, k, v (None where not computed)."""
    names = ("out", "dq", "dk", "dv")
    return {n: None if a is None else float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
            for n, a, b in zip(names, got, ref, strict=True)}


def reference(inp) -> list:
    """Output and q/k/v gradients in float64 through the dense mask and SDPA's math backend, one kv-head group
    at a time (GQA: query heads ``j·r … j·r+r−1`` read kv head ``j``), so that the float64 score matrices of
    a 7600-token row need a few GB, not all 32 heads' at once."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, g = inp["q"], inp["k"], inp["v"], inp["grad_out"]
    rep = q.shape[1] // k.shape[1]
    parts: list[list] = [[], [], [], []]
    with sdpa_kernel([SDPBackend.MATH]):
        for j in range(k.shape[1]):
            qs = q[:, j * rep:(j + 1) * rep].clone().requires_grad_(True)
            ks, vs = (x[:, j:j + 1].clone().requires_grad_(True) for x in (k, v))
            out = _dense(inp, qs, ks, vs)
            out.backward(g[:, :, j * rep:(j + 1) * rep])
            for acc, x in zip(parts, (out.detach(), qs.grad, ks.grad, vs.grad), strict=True):
                acc.append(x)
    return [torch.cat(parts[0], dim=2)] + [torch.cat(p, dim=1) for p in parts[1:]]


# ------------------------------------------------------------------------------------------ attention
def part_attention(args, rec: PartRecord) -> None:
    """Segment attention vs the dense-mask SDPA path, bf16 and fp32, every SDPA backend forced alone and the
    default dispatch: accepted or rejected, max relative error against the float64 reference, time."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    inp = attention_inputs(args.device, args.length)
    ref = reference(inp)
    rec.data.update(tokens=inp["tokens"], pairs=inp["pairs"], heads=32, kv_heads=8, head_dim=64,
                    reference="dense mask, float64, math backend, per kv-head group", rows=[])
    backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for backend, enum in backends.items():
            for path, fn in (("segment", _segment), ("dense_mask", _dense)):
                row = {"dtype": dtype_name, "backend": backend, "path": path}
                try:
                    with sdpa_kernel([enum]) if enum is not None else nullcontext():
                        res = _run(fn, inp, dtype)
                    row.update(accepted=True, ms_fwd_bwd=res["ms"], rel_err=errors(res["out"], ref))
                except RuntimeError as exc:
                    row.update(accepted=False, reason=str(exc).splitlines()[0][:300])
                rec.data["rows"].append(row)
                rec.save()
                log(f"attention {row}")


# ------------------------------------------------------------------------------------------ flex
def part_flex(args, rec: PartRecord) -> None:
    """FlexAttention (a block mask: same sequence, causal, a key in the prompt or the query's own response)
    vs segment attention on the attention part's inputs. On CUDA: ``torch.compile``d, forward+backward, bf16
    then fp32 (fp32 only if 90 s are left). On the CPU (no FlexAttention backward there): eager, forward only."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    inp = attention_inputs(args.device, args.length)
    ref = reference(inp)
    seg, doc = inp["segments"], inp["documents"]

    def mask_mod(b, h, q_idx, kv_idx):
        same_piece = (seg[kv_idx] == 0) | (seg[kv_idx] == seg[q_idx])
        return (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx) & same_piece

    n, cuda = inp["tokens"], args.device == "cuda"
    t = time.perf_counter()
    block_mask = create_block_mask(mask_mod, None, None, n, n, device=args.device)
    rec.data.update(tokens=n, block_mask_build_s=time.perf_counter() - t, block_mask=str(block_mask)[:300],
                    compiled=cuda, backward=cuda, rows=[])
    attend = torch.compile(flex_attention) if cuda else flex_attention

    def flex(inp_, q, k, v):
        return attend(q, k, v, block_mask=block_mask, enable_gqa=True).transpose(1, 2)

    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        if dtype_name == "fp32" and cuda and rec.left() < 90:
            rec.data["rows"].append({"dtype": "fp32", "skipped": f"{rec.left():.0f} s left, 90 needed"})
            break
        t = time.perf_counter()
        flex_res = _run(flex, inp, dtype, grad=cuda)
        first_s = time.perf_counter() - t
        seg_res = _run(_segment, inp, dtype, grad=cuda)
        row = {"dtype": dtype_name, "flex_ms": flex_res["ms"], "segment_ms": seg_res["ms"],
               "timed": "forward+backward" if cuda else "forward", "flex_first_calls_s": first_s,
               "flex_rel_err": errors(flex_res["out"], ref), "segment_rel_err": errors(seg_res["out"], ref),
               "faster": "flex" if flex_res["ms"] < seg_res["ms"] else "segment"}
        rec.data["rows"].append(row)
        rec.save()
        log(f"flex {row}")


# ------------------------------------------------------------------------------------------ throughput
def gpu_model(out_dir: Path, device: str) -> Path:
    """A randomly initialised ~1.1B Llama (TinyLlama's shape, SmolLM2's vocabulary size 49152), built on the
    device and saved in bf16, with the tiny test tokenizer (nothing to download; the ids are synthetic)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unipo.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    config = LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the run_one processes need the GPU's memory, not this one's cache
    return out_dir


#: (name, framework, mode, extra run_one options) per throughput part, in order of value
THROUGHPUT = {
    "throughput": [("unipo dpo (copy ref)", "unipo", "default", {}),
                   ("TRL default", "trl", "default", {}),
                   ("TRL default + use_liger_kernel", "trl", "default", {"liger": 1})],
    "throughput_best": [("unipo dpo (precomputed ref)", "unipo", "best", {}),
                        ("TRL best (precompute_ref_log_probs)", "trl", "best", {})],
}


def _throughput_setup(args, tmp: Path) -> tuple[str, Path, dict, tuple]:
    """The model, the pairs file and run_one's options: the ~1.1B model at HH-like long lengths on CUDA, the
    tiny test model at short lengths on the CPU."""
    import compare

    n = (args.warmup + args.steps) * args.batch_size
    if args.device == "cuda":
        model, vocab, precision = str(gpu_model(tmp / "model", "cuda")), 49152, "bf16"
        lengths = ((700, 1200), (300, 800))
    else:
        from unipo.testing import make_tiny_model

        model, vocab, lengths, precision = str(make_tiny_model(tmp / "tiny")), 300, ((8, 24), (4, 12)), "fp32"
    data = tmp / "pairs.json"
    data.write_text(json.dumps(compare.synthetic_pairs(vocab, n, *lengths, seed=1)))
    opts = {"batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps, "precision": precision,
            "max_length": 4096}
    return model, data, opts, lengths


def part_throughput(args, rec: PartRecord, which: str = "throughput") -> None:
    """unipo vs TRL's DPOTrainer (default, with Liger; or both with a precomputed reference) on the same
    pairs, one ``bench/run_one.py`` process per entry; an entry that cannot finish before the deadline is
    skipped and said. tokens/s, peak memory, MFU against a bf16 8192² matmul measured in this process."""
    sys.path.insert(0, str(HERE))
    import compare  # bench/compare.py: the same subprocess runner, summary and MFU as the CPU benchmark

    peak_desc = "bf16 8192x8192 matmul, best of 5" if args.device == "cuda" else "fp32 1024x1024 matmul, best of 5"
    peak = compare.matmul_peak(args.device, "bf16", 8192) if args.device == "cuda" else \
        compare.matmul_peak("cpu", "fp32", 1024)
    if args.device == "cuda":
        import torch

        torch.cuda.empty_cache()
    rec.data.update(matmul_peak_flops=peak, peak_desc=peak_desc, rows={})
    with tempfile.TemporaryDirectory(prefix="unipo-gpu-") as tmp:
        model, data, opts, lengths = _throughput_setup(args, Path(tmp))
        rec.data.update(opts=opts, prompt_response_lengths=lengths)
        for name, framework, mode, extra in THROUGHPUT[which]:
            rec.data["rows"][name] = _throughput_entry(args, rec, compare, model, data, (framework, mode),
                                                        {**opts, **extra}, peak)
            rec.save()
            log(f"{which} {name}: {rec.data['rows'][name].get('tok_s', rec.data['rows'][name])}")
    if args.device == "cuda":
        rec.data["matmul_peak_after_flops"] = compare.matmul_peak("cuda", "bf16", 8192)
    rec.save()


def _throughput_entry(args, rec, compare, model, data, how, opts, peak) -> dict:
    from importlib.util import find_spec

    if opts.get("liger") and args.device != "cuda":
        return {"skipped": "Liger's kernels are Triton GPU kernels: CUDA only"}
    if opts.get("liger") and find_spec("liger_kernel") is None:
        return {"skipped": "liger-kernel is not installed (bench/gpu_kit.py carries it)"}
    if rec.left() < ENTRY_MIN_S[args.device]:
        return {"skipped": f"would overrun the budget: {rec.left():.0f} s left, {ENTRY_MIN_S[args.device]} needed"}
    try:
        run = compare.run_one(model, data, *how, "dpo", opts, timeout=rec.left())
        row = compare.summarise("", [run], args.warmup, peak) | {"load_s": run["load_s"], "wall_s": run["wall_s"]}
        row.pop("name")
        return row
    except RuntimeError as exc:
        return {"error": str(exc)[-2000:]}


def part_throughput_best(args, rec: PartRecord) -> None:
    part_throughput(args, rec, "throughput_best")


# ------------------------------------------------------------------------------------------ fsdp
def part_fsdp(args, rec: PartRecord) -> None:
    """``accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 -m unipo train`` on the
    tiny model for tdpo2 (a sharded reference) and sparsepo (a token signal inside the policy)."""
    from unipo.testing import make_tiny_model
    from unipo.training.rundir import RunDir

    with tempfile.TemporaryDirectory(prefix="unipo-gpu-fsdp-") as tmp:
        model = make_tiny_model(Path(tmp) / "tiny")
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}",
                                            "rejected": f"{2 * i + 1} maybe"}) + "\n" for i in range(8)))
        for variant in ("tdpo2", "sparsepo"):
            if rec.left() < 30:
                rec.data[variant] = {"skipped": f"would overrun the budget: {rec.left():.0f} s left, 30 needed"}
                continue
            run_dir = Path(tmp) / variant
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1", "-m", "unipo",
                   "train", "--model", str(model), "--data", str(data), "--variant", variant, "--output-dir",
                   str(run_dir), "--max-steps", "2", "--per-device-batch-size", "2", "--no-progress",
                   "--save-steps", "1", "--set", "plots=false"]
            t = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=rec.left(), cwd=ROOT)
            except subprocess.TimeoutExpired:
                rec.data[variant] = {"killed": f"at the budget after {time.perf_counter() - t:.0f} s"}
                continue
            steps = RunDir(run_dir).metrics()
            rec.data[variant] = {"returncode": proc.returncode, "seconds": time.perf_counter() - t,
                                 "losses": [s["loss"] for s in steps if "loss" in s],
                                 "checkpoints": sorted(p.name for p in RunDir(run_dir).checkpoints()),
                                 "stderr_tail": proc.stderr[-3000:], "command": " ".join(cmd)}
            rec.save()
            log(f"fsdp {variant}: exit {proc.returncode}, losses {rec.data[variant]['losses']}")
