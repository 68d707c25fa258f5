"""The GPU check in one call (issues 16 and 27): five parts inside a time budget, one JSON and one markdown file.

    python3 bench/gpu.py --budget 450 --out $OUT/gpu_check.json      # on the lent GPU machine (gpu_device.sh)
    .venv/bin/python bench/gpu.py --parts attention,flex --out /tmp/g.json
    .venv/bin/python bench/gpu.py --device cpu --length 300 --out /tmp/g.json   # the dry run: tiny shapes on CPU

Parts, in order of value (bench/gpu_parts.py), each in its own process under the time that is left:
  attention        segment attention vs the dense-mask SDPA path, every SDPA backend, bf16/fp32, vs float64
  throughput       unipo vs TRL's DPOTrainer vs TRL + Liger on a random ~1.1B Llama, bf16 (run_one.py processes)
  flex             FlexAttention vs segment attention on the attention part's inputs (decides the GPU default)
  fsdp             accelerate's FSDP with one process: unipo train for tdpo2 and sparsepo on the tiny model
  throughput_best  unipo with a precomputed reference vs TRL's precompute_ref_log_probs
A part starts only when its minimum time is left, is killed when the budget ends (its finished rows are kept),
and the JSON and the markdown summary are rewritten after every part. Without CUDA (and no --device cpu) it
prints one line and exits 0. On the CPU the figures mean nothing: it exercises the code paths (the
FlexAttention forward only: no CPU backward; no Liger, no FSDP part: CUDA only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: part → (minimum seconds to start it on an H100 (a guess until it has run), runs on the CPU dry run)
PARTS = {"attention": (30, True), "throughput": (120, True), "flex": (60, True), "fsdp": (40, False),
         "throughput_best": (90, True)}


def environment(device: str, kit: Path | None) -> dict:
    """Versions, the GPU, where each package was imported from (the kit's target or the image), and the
    kit's requirements that the installed versions do not meet."""
    import importlib.util

    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": device, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   gpu_memory_bytes=torch.cuda.get_device_properties(0).total_memory)
    origins = {}
    for name in ("unipo", "torch", "transformers", "accelerate", "trl", "datasets", "liger_kernel", "peft",
                 "rapidfuzz", "openai", "gguf"):
        spec = importlib.util.find_spec(name)
        origins[name] = None if spec is None else spec.origin
    env["module_origins"] = origins
    for name in ("trl", "accelerate", "datasets", "liger_kernel", "peft"):
        env[name] = _version(name)
    if kit is not None:
        sys.path.insert(0, str(HERE))
        import gpu_kit

        env["kit_unmet"] = gpu_kit.installed_unmet(kit)
    return env


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return None


def run_part(part: str, args, deadline: float, folder: Path) -> dict:
    """``part`` in a child process (this script with ``--run-part``) killed at ``deadline``; its record, with
    ``killed`` or ``error`` said where it did not finish. The child writes its rows as they come to
    ``folder/part_<part>.json`` (beside the results, so that they survive even a kill of this process); the file
    is removed once its record is merged."""
    rec_file = folder / f"part_{part}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-part", part, "--part-out", str(rec_file),
           "--deadline", str(deadline), "--device", args.device, "--length", str(args.length),
           "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    t = time.time()
    try:
        proc = subprocess.run(cmd, timeout=max(1.0, deadline - time.time()), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=None, text=True)
        status = None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stdout[-2000:]}"
    except subprocess.TimeoutExpired:
        status = "killed"
    rec = json.loads(rec_file.read_text()) if rec_file.exists() else {}
    rec_file.unlink(missing_ok=True)
    if status == "killed":
        rec["killed"] = f"at the budget after {time.time() - t:.0f} s (rows above were finished)"
    elif status is not None:
        rec["error"] = status
    rec["seconds"] = time.time() - t
    return rec


def child(args) -> int:
    """``--run-part``: one part in this process; its record goes to ``--part-out`` as rows are known."""
    import traceback

    sys.path.insert(0, str(HERE))
    import gpu_parts

    rec = gpu_parts.PartRecord(args.part_out, args.deadline)
    try:
        getattr(gpu_parts, f"part_{args.run_part}")(args, rec)
    except Exception as exc:  # the part's failure is its result; the parent goes on with the next part
        rec.data["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
        rec.data["traceback"] = traceback.format_exc()[-4000:]
    rec.save()
    return 0


def plan(args) -> list[str]:
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"bench/gpu.py: unknown part {', '.join(unknown)}; the parts: {', '.join(PARTS)}")
    return parts


def main(argv=None) -> int:
    args = parse(argv)
    if args.run_part:
        return child(args)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu.py: no CUDA device here (torch {torch.__version__}): nothing measured, no JSON written")
        return 0
    parts = plan(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    summary = args.summary or args.out.with_suffix(".md")
    result = {"environment": environment(args.device, args.kit), "budget_s": args.budget, "parts": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    end = start + args.budget
    for part in parts:
        need, on_cpu = PARTS[part]
        if args.device == "cpu" and not on_cpu:
            result["parts"][part] = {"skipped": "CUDA only"}
        elif end - time.time() < need:
            result["parts"][part] = {"skipped": f"would overrun the budget: {end - time.time():.0f} s left, "
                                                f"{need} s needed"}
        else:
            result["parts"][part] = run_part(part, args, end, args.out.parent)
        result["total_seconds"] = time.time() - start
        args.out.write_text(json.dumps(result, indent=1, default=str))
        summary.write_text(markdown(result))
        print(f"[gpu] {part}: {status_of(result['parts'][part])}", file=sys.stderr, flush=True)
    print(f"bench/gpu.py: {', '.join(parts)} in {result['total_seconds']:.0f} s of a {args.budget:.0f} s budget; "
          f"results in {args.out} and {summary}")
    return 0


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check.json", help="the JSON file written")
    ap.add_argument("--summary", type=Path, default=None, help="the markdown summary (default: --out with .md)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=450, help="seconds for all parts together (default 450)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: the dry run (tiny shapes; checks the code, the figures mean nothing)")
    ap.add_argument("--kit", type=Path, default=None, help="the folder of the kit's wheels: check their "
                    "requirements against what is installed")
    ap.add_argument("--length", type=int, default=7600, help="tokens in the attention row (attention, flex)")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step (throughput)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps (throughput)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps (throughput)")
    ap.add_argument("--run-part", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--part-out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------ summary
def status_of(rec: dict) -> str:
    for key in ("skipped", "killed", "error"):
        if key in rec:
            return f"{key}: {str(rec[key]).splitlines()[0][:200]}"
    return f"done in {rec.get('seconds', 0):.0f} s"


def _err(e: dict | None) -> str:
    vals = [v for v in (e or {}).values() if v is not None]
    return f"{max(vals):.1e}" if vals else "–"


def _ms(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def markdown(result: dict) -> str:
    """A short markdown summary: the environment, then one table per part that ran."""
    env = result["environment"]
    lines = [f"# GPU check ({env['date']})", "",
             f"{env.get('gpu', env['device'])}; python {env['python']}, torch {env['torch']}, transformers "
             f"{env['transformers']}, trl {env.get('trl')}, liger-kernel {env.get('liger_kernel')}; budget "
             f"{result['budget_s']:.0f} s, used {result.get('total_seconds', 0):.0f} s", ""]
    if env.get("kit_unmet"):
        lines += ["Kit requirements not met here: " + "; ".join(env["kit_unmet"]), ""]
    for part, rec in result["parts"].items():
        lines += [f"## {part}: {status_of(rec)}", ""]
        lines += _TABLES.get(part.split("_")[0], lambda r: [])(rec) + [""]
    return "\n".join(lines)


def _attention_table(rec: dict) -> list[str]:
    out = [f"{rec.get('tokens')} tokens, {rec.get('pairs')} pairs; max rel. error of out/dq/dk/dv vs float64", "",
           "| dtype | backend | path | accepted | ms fwd+bwd | max rel err |", "|---|---|---|---|---|---|"]
    for r in rec.get("rows", []):
        out.append(f"| {r['dtype']} | {r['backend']} | {r['path']} | {'yes' if r['accepted'] else 'no'} | "
                   f"{_ms(r.get('ms_fwd_bwd'))} | {_err(r.get('rel_err')) if r['accepted'] else r['reason'][:60]} |")
    return out


def _throughput_table(rec: dict) -> list[str]:
    out = ["| run | tok/s | s/step | peak GiB | MFU | loss@1 |", "|---|---|---|---|---|---|"]
    for name, r in rec.get("rows", {}).items():
        if "tok_s" in r:
            peak = "–" if r.get("peak") is None else f"{r['peak'] / 2**30:.1f}"
            out.append(f"| {name} | {r['tok_s']:.0f} | {r['step_s']:.3f} | {peak} | {100 * r['mfu']:.1f}% | "
                       f"{r['first_loss']:.5f} |")
        else:
            out.append(f"| {name} | {status_of(r)[:100]} | | | | |")
    ran = [(name, r) for name, r in rec.get("rows", {}).items() if "tok_s" in r]
    if ran and ran[0][0].startswith("unipo"):  # the first row is unipo's: its ratios to each TRL row
        base = ran[0][1]
        for name, r in ran[1:]:
            mem = "" if not (base.get("peak") and r.get("peak")) else f", peak memory {base['peak'] / r['peak']:.2f}x"
            out.append(f"\nunipo / {name}: throughput {base['tok_s'] / r['tok_s']:.2f}x{mem}")
    return out


def _flex_table(rec: dict) -> list[str]:
    out = [f"block mask build {rec.get('block_mask_build_s', 0):.2f} s; compiled {rec.get('compiled')}", "",
           "| dtype | timed | flex ms | segment ms | faster | flex err | segment err | first calls s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rec.get("rows", []):
        if "skipped" in r:
            out.append(f"| {r['dtype']} | skipped: {r['skipped']} | | | | | | |")
            continue
        out.append(f"| {r['dtype']} | {r['timed']} | {_ms(r['flex_ms'])} | {_ms(r['segment_ms'])} | {r['faster']} |"
                   f" {_err(r['flex_rel_err'])} | {_err(r['segment_rel_err'])} | {r['flex_first_calls_s']:.1f} |")
    return out


def _fsdp_table(rec: dict) -> list[str]:
    out = ["| variant | exit | losses | checkpoints |", "|---|---|---|---|"]
    for variant in ("tdpo2", "sparsepo"):
        r = rec.get(variant)
        if isinstance(r, dict):
            out.append(f"| {variant} | {r.get('returncode', status_of(r))} | {r.get('losses', '')} | "
                       f"{r.get('checkpoints', '')} |")
    return out


_TABLES = {"attention": _attention_table, "throughput": _throughput_table, "flex": _flex_table,
           "fsdp": _fsdp_table}


if __name__ == "__main__":
    sys.exit(main())
