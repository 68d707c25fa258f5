"""One timed training run of unipo or TRL's DPOTrainer; prints ONE JSON line (prefixed ``BENCH_RESULT ``).

Run by ``bench/compare.py`` in a fresh subprocess per measurement, so that the peak memory is this run's
alone. Both frameworks get the same model, the same pre-tokenised pairs in the same order (a sequential
sampler on both sides), the same batch size, optimiser (AdamW, same lr, linear schedule, clip 1.0), the same
precision, no gradient checkpointing and ``logging_steps=1``.

    python bench/run_one.py --framework unipo|trl --mode default|best --variant dpo --model PATH \
        --data pairs.json --batch-size 4 --warmup 3 --steps 8 --precision fp32

``--mode`` for TRL: ``default`` = a resident reference copy (TRL's default); ``best`` =
``precompute_ref_log_probs=True`` (and bf16 when the precision is bf16); ``--liger 1`` adds
``use_liger_kernel=True`` (bench/gpu.py). For unipo: ``default`` = reference
``copy`` (unipo's default without LoRA); ``best`` = reference ``precomputed``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

PROMPT_SEG, CHOSEN_SEG, REJECTED_SEG = 0, 1, 2


# ------------------------------------------------------------------------------------------- memory
def _read_status(key: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (Linux), e.g. VmHWM (peak RSS) or VmRSS."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class StepTimer(TrainerCallback):
    """Wall-clock time of every optimiser step (on_step_begin → on_step_end), and the training-phase peak
    memory: RSS high-water mark since on_train_begin on CPU, max allocated bytes on GPU."""

    def __init__(self):
        self.begin: list[float] = []
        self.end: list[float] = []
        self.rss_reset = False
        self.train_peak: int | None = None

    def on_train_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.rss_reset = _reset_peak_rss()

    def on_step_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.begin.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.end.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            self.train_peak = torch.cuda.max_memory_allocated()
        else:
            self.train_peak = _read_status("VmHWM") if self.rss_reset else None


class BenchMixin:
    """Sequential sampling (same pairs, same order on both sides) and a record of every batch's loss and
    token counts, taken in ``compute_loss`` (both frameworks are Trainer subclasses)."""

    bench_records: list[dict]

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if model.training:
            loss = result[0] if isinstance(result, tuple) else result
            rec = self.bench_token_counts(inputs)
            rec["loss"] = float(loss.detach().float())
            self.bench_records.append(rec)
        return result


# -------------------------------------------------------------------------------------------- unipo
def build_unipo(args, pairs, tokenizer, out_dir: str, timer: StepTimer):
    from transformers import TrainingArguments

    from unipo.models.loading import load_model
    from unipo.objective import Objective
    from unipo.training.collate import collate_for
    from unipo.training.reference import precompute_reference
    from unipo.training.train import PairsDataset
    from unipo.training.trainer import PreferenceTrainer

    class BenchPreferenceTrainer(BenchMixin, PreferenceTrainer):
        def bench_token_counts(self, inputs):
            seg = inputs["segments"]
            n_prompt = int((seg == PROMPT_SEG).sum())
            n_c, n_r = int((seg == CHOSEN_SEG).sum()), int((seg == REJECTED_SEG).sum())
            # logical work, as TRL counts it: prompt+chosen and prompt+rejected per pair
            return {"policy_tokens": 2 * n_prompt + n_c + n_r, "computed_positions": int(seg.numel()),
                    "real_positions": n_prompt + n_c + n_r}

    objective = Objective({"preset": args.variant})
    rows = [dict(p, index=i) for i, p in enumerate(pairs)]
    dtype = torch.float32  # policy weights (fp32 master weights; bf16 autocast when --precision bf16)
    attn = None if args.attention == "auto" else args.attention
    model = load_model(args.model, dtype=dtype, attn_implementation=attn)
    collate = collate_for(model, tokenizer.pad_token_id, share_prompt=True, packing=bool(args.packing))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ref_model = None
    reference_mode = "copy" if args.mode == "default" else "precomputed"
    setup = {}
    if reference_mode == "copy":
        # same dtype as TRL's reference (the policy's), so both sides do the same work
        ref_model = load_model(args.model, dtype=dtype, attn_implementation=attn, trainable=False)
    else:
        # like TRL's precompute: the policy itself, before training, is the reference
        t = time.perf_counter()
        model.to(device).eval()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
        with autocast:
            precompute_reference(model, rows, collate, batch_size=args.batch_size, chunk_size=args.chunk_size,
                                 cache_file=Path(out_dir) / "reflogps.pt", device=device, progress=False)
        model.train()
        setup["precompute_s"] = time.perf_counter() - t
    targs = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=args.warmup + args.steps, seed=args.seed, data_seed=args.seed, bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(), logging_steps=1, save_strategy="no", report_to=[],
        remove_unused_columns=False, gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = BenchPreferenceTrainer(
        model=model, args=targs, train_dataset=PairsDataset(rows), data_collator=collate,
        processing_class=tokenizer, objective=objective, ref_model=ref_model, reference_mode=reference_mode,
        chunk_size=args.chunk_size, head_dtype=torch.bfloat16 if args.precision == "bf16" else None,
        callbacks=[timer],
    )
    n_models = 1 if reference_mode == "precomputed" else 2
    return trainer, model, n_models, setup


# ---------------------------------------------------------------------------------------------- TRL
def build_trl(args, pairs, tokenizer, out_dir: str, timer: StepTimer):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    class BenchDPOTrainer(BenchMixin, DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # the pairs come pre-tokenised (the very ids unipo trains on): skip TRL's text tokenisation
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def bench_token_counts(self, inputs):
            am = inputs["attention_mask"]
            n = int(am.sum())
            return {"policy_tokens": n, "computed_positions": int(am.numel()), "real_positions": n}

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    best = args.mode == "best"
    config = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=args.warmup + args.steps, seed=args.seed, data_seed=args.seed, bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(), logging_steps=1, save_strategy="no", report_to=[],
        gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
        max_length=args.max_length, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=best,
        use_liger_kernel=bool(args.liger),
    )
    columns = {k: [p[k] for p in pairs] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    dataset = Dataset.from_dict(columns)
    t = time.perf_counter()
    trainer = BenchDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[timer])
    n_models = 1 if best else 2
    setup = {"init_s": time.perf_counter() - t}
    if best:  # TRL 1.16 precomputes the reference log-probs in DPOTrainer.__init__
        setup["precompute_s"] = setup["init_s"]
    return trainer, model, n_models, setup


# --------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--framework", choices=("unipo", "trl"), required=True)
    ap.add_argument("--mode", choices=("default", "best"), default="default")
    ap.add_argument("--variant", default="dpo", help="unipo preset (TRL: dpo only)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="JSON list of {prompt_ids, chosen_ids, rejected_ids, ...}")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--packing", type=int, choices=(0, 1), default=1, help="unipo: no padding (one row with "
                    "segment attention, else several pairs per row)")
    ap.add_argument("--attention", choices=("auto", "sdpa"), default="auto",
                    help="unipo: auto = segment attention where exact; sdpa = dense 4-D mask")
    ap.add_argument("--liger", type=int, choices=(0, 1), default=0,
                    help="TRL: use_liger_kernel=True (Liger's fused linear + DPO loss; needs liger-kernel and CUDA)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    args = ap.parse_args(argv)
    if args.framework == "trl" and args.variant != "dpo":
        ap.error("TRL runs DPO (sigmoid) only in this benchmark")
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import set_seed

    from unipo.models.loading import load_tokenizer

    set_seed(args.seed)
    pairs = json.loads(Path(args.data).read_text())
    n_needed = (args.warmup + args.steps) * args.batch_size
    if len(pairs) < n_needed:
        raise SystemExit(f"{args.data}: {len(pairs)} pairs, {n_needed} needed")
    pairs = pairs[:n_needed]
    if args.variant not in ("tisdpo", "tisdpo_nokl", "sparsepo"):
        pairs = [{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in pairs]
    tokenizer = load_tokenizer(args.model)
    timer = StepTimer()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unipo-bench-") as out_dir:
        build = build_unipo if args.framework == "unipo" else build_trl
        trainer, model, n_models, setup = build(args, pairs, tokenizer, out_dir, timer)
        trainer.bench_records = []
        t_train = time.perf_counter()
        trainer.train()
        t_done = time.perf_counter()
    n_params = sum(p.numel() for p in model.parameters())
    step_s = [e - b for b, e in zip(timer.begin, timer.end, strict=True)]
    records = trainer.bench_records
    result = {
        "framework": args.framework, "mode": args.mode, "variant": args.variant, "precision": args.precision,
        "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps, "n_params": n_params,
        "resident_models": n_models, "step_s": step_s,
        "policy_tokens": [r["policy_tokens"] for r in records],
        "computed_positions": [r["computed_positions"] for r in records],
        "real_positions": [r["real_positions"] for r in records],
        "losses": [r["loss"] for r in records],
        "peak_train_bytes": timer.train_peak,
        "peak_rss_process_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "setup": setup, "load_s": t_train - t0, "train_s": t_done - t_train,
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
