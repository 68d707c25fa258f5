"""Time to first step and peak memory of `unipo train --max-steps 2` at 20k, 200k and 1M pairs (first run, then a
second run on the same data: the cache hit).

    .venv/bin/python bench/scale.py --source hh-rlhf-harmless-base-test.jsonl.gz   # 20k, 200k, 1M pairs, SmolLM2
    .venv/bin/python bench/scale.py --pairs 20000 200000 --out /tmp/scale
    .venv/bin/python bench/scale.py --pairs 300 --model tests-tiny     # seconds: the tiny test model (a smoke test)

For each N the data is synthesised by ``bench/synth_pairs.py`` (``--source``: the HH-RLHF rows it varies; default
the committed 200-row slice; the full harmless-base test split, ``hh-rlhf-harmless-base-test.jsonl.gz``, gives
more varied text), unless ``--work`` already holds it. Then, with one fresh data cache per N
(``UNIPO_DATA_CACHE``), ``unipo train --model MODEL --data FILE --max-steps 2`` runs twice in a subprocess: the
first run prepares and caches, the second maps the cache. Measured for each run:

- ``first_step_s``: seconds from the start of the command to the first training step, i.e. until ``metrics.jsonl``
  in its output directory first holds a step (model load, data, the first step);
- ``seconds``: the whole command (two steps and the final save included);
- ``peak_tree_rss_mb``: the peak of the summed RSS of the command and every process under it (worker processes
  that tokenise included), sampled every ``--interval`` s from /proc (psutil);
- ``peak_rss_mb``: the largest RSS of any one of those processes (``wait4``'s ``ru_maxrss``, exact);
- ``data_log``: the run's ``data:`` line (``prepared in`` or ``reused from the cache``).

Written: ``OUT/scale.json`` (every run) and ``OUT/scale.md`` (a table). ``--model tests-tiny`` builds
unipo.testing's tiny random Llama (with its tokenizer) for a smoke test; any other value goes to ``--model``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from unipo.training.rundir import RunDir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from synth_pairs import SLICE, synthesise  # noqa: E402 - bench/ scripts import one another


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _first_step(metrics: Path) -> bool:
    try:
        return any('"step"' in ln for ln in metrics.read_text().splitlines())
    except OSError:
        return False


def run_once(argv: list[str], env: dict, metrics: Path, interval: float) -> dict:
    """Run ``argv``; its wall time, the time ``metrics`` first holds a step, the peak summed RSS of its process
    tree (sampled) and the largest single-process RSS (``wait4``), its exit status and output."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    peak, first = 0, None
    ps = psutil.Process(proc.pid)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:  # reaped here (not by Popen), so ru_maxrss covers it and the processes it waited for
            break
        try:
            peak = max(peak, _tree_rss(ps))
        except psutil.NoSuchProcess:
            pass
        if first is None and _first_step(metrics):
            first = time.perf_counter() - start
        time.sleep(interval)
    seconds = time.perf_counter() - start
    rc = proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    if first is None and _first_step(metrics):
        first = seconds  # finished between two samples
    text = "".join(output)
    data_log = next((ln.split("unipo: ", 1)[1] for ln in text.splitlines() if "unipo: data: " in ln
                     and ("prepared in" in ln or "reused from the cache" in ln)), "")
    return {"rc": rc, "seconds": round(seconds, 1), "first_step_s": None if first is None else round(first, 1),
            "peak_tree_rss_mb": round(peak / 2**20), "peak_rss_mb": usage.ru_maxrss // 1024,
            "data_log": data_log.strip(), "output_tail": text[-3000:] if rc else ""}


def _model(name: str, work: Path) -> str:
    if name != "tests-tiny":
        return name
    from unipo.testing import make_tiny_model

    path = work / "tiny-model"
    return str(path if (path / "config.json").exists() else make_tiny_model(path))


def _data(n: int, work: Path, source: Path) -> Path:
    path = work / f"hh-{n}.jsonl"
    if not path.exists():
        t0 = time.perf_counter()
        synthesise(n, path.with_suffix(".partial"), source)
        path.with_suffix(".partial").rename(path)
        print(f"synthesised {n} pairs in {time.perf_counter() - t0:.0f} s: {path}", file=sys.stderr, flush=True)
    return path


def table(rows: list[dict]) -> str:
    lines = ["| pairs | run | first step (s) | whole run (s) | peak RSS, process tree (MB) | peak RSS, one process "
             "(MB) | data |", "|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['pairs']:,} | {r['run']} | {r['first_step_s']} | {r['seconds']} | {r['peak_tree_rss_mb']} "
                     f"| {r['peak_rss_mb']} | {r['data_log']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, nargs="+", default=[20_000, 200_000, 1_000_000])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model for --model (tests-tiny: the tiny one)")
    ap.add_argument("--out", type=Path, default=Path("bench-scale"), help="where scale.json and scale.md go")
    ap.add_argument("--work", type=Path, help="where the data files are kept (default: a temporary directory)")
    ap.add_argument("--source", type=Path, default=SLICE, help="HH-RLHF rows that bench/synth_pairs.py varies")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between two RSS samples")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more unipo train arguments (last)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = _model(args.model, work)
        for n in args.pairs:
            data = _data(n, work, args.source)
            env = {**os.environ, "UNIPO_DATA_CACHE": str(Path(tmp) / f"cache-{n}")}
            for run in ("first", "second"):
                out_dir = Path(tmp) / f"run-{n}-{run}"
                argv = [sys.executable, "-m", "unipo", "train", "--model", model, "--data", str(data), "--max-steps",
                        "2", "--per-device-batch-size", "4", "--output-dir", str(out_dir), "--save-steps", "1000",
                        "--logging-steps", "1", "--no-progress", "--set", "plots=false", *args.extra]
                r = {"pairs": n, "run": run, **run_once(argv, env, out_dir / RunDir.METRICS, args.interval)}
                results.append(r)
                print("SCALE " + json.dumps({k: v for k, v in r.items() if k != "output_tail"}), flush=True)
                if r["rc"] != 0:
                    print(r["output_tail"], file=sys.stderr)
                    return 1
    (args.out / "scale.json").write_text(json.dumps(results, indent=2))
    (args.out / "scale.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
