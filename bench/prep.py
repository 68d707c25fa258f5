"""Data preparation: pairs/s of unipo's preparation (row at a time as before, batched, with workers) against TRL's
DPOTrainer preprocessing of the same rows; time and peak memory of `unipo train` runs on the same data, a first
run (prepares and caches) and a second (maps the cache).

    .venv/bin/python bench/prep.py --pairs 20000                   # speed on 20k pairs, then two training runs
    .venv/bin/python bench/prep.py --pairs 200000 --only train     # the training runs only
    .venv/bin/python bench/prep.py --pairs 2000 --tiny             # the tiny tokenizer and model (a smoke test)

The data is synthesised by ``bench/synth_pairs.py`` from the committed HH-RLHF slice (``--data FILE`` uses a
file of yours). Tokenizer: SmolLM2-135M-Instruct's (the built-in model; ``--tiny``: unipo.testing's tiny one).

Speed (``--only speed``): every method prepares the same file with the same tokenizer, each in a fresh
process, one JSON line each:

- ``unipo row-at-a-time``: the preparation before it was batched (:func:`row_at_a_time` below, the same loop as
  the reference of tests/test_data_prepare.py): normalise, render, tokenise, truncate one row at a time;
- ``unipo batched, num_proc=1`` and ``num_proc=N`` (N: the cores available): :func:`unipo.data.tokenize.prepare_pairs`;
- ``TRL DPOTrainer._prepare_dataset`` (``dataset_num_proc`` None and N) on the rows unipo normalised (prompt,
  chosen, rejected as messages, in a ``datasets.Dataset`` in memory; reading and normalising the file is not in
  its time, which is in unipo's): TRL tokenises with the chat template and truncates later, in its collator, so
  the lengths it prepares are the full ones (unipo's truncation is a slice of lists, a negligible part).

Training (``--only train``): ``unipo train --max-steps 1`` on the file twice with a fresh data cache: the
first run prepares and caches, the second maps the cache. Reported: the wall time of each whole command (model
load, data, one step, the final model saved) and its peak RSS (``wait4``'s ``ru_maxrss``), and the seconds from
the start to the log line of the first step (the training log's ``step 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def row_at_a_time(source, tokenizer, **overrides):
    """unipo's preparation before batching: each row read, normalised, tokenised (its own tokenizer calls and
    template renderings), validated and truncated in turn (also the reference that tests/test_data_prepare.py
    compares the batched preparation with, pair by pair)."""
    from dataclasses import replace

    from unipo.data.tokenize import PrepOptions, _PairReader, new_summary, source_rows

    opts = replace(PrepOptions(), **overrides)
    opts.validate()
    name, rows = source_rows(source, opts.split)
    summary = new_summary(name, opts)
    reader = _PairReader(tokenizer, opts, summary)
    pairs = []
    for rec in rows:
        if opts.limit is not None and summary.rows_read >= opts.limit:
            break
        summary.rows_read += 1
        pair = reader.read(rec)
        if pair is not None:
            pairs.append(pair)
            summary.pairs_kept += 1
    return pairs, summary


def _tokenizer(tiny: bool):
    if tiny:
        from unipo.testing import make_tiny_tokenizer

        return make_tiny_tokenizer()
    from unipo.models.loading import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path("smollm2-135m-instruct"))


def _trl_rows(data: str) -> list[dict]:
    from unipo.data.formats import iter_rows, normalize_row

    def messages(x):
        return x if isinstance(x, list) else [{"role": "assistant", "content": x}]

    out = []
    for rec in iter_rows(data):
        p = normalize_row(rec.data, file=rec.file, row_number=rec.row)
        out.append({"prompt": p.prompt, "chosen": messages(p.chosen), "rejected": messages(p.rejected)})
    return out


def speed_one(method: str, data: str, num_proc: int, tiny: bool) -> dict:
    """One measurement, in this (fresh) process."""
    tok = _tokenizer(tiny)
    if method == "trl":
        import datasets
        from trl import DPOConfig, DPOTrainer

        datasets.disable_caching()
        ds = datasets.Dataset.from_list(_trl_rows(data))
        holder = type("Holder", (), {"_tokenizer": tok})()
        args = DPOConfig(output_dir=tempfile.mkdtemp(), dataset_num_proc=num_proc if num_proc > 1 else None,
                         max_length=512, report_to=[], bf16=False, use_cpu=True)
        start = time.perf_counter()
        out = DPOTrainer._prepare_dataset(holder, ds, tok, args, "train")
        seconds, rows, n = time.perf_counter() - start, len(ds), len(out)
    else:
        from unipo.data.tokenize import prepare_pairs

        start = time.perf_counter()
        if method == "old":
            pairs, summary = row_at_a_time(data, tok)
        else:
            pairs, summary = prepare_pairs(data, tok, num_proc=num_proc)
        seconds, rows, n = time.perf_counter() - start, summary.rows_read, len(pairs)
    # the rate is of rows in: TRL's default truncation_mode keep_start drops rows whose prompt fills max_length
    return {"method": method, "num_proc": num_proc, "rows": rows, "pairs_out": n, "seconds": round(seconds, 2),
            "pairs_per_s": round(rows / seconds, 1)}


def _child(argv: list[str], env: dict | None = None) -> tuple[str, float, int, int, float]:
    """Run ``argv``; (its output, wall seconds, peak RSS in MB of it or any process it waited for, exit status,
    CPU seconds of it and those processes: the work done, whatever else the machine was running)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return out, time.perf_counter() - start, usage.ru_maxrss // 1024, proc.returncode, round(cpu, 1)


def speed(data: str, tiny: bool, cores: int) -> list[dict]:
    results = []
    for method, num_proc in (("old", 1), ("new", 1), ("new", cores), ("trl", 1), ("trl", cores)):
        out, _, rss, rc, cpu = _child([sys.executable, str(HERE / "prep.py"), "--one", method, str(num_proc), "--data",
                                  data, *(["--tiny"] if tiny else [])])
        if rc != 0:
            print(out[-2000:], file=sys.stderr)
            raise SystemExit(f"{method} num_proc={num_proc} failed")
        line = json.loads(next(ln for ln in out.splitlines()[::-1] if ln.startswith("{")))
        line["peak_rss_mb"], line["cpu_s"] = rss, cpu
        results.append(line)
        print("SPEED", json.dumps(line), flush=True)
    return results


def train_runs(data: str, tiny: bool) -> list[dict]:
    """Two ``unipo train --max-steps 1`` runs on ``data`` with one fresh data cache."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "UNIPO_DATA_CACHE": f"{tmp}/cache"}
        if tiny:
            from unipo.testing import make_tiny_model

            model = make_tiny_model(Path(tmp) / "tiny")
        else:
            model = "smollm2-135m-instruct"
        for run in ("first", "second"):
            argv = [sys.executable, "-m", "unipo", "train", "--model", str(model), "--data", data, "--max-steps", "1",
                    "--per-device-batch-size", "4", "--output-dir", f"{tmp}/run-{run}", "--save-steps", "1000",
                    "--no-progress", "--set", "plots=false"]
            out, seconds, rss, rc, cpu = _child(["python3", "-c", _TIMESTAMPED, *argv], env)
            if rc != 0:
                print(out[-3000:], file=sys.stderr)
                raise SystemExit(f"unipo train ({run} run) failed")
            first_step = next((float(ln.split()[0]) for ln in out.splitlines() if " step 1" in ln
                               or "'loss'" in ln or '"loss"' in ln), None)
            data_line = next((ln.split(" ", 1)[1] for ln in out.splitlines() if "unipo: data: " in ln
                              and ("reused from the cache" in ln or "prepared in" in ln)), "")
            line = {"run": run, "pairs_file": data, "seconds": round(seconds, 1), "cpu_s": cpu, "peak_rss_mb": rss,
                    "first_step_logged_at_s": first_step, "data_log": data_line.strip()}
            results.append(line)
            print("TRAIN", json.dumps(line), flush=True)
    return results


#: runs argv, prefixing each output line with the seconds since start (for the time of the first step)
_TIMESTAMPED = r"""
import subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
for line in p.stdout:
    sys.stdout.write(f"{time.perf_counter() - t0:.2f} {line}")
sys.exit(p.wait())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=20000, help="pairs to synthesise (bench/synth_pairs.py)")
    ap.add_argument("--data", help="a preference file instead of synthesised pairs")
    ap.add_argument("--only", choices=("speed", "train"))
    ap.add_argument("--tiny", action="store_true", help="the tiny tokenizer and model (a smoke test)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "NUM_PROC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(speed_one(args.one[0], args.data, int(args.one[1]), args.tiny)))
        return
    from unipo.data.prepare import available_cores

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            sys.path.insert(0, str(HERE))
            from synth_pairs import synthesise

            data = f"{tmp}/hh-{args.pairs}.jsonl"
            synthesise(args.pairs, Path(data))
        if args.only in (None, "speed"):
            speed(data, args.tiny, available_cores())
        if args.only in (None, "train"):
            train_runs(data, args.tiny)


if __name__ == "__main__":
    main()
