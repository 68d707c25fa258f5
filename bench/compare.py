"""unipo vs TRL's DPOTrainer, side by side: same model, data, batch, lengths, precision, optimiser and steps.

    .venv/bin/python bench/compare.py            # CPU: smollm2-135m-instruct on HH-like lengths
    .venv/bin/python bench/compare.py --quick    # unipo vs TRL default only, 1 timed step
    .venv/bin/python bench/compare.py --quick --tiny   # a tiny random model, 2 steps (smoke test)
    .venv/bin/python bench/compare.py --batch-size 4 --warmup 3 --steps 8 --reps 2 --data FULL.jsonl.gz  # full schedule

The CPU configuration's pairs come from ``--data`` (default: the committed 200-row HH-RLHF slice in tests/data,
42 pairs in the length ranges; the issue's full schedule needs 44, so give it the full harmless-base test file).

Every measurement is a fresh subprocess (``bench/run_one.py``), alternating unipo and TRL (A B A B ...), and
reports medians over the timed steps after warm-up. The GPU configuration (a randomly initialised ~1B
Llama-style model at 1-2k tokens, bf16) runs only when CUDA is available. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
#: the default ``--data``: the first 200 rows of HH-RLHF harmless-base test, committed (tests/data/README.md)
HH_FILE = HERE.parent / "tests" / "data" / "hh-rlhf-harmless-base-test-200.jsonl.gz"

#: (name, framework, mode, variant): what one configuration measures, in this order each repetition
ENTRIES = [
    ("unipo dpo (copy ref)", "unipo", "default", "dpo"),
    ("TRL default", "trl", "default", "dpo"),
    ("unipo dpo (precomputed ref)", "unipo", "best", "dpo"),
    ("TRL best (precompute_ref_log_probs)", "trl", "best", "dpo"),
    ("unipo tdpo2 (copy ref)", "unipo", "default", "tdpo2"),
    ("unipo tisdpo (copy ref, KL)", "unipo", "default", "tisdpo"),
    # the first run without segment attention and padding-free rows: what they save
    ("unipo dpo (copy ref, dense mask, no packing)", "unipo", "default", "dpo", {"attention": "sdpa", "packing": 0}),
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- data
def _weights(rng: random.Random, n: int) -> list[float]:
    return [round(rng.uniform(0.5, 1.5), 3) for _ in range(n)]


def hh_pairs(data: Path, model_path: str, n: int, prompt_range, response_range, seed: int) -> list[dict] | None:
    """The first ``n`` pairs of the preference file ``data`` (HH-RLHF harmless test by default) whose prompt and
    both responses fall in the length ranges (tokens, this model's tokenizer), in file order; None when the
    file has fewer than ``n`` such pairs."""
    from unipo.data.tokenize import prepare_pairs
    from unipo.models.loading import load_tokenizer

    tok = load_tokenizer(model_path)
    pairs, _ = prepare_pairs(str(data), tok, max_length=1_000_000, max_prompt_length=None,
                             on_invalid="skip")
    rng = random.Random(seed)
    out = []
    for p in pairs:
        lp, lc, lr = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
        if prompt_range[0] <= lp <= prompt_range[1] and all(response_range[0] <= x <= response_range[1]
                                                            for x in (lc, lr)):
            out.append({"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids,
                        "chosen_weights": _weights(rng, lc), "rejected_weights": _weights(rng, lr)})
        if len(out) == n:
            break
    return out if len(out) == n else None


def synthetic_pairs(vocab: int, n: int, prompt_range, response_range, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lp, lc, lr = rng.randint(*prompt_range), rng.randint(*response_range), rng.randint(*response_range)
        ids = [rng.randrange(10, vocab) for _ in range(lp + lc + lr)]
        out.append({"prompt_ids": ids[:lp], "chosen_ids": ids[lp:lp + lc], "rejected_ids": ids[lp + lc:],
                    "chosen_weights": _weights(rng, lc), "rejected_weights": _weights(rng, lr)})
    return out


# -------------------------------------------------------------------------------------------- peaks
def matmul_peak(device: str, dtype_name: str, size: int, reps: int = 5) -> float:
    """Best FLOP/s of a ``size``×``size`` matmul on this machine at this precision (same thread count as the
    runs: torch's default)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    (a @ b)
    best = float("inf")
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        (a @ b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best


def make_gpu_model(out_dir: Path, tokenizer_path: str) -> Path:
    """A randomly initialised ~1.1B Llama-style model (TinyLlama's shape) saved with a real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------- runs
def run_one(model: str, data: Path, framework: str, mode: str, variant: str, opts: dict,
            timeout: float | None = None) -> dict:
    """One ``run_one.py`` process; RuntimeError (with its stderr's end) when it fails or outlives ``timeout`` s."""
    cmd = [sys.executable, str(HERE / "run_one.py"), "--framework", framework, "--mode", mode,
           "--variant", variant, "--model", model, "--data", str(data)]
    for k, v in opts.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise RuntimeError(f"{' '.join(cmd)} killed after {timeout:.0f} s (the budget):\n{err[-3000:]}") from exc
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("BENCH_RESULT "):])
    result["wall_s"] = time.perf_counter() - t
    return result


def fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def summarise(name: str, runs: list[dict], warmup: int, peak_flops: float) -> dict:
    timed = [s for r in runs for s in r["step_s"][warmup:]]
    per_rep = [statistics.median(r["step_s"][warmup:]) for r in runs]
    tokens = runs[0]["policy_tokens"][warmup:]
    for r in runs:
        assert r["policy_tokens"] == runs[0]["policy_tokens"], "repetitions saw different batches"
    step = statistics.median(timed)
    tok_per_step = statistics.mean(tokens)
    # per step: 6·N per position for the policy forward+backward, 2·N for a resident reference forward, over
    # the real (non-padding) positions the framework runs: hardware utilisation for the work it chose to do
    # (counting logical tokens instead would credit unipo for prompts it does not recompute: MFU > 100%)
    n = runs[0]["n_params"]
    real_per_step = statistics.mean(runs[0]["real_positions"][warmup:])
    flops = (6 + (2 if runs[0]["resident_models"] == 2 else 0)) * n * real_per_step
    peaks = [r["peak_train_bytes"] for r in runs if r["peak_train_bytes"] is not None]
    return {
        "name": name, "step_s": step, "tok_s": tok_per_step / step, "tok_per_step": tok_per_step,
        "rep_medians": per_rep, "spread": (max(per_rep) - min(per_rep)) / step if len(per_rep) > 1 else None,
        "step_spread": (max(timed) - min(timed)) / step,
        "step_min": min(timed), "step_max": max(timed),
        "peak": max(peaks) if peaks else None,
        "peak_process": max(r["peak_rss_process_bytes"] for r in runs),
        "mfu": flops / step / peak_flops, "first_loss": runs[0]["losses"][0],
        "policy_tokens": runs[0]["policy_tokens"], "computed_positions": runs[0]["computed_positions"],
        "real_positions": runs[0]["real_positions"], "precompute_s": runs[0]["setup"].get("precompute_s"),
    }


def run_config(label: str, model: str, data: Path, entries, reps: int, opts: dict, peak_flops: float,
               peak_desc: str, device_mem: str) -> dict:
    results: dict[str, list[dict]] = {e[0]: [] for e in entries}
    for rep in range(reps):
        order = entries if rep % 2 == 0 else entries[::-1]  # A B ... then ... B A: no side always runs first
        for name, framework, mode, variant, *extra in order:
            r = run_one(model, data, framework, mode, variant, {**opts, **(extra[0] if extra else {})})
            results[name].append(r)
            log(f"{label} rep {rep + 1}/{reps} {name}: median step "
                f"{statistics.median(r['step_s'][opts['warmup']:]):.3f} s, wall {r['wall_s']:.0f} s")
    rows = {name: summarise(name, runs, opts["warmup"], peak_flops) for name, runs in results.items() if runs}
    return {"label": label, "rows": rows, "peak_desc": peak_desc, "device_mem": device_mem, "opts": opts}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fr(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def report(cfg: dict) -> dict:
    rows = cfg["rows"]
    print(f"\n=== {cfg['label']} ===")
    print(f"matmul peak: {cfg['peak_desc']}; memory = {cfg['device_mem']}")
    head = (f"{'run':38s} {'tok/s':>8s} {'s/step':>7s} {'min-max s':>13s} {'spread':>7s} {'rep spr':>7s} "
            f"{'peak mem':>10s} {'proc RSS':>10s} {'MFU':>6s} {'loss@1':>8s} {'tok/step':>8s} {'pos/step':>8s}")
    print(head)
    print("-" * len(head))
    for r in rows.values():
        print(f"{r['name']:38s} {r['tok_s']:8.1f} {r['step_s']:7.3f} "
              f"{r['step_min']:6.2f}-{r['step_max']:<6.2f} {100 * r['step_spread']:6.1f}% "
              f"{fr(r['spread'] and 100 * r['spread'], '.1f'):>7s} "
              f"{fmt_bytes(r['peak']):>10s} {fmt_bytes(r['peak_process']):>10s} {100 * r['mfu']:5.1f}% "
              f"{r['first_loss']:8.5f} {statistics.mean(r['policy_tokens']):8.0f} "
              f"{statistics.mean(r['computed_positions']):8.0f}")
    print("tok/s, tok/step: policy tokens = prompt+chosen + prompt+rejected per pair (the logical work, the same "
          "for both; unipo computes each prompt once); pos/step: positions actually run through the model, "
          "padding included")
    print("spread: (max - min) / median of the timed steps; rep spr: the same over the repetitions' medians (%)")
    print("MFU: (6 N [+ 2 N for a resident reference]) x real (non-padding) positions per step / s/step / matmul "
          "peak, N = all parameters")
    for r in rows.values():
        if r["precompute_s"] is not None:
            print(f"  {r['name']}: reference precompute {r['precompute_s']:.1f} s before training (not in s/step)")

    u, t = rows.get("unipo dpo (copy ref)"), rows.get("TRL default")
    ub, tb = rows.get("unipo dpo (precomputed ref)"), rows.get("TRL best (precompute_ref_log_probs)")
    out: dict = {"label": cfg["label"]}
    checks = []
    for a, b in ((u, t), (ub, tb), (u, tb)):
        if a and b:
            same_tokens = a["policy_tokens"] == b["policy_tokens"]
            dloss = abs(a["first_loss"] - b["first_loss"])
            checks.append((a["name"], b["name"], same_tokens, dloss))
            print(f"check {a['name']} vs {b['name']}: per-batch policy tokens equal: "
                  f"{'yes' if same_tokens else 'NO'} ({sum(a['policy_tokens'])} vs {sum(b['policy_tokens'])}); "
                  f"first-batch loss {a['first_loss']:.6f} vs {b['first_loss']:.6f} (|diff| {dloss:.1e}, "
                  f"{'ok' if dloss < 1e-3 else 'MISMATCH'}; log 2 = 0.693147)")
    out["checks_ok"] = all(s and d < 1e-3 for _, _, s, d in checks) and bool(checks)
    if u and t:
        out["tput_vs_default"] = ratio(u["tok_s"], t["tok_s"])
        out["mem_vs_default"] = ratio(u["peak"], t["peak"])
    if u and tb:
        out["tput_copy_vs_best"] = ratio(u["tok_s"], tb["tok_s"])
        out["mem_copy_vs_best"] = ratio(u["peak"], tb["peak"])
    if ub and tb:
        out["tput_vs_best"] = ratio(ub["tok_s"], tb["tok_s"])
        out["mem_vs_best"] = ratio(ub["peak"], tb["peak"])
    for key, name in (("tdpo2", "unipo tdpo2 (copy ref)"), ("tisdpo", "unipo tisdpo (copy ref, KL)")):
        if u and name in rows:
            out[f"{key}_vs_dpo"] = ratio(rows[name]["step_s"], u["step_s"])
    out["mfu_unipo"] = u["mfu"] if u else None
    out["mfu_trl"] = t["mfu"] if t else None
    print("ratios unipo / TRL (throughput: higher is better; memory: lower is better):")
    goals = [
        ("throughput, unipo copy / TRL default", out.get("tput_vs_default"), ">=", 2.0),
        ("throughput, unipo precomputed / TRL best", out.get("tput_vs_best"), ">=", 1.3),
        ("throughput, unipo copy / TRL best", out.get("tput_copy_vs_best"), ">=", 1.3),
        ("peak memory, unipo copy / TRL default", out.get("mem_vs_default"), "<=", 0.6),
        ("peak memory, unipo precomputed / TRL best", out.get("mem_vs_best"), "<=", 0.6),
        ("step time, tdpo2 / dpo (unipo)", out.get("tdpo2_vs_dpo"), "<=", 1.3),
        ("step time, tisdpo / dpo (unipo)", out.get("tisdpo_vs_dpo"), "<=", 1.3),
    ]
    dense = rows.get("unipo dpo (copy ref, dense mask, no packing)")
    if u and dense:
        out["segment_attention_speedup"] = ratio(u["tok_s"], dense["tok_s"])
        print(f"  segment attention + one padding-free row vs dense 4-D mask + padded rows (unipo dpo): "
              f"{out['segment_attention_speedup']:.2f}x "
              f"(positions per step {statistics.mean(u['computed_positions']):.0f} vs "
              f"{statistics.mean(dense['computed_positions']):.0f})")
    for what, value, op, target in goals:
        if value is None:
            continue
        met = value >= target if op == ">=" else value <= target
        print(f"  {what:45s} {value:6.2f}x   goal {op} {target}x: {'met' if met else 'MISSED'}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="unipo dpo vs TRL default only, 1 warm-up + 1 timed step (--tiny: all runs, 2 steps)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model and short synthetic pairs (smoke test)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of every run (default 1)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per run (default 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 4; --quick 1)")
    ap.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 4; --quick 1; --tiny 2)")
    ap.add_argument("--only", default=None, help="comma-separated frameworks/variants to keep, e.g. 'dpo'")
    ap.add_argument("--no-token-level", action="store_true", help="skip the unipo tdpo2 / tisdpo runs")
    ap.add_argument("--json", default=None, help="also write all results to this file")
    ap.add_argument("--data", type=Path, default=HH_FILE, metavar="PATH",
                    help="preference pairs for the CPU configuration (any format unipo reads; default: the "
                         "committed 200-row HH-RLHF slice, which has 42 pairs in the length ranges; the full "
                         "harmless-base test file has enough for any schedule)")
    args = ap.parse_args(argv)
    if not args.tiny and not args.data.is_file():
        ap.error(f"--data {args.data}: no such file")

    import torch
    import transformers
    import trl

    reps, warmup = args.reps, args.warmup
    steps = args.steps or (2 if args.tiny else 1 if args.quick else 4)
    batch = args.batch_size or (2 if args.tiny else 1 if args.quick else 4)
    entries = ENTRIES if args.tiny or not args.quick else ENTRIES[:2]
    if args.no_token_level:
        entries = [e for e in entries if e[3] == "dpo"]
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    print(f"unipo vs TRL DPOTrainer · python {platform.python_version()} · torch {torch.__version__} · "
          f"transformers {transformers.__version__} · trl {trl.__version__}")
    cuda = "yes: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, CUDA {cuda}")
    print(f"load average at start (1/5/15 min): {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
          f"(other users of this machine share its CPUs)")
    print(f"runs: {reps} repetition(s) × {len(entries)} runs per configuration, each a fresh subprocess, "
          f"alternating order; {warmup} warm-up + {steps} timed steps, {batch} pairs/step, AdamW lr 1e-6, "
          f"grad accumulation 1, no gradient checkpointing, sequential order on both sides")

    summaries = []
    all_results = []
    with tempfile.TemporaryDirectory(prefix="unipo-bench-") as tmp:
        tmp = Path(tmp)
        n_pairs = (warmup + steps) * batch
        configs = []
        if args.tiny:
            from unipo.testing import make_tiny_model

            model = str(make_tiny_model(tmp / "tiny"))
            pairs = synthetic_pairs(300, n_pairs, (8, 24), (4, 16), seed=0)
            configs.append(("tiny random Llama (CPU, fp32)", model, pairs, "synthetic token ids: prompts 8-24, "
                            "responses 4-16 tokens", "cpu", "fp32", 1024))
        else:
            from unipo.models.builtin import resolve_builtin

            model = str(resolve_builtin("smollm2-135m-instruct"))
            pairs = hh_pairs(args.data, model, n_pairs, (100, 400), (30, 200), seed=0)
            source = (f"{args.data.name}: the first {n_pairs} pairs (file order) with prompts of 100-400 and "
                      f"responses of 30-200 tokens")
            if pairs is None:
                from transformers import AutoConfig

                pairs = synthetic_pairs(AutoConfig.from_pretrained(model).vocab_size, n_pairs, (100, 400),
                                        (30, 200), seed=0)
                source = (f"synthetic token ids ({args.data.name} has fewer than {n_pairs} pairs in these "
                          f"ranges; give a larger file with --data): prompts 100-400, responses 30-200 tokens")
                log(f"{args.data}: fewer than {n_pairs} pairs in the length ranges; using synthetic token ids")
            configs.append(("smollm2-135m-instruct (CPU, fp32)", model, pairs, source, "cpu", "fp32", 2048))
            if torch.cuda.is_available():
                from unipo.models.loading import choose_precision

                gpu_model = str(make_gpu_model(tmp / "gpu1b", model))
                prec = choose_precision("auto")
                gpu_pairs = synthetic_pairs(49152, n_pairs, (700, 1200), (300, 800), seed=1)
                configs.append((f"random ~1.1B Llama (CUDA, {prec})", gpu_model, gpu_pairs,
                                "synthetic token ids: prompts 700-1200, responses 300-800 tokens (1-2k per "
                                "sequence)", "cuda", prec, 8192))
        for label, model_path, cfg_pairs, source, device, prec, mm_size in configs:
            data_file = tmp / f"pairs-{len(summaries)}.json"
            data_file.write_text(json.dumps(cfg_pairs))
            lp = statistics.mean(len(p["prompt_ids"]) for p in cfg_pairs)
            lr = statistics.mean(len(p[k]) for p in cfg_pairs for k in ("chosen_ids", "rejected_ids"))
            print(f"\n{label}: data {source}; mean prompt {lp:.0f}, mean response {lr:.0f} tokens")
            peak = matmul_peak(device, prec, mm_size)
            peak_desc = f"{peak / 1e9:.1f} GFLOP/s ({prec} {mm_size}x{mm_size} matmul, best of 5, measured now)"
            opts = {"batch_size": batch, "warmup": warmup, "steps": steps, "precision": prec}
            if device == "cuda":
                cfg_entries = entries
                mem = "max allocated GPU bytes during training"
            else:
                cfg_entries = entries
                mem = "peak RSS during training (VmHWM reset at train begin); proc RSS = whole-process ru_maxrss"
            if args.only:
                keep = set(args.only.split(","))
                cfg_entries = [e for e in cfg_entries if e[1] in keep or e[3] in keep]
            cfg = run_config(label, model_path, data_file, cfg_entries, reps, opts, peak, peak_desc, mem)
            all_results.append(cfg)
            summaries.append(report(cfg))
            peak_after = matmul_peak(device, prec, mm_size)
            print(f"matmul peak re-measured after the runs: {peak_after / 1e9:.1f} GFLOP/s")
    load_end = os.getloadavg()
    print(f"\nload average at end (1/5/15 min): {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
          f"total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"configs": all_results, "summaries": summaries,
                                               "load_start": load_start, "load_end": load_end},
                                              default=str, indent=1))
    parts = []
    for s in summaries:
        name = s["label"].split(" (")[0]
        bits = [f"tput x{fr(s.get('tput_vs_default'))} vs TRL default",
                f"x{fr(s.get('tput_vs_best'))} vs TRL best (precomputed both; unipo copy "
                f"x{fr(s.get('tput_copy_vs_best'))})",
                f"mem x{fr(s.get('mem_vs_default'))} / x{fr(s.get('mem_vs_best'))}"]
        if "tdpo2_vs_dpo" in s or "tisdpo_vs_dpo" in s:
            bits.append(f"tdpo2/dpo x{fr(s.get('tdpo2_vs_dpo'))} tisdpo/dpo x{fr(s.get('tisdpo_vs_dpo'))}")
        bits.append(f"MFU unipo {fr(s['mfu_unipo'] and 100 * s['mfu_unipo'], '.1f')}% TRL "
                    f"{fr(s['mfu_trl'] and 100 * s['mfu_trl'], '.1f')}%")
        bits.append(f"checks {'ok' if s['checks_ok'] else 'FAILED'}")
        parts.append(f"{name}: " + ", ".join(bits))
    print(f"SUMMARY (load {load_start[0]:.1f}->{load_end[0]:.1f}) " + " | ".join(parts))
    return 0 if all(s["checks_ok"] for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
