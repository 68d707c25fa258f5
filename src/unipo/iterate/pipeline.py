"""``unipo iterate``: on-policy rounds of sample → label → pair → (replay) → train, resumable.

Per round t (Chen et al., "Bootstrapping Language Models with DPO Implicit Rewards", ICLR 2025,
arXiv:2406.09760, Algorithm 1; iterative DPO in general): sample K responses per prompt from the round's
starting policy π_t; label them (:mod:`unipo.iterate.labels`); pair best vs worst
(:mod:`unipo.iterate.pairs`); mix in offline pairs at ratio γ; train with the existing trainer
(:func:`unipo.training.train.train`, any variant); the reference is π_t (``reset``, DICE) or the original
model (``fixed``). Files, under ``OUT``:

* ``iterate.json``: the settings (a resume with other settings is refused, naming them); ``iterate.lock``;
* ``round-0/eval.json``: the starting model; ``round-N/samples.jsonl`` (every sample with its label, appended
  as each batch is labelled, never regenerated), ``pairs.jsonl``, ``train.jsonl`` (pairs + replayed offline
  pairs), ``model/`` (the trainer's run directory, resumed from its checkpoint), ``merged/`` (LoRA rounds),
  ``eval.json`` and ``round.json`` (written last: a round with it is never redone);
* ``task-pairs.jsonl``: with ``--task`` and no ``--data``, the task's offline pairs (replayed);
* ``baseline/``: with offline pairs, the starting model trained on them alone;
* ``report.md`` and ``report.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unipo.errors import ConfigError, DataError, UnipoError, skip_invalid_hint
from unipo.io.assignments import parse_assignments
from unipo.io.atomic import atomic_write_text, describe_write_error, is_file_system_error, remove_quietly
from unipo.io.console import logger, progress_bars
from unipo.io.files import JsonlAppender, RunLock, read_jsonl_repairing
from unipo.iterate.config import TRAIN_DEFAULTS, IterateConfig
from unipo.iterate.labels import ImplicitLabeller, make_labeller, task_pass
from unipo.iterate.pairs import dice_alpha, pair_rows, prompt_key, replay_mix, select_pairs
from unipo.iterate.prompts import Prompt, read_prompts, render, task_pairs, task_prompts
from unipo.iterate.sampling import GenerationClock, evaluate_policy, label_batch, sample_prompts
from unipo.training.rundir import RunDir

#: settings that may change between a run and its resume
RESUMABLE = {"rounds", "overwrite", "progress", "baseline"}


_log = logger("unipo iterate")


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def train_config_base(cfg: IterateConfig) -> dict[str, Any]:
    """TrainConfig keys of every round: TRAIN_DEFAULTS < --config YAML < iterate's flags < --set."""
    from unipo.training.config import TrainConfig

    yaml_keys: dict[str, Any] = {}
    if cfg.config:
        yaml_keys = {k: v for k, v in TrainConfig.load(cfg.config).to_dict().items()
                     if k in _yaml_given(cfg.config)}
    flags = {"variant": cfg.variant, "beta": cfg.beta, "max_steps": cfg.steps, "learning_rate": cfg.learning_rate,
             "per_device_batch_size": cfg.batch_size, "lora": cfg.lora}
    base = {**TRAIN_DEFAULTS, **yaml_keys, **{k: v for k, v in flags.items() if v is not None},
            **parse_assignments(cfg.set)}
    TrainConfig.from_dict({**base, "data": "-"}, source="unipo iterate training settings")  # validates now
    return base


def _yaml_given(path: str) -> set[str]:
    import yaml

    return set((yaml.safe_load(Path(path).read_text()) or {}).keys())


def check_config(cfg: IterateConfig) -> None:
    """Refuse a bad value or combination before anything is read or loaded (the training settings of the rounds
    included: their objective is resolved here, so a bad β stops the run before any sampling)."""
    from unipo.training.config import TrainConfig
    from unipo.training.plan import plan_training

    cfg.validate()
    plan_training(TrainConfig.from_dict({**train_config_base(cfg), "data": "-"},
                                        source="unipo iterate training settings"))
    if bool(cfg.task) == bool(cfg.prompts):
        raise ConfigError("give exactly one of --task (a built-in task's prompts) or --prompts FILE")
    if cfg.samples < 2:
        raise ConfigError("--samples must be at least 2 (pairs are best vs worst of K)")
    for name in ("rounds", "prompts_per_round", "heldout", "max_new_tokens", "generation_batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= cfg.replay_ratio < 1:
        raise ConfigError("--replay-ratio must be in [0, 1)")
    if cfg.label == "implicit" and cfg.label_reference is None:
        raise ConfigError("--label implicit needs --label-reference MODEL: the model the starting policy was "
                          "DPO-trained from (DICE starts from a DPO model; at round 1 π = π_ref would give every "
                          "sample reward 0). Train one first with `unipo train`")


def run_iterate(cfg: IterateConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run (or resume) every round into ``cfg.out``; write the report; return the per-round results."""
    check_config(cfg)
    out = Path(cfg.out)
    with RunLock(out / "iterate.lock", "unipo iterate", subject=f"{out}/"), progress_bars(cfg.progress):
        if cfg.overwrite and out.exists():
            import shutil

            for child in out.iterdir():
                if child.name != "iterate.lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        return _IterateRun(cfg, out, log).run()


class _IterateRun:
    def __init__(self, cfg: IterateConfig, out: Path, log: Callable[[str], None]) -> None:
        self.cfg, self.out, self.log = cfg, out, log
        self.train_base = train_config_base(cfg)
        self.prompts, self.heldout = self._load_prompts()
        judge = {"url": cfg.judge_url, "model": cfg.judge_model, "api_key_env": cfg.api_key_env,
                 "concurrency": cfg.judge_concurrency} if cfg.label == "judge" else None
        self.labeller = make_labeller(cfg.label, task=cfg.task, verifier=cfg.verifier,
                                      reward_model=cfg.reward_model, implicit_beta=cfg.implicit_beta, judge=judge,
                                      batch_size=min(cfg.generation_batch_size, 16))
        self.offline = self._load_offline()
        self._check_resume()
        self.labeller.check()  # an unreachable judge or a wrong reward model stops here, before any sampling
        self.ids: dict[int, list[int]] = {}

    # -- inputs -----------------------------------------------------------------------------------
    def _load_prompts(self) -> tuple[list[Prompt], list[Prompt]]:
        cfg = self.cfg
        if cfg.task:
            texts: list[Any] = task_prompts(cfg.task, cfg.seed)
        else:
            texts, skipped = read_prompts(cfg.prompts, cfg.prompt_limit)
            if skipped:
                self.log(f"{cfg.prompts}: {skipped} rows without a usable prompt skipped")
        if len(texts) <= cfg.heldout:
            raise ConfigError(f"{len(texts)} prompts: need more than --heldout {cfg.heldout} (the rest train)")
        prompts = [Prompt(i, t) for i, t in enumerate(texts)]
        return prompts[cfg.heldout:], prompts[:cfg.heldout]

    def _offline_source(self) -> str | None:
        """``--data``, else (``--task`` without ``--no-task-pairs``) the task's own offline pairs written to
        ``OUT/task-pairs.jsonl`` (:func:`unipo.iterate.prompts.task_pairs`), else none."""
        cfg = self.cfg
        if cfg.data:
            return cfg.data
        if not cfg.replays_offline:
            return None
        path = self.out / "task-pairs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_jsonl(path, task_pairs(cfg.task, cfg.seed, cfg.heldout))
        return str(path)

    def _load_offline(self) -> list[dict[str, Any]]:
        """The offline pairs (:meth:`_offline_source`); invalid rows stop the run (with the way out) or, with
        ``--on-invalid skip``, are dropped and counted (``iterate.json``: ``offline_invalid``)."""
        self.offline_invalid = self.offline_heldout = 0
        self.offline_path = self._offline_source()
        if not self.offline_path:
            return []
        from unipo.data.formats import load_rows, normalize_row

        rows, invalid = [], 0
        for n, raw in load_rows(self.offline_path):
            try:
                pair = normalize_row(raw, file=self.offline_path, row_number=n)
            except DataError as exc:
                if self.cfg.on_invalid == "error":
                    raise exc.with_way_out(skip_invalid_hint("OUT/iterate.json (offline_invalid)")) from None
                invalid += 1
                continue
            rows.append({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected})
        self.offline_invalid = invalid
        if invalid:
            self.log(f"{self.offline_path}: skipped {invalid} invalid rows (--on-invalid skip)")
        held = {prompt_key(p.prompt) for p in self.heldout}
        kept = [r for r in rows if prompt_key(r["prompt"]) not in held]
        self.offline_heldout = len(rows) - len(kept)
        if self.offline_heldout:
            self.log(f"{self.offline_path}: {self.offline_heldout} offline pairs left out: their prompts are held "
                     f"out for evaluation (never trained on, in the rounds or the baseline)")
        if not kept:
            raise UnipoError(f"{self.offline_path}: no offline pairs (after leaving out {self.offline_heldout} "
                             f"whose prompts are held out)")
        return kept

    def _check_resume(self) -> None:
        settings = {**self.cfg.to_dict(), "train": self.train_base, "labeller": self.labeller.describe()}
        path = self.out / "iterate.json"
        counts = {"offline_invalid": self.offline_invalid, "offline_heldout": self.offline_heldout}  # read, not set
        if path.exists():
            old = json.loads(path.read_text())
            diff = sorted(k for k in (set(old) | set(settings)) - set(counts) if k not in RESUMABLE
                          and json.dumps(old.get(k), default=str) != json.dumps(settings.get(k), default=str))
            if diff:
                raise UnipoError(f"{self.out} holds a run with other settings ({', '.join(diff)}); rerun with "
                                 f"the same ones to resume, or pass --overwrite, or choose another --out")
            self.log(f"resuming the run in {self.out}")
        _write_json(path, {**settings, **counts})

    # -- models -------------------------------------------------------------------------------------
    def _load(self, path: str | Path):
        from unipo.eval.evaluate import load_policy

        return load_policy(path)

    def prompt_ids(self, p: Prompt) -> list[int]:
        if p.index not in self.ids:
            self.ids[p.index] = render(self.tokenizer, p)
        return self.ids[p.index]

    def round_prompts(self, t: int) -> list[Prompt]:
        n, pool = self.cfg.prompts_per_round, self.prompts
        start = ((t - 1) * n) % len(pool)
        return [pool[(start + j) % len(pool)] for j in range(min(n, len(pool)))]

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from unipo.models.checks import check_model_dir
        from unipo.models.loading import load_tokenizer, resolve_model_path

        cfg = self.cfg
        self.model_path = resolve_model_path(cfg.model)
        check_model_dir(self.model_path, tokenizer=True)
        self.tokenizer = load_tokenizer(self.model_path)
        self.original = self._load(self.model_path)
        results = {"round-0": self._evaluate(self.out / "round-0", self.original, {})}
        for t in range(1, cfg.rounds + 1):
            results[f"round-{t}"] = self._round(t)
        if self.offline and cfg.baseline:
            results["baseline"] = self._baseline()
        from unipo.iterate.report import write_report

        write_report(self.out, results, cfg)
        self.log(f"report: {self.out / 'report.md'}")
        return results

    def _start_model(self, t: int) -> str:
        if t == 1:
            return self.model_path
        prev = self.out / f"round-{t - 1}"
        return str(prev / "merged") if (prev / "merged").exists() else str(prev / "model")

    def _round(self, t: int) -> dict[str, Any]:
        rd = self.out / f"round-{t}"
        done = rd / "round.json"
        if done.exists():
            self.log(f"round {t}: done already (in {rd})")
            return json.loads(done.read_text())
        timing: dict[str, float] = {}
        start = self._start_model(t)
        policy = self.original if t == 1 else self._load(start)
        samples = self._samples(t, rd, policy, timing)
        stats = self._pairs(t, rd, samples)
        del policy
        tic = time.perf_counter()
        self._train(t, rd, start)
        timing["train_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        trained = self._load(rd / "merged" if (rd / "merged").exists() else rd / "model")
        record = self._evaluate(rd, trained, stats)
        timing["eval_s"] = time.perf_counter() - tic
        record["timing"] = {**timing, **record.get("timing", {})}
        _write_json(done, record)
        self.log(f"round {t} done: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timing.items()
                                                 if k.endswith("_s") and k != "tokens_per_s"))
        return record

    def _implicit_reference(self, t: int):
        """π_ref,t of DICE's implicit reward: the starting model's given reference at round 1, then the
        reference the previous round trained against."""
        from unipo.models.loading import resolve_model_path

        if t == 1:
            return self._load(resolve_model_path(self.cfg.label_reference))
        if self.cfg.reference == "fixed":
            return self.original
        return self._load(self._start_model(t - 1))

    def _samples(self, t: int, rd: Path, policy, timing: dict[str, float]) -> list[dict[str, Any]]:
        """Sample and label the round's prompts, appending each labelled batch; resume what is there."""
        cfg = self.cfg
        path = rd / "samples.jsonl"
        have = read_jsonl_repairing(path, invalid_hint="delete the round's samples.jsonl to sample it again",
                                    log=self.log)
        seen = {(int(s["prompt_index"]), int(s["sample"])) for s in have}
        prompts = self.round_prompts(t)
        pending = [p for p in prompts if any((p.index, s) not in seen for s in range(cfg.samples))]
        self.log(f"round {t}: {len(prompts)} prompts × {cfg.samples} samples; {len(prompts) - len(pending)} "
                 f"prompts already sampled, {len(pending)} to go")
        if pending and isinstance(self.labeller, ImplicitLabeller):
            self.labeller.set_models(policy, self._implicit_reference(t), self.tokenizer)
        clock, label_s = GenerationClock(), 0.0
        per_batch = max(1, cfg.generation_batch_size // cfg.samples)
        writer = JsonlAppender(path)
        try:
            for b in range(0, len(pending), per_batch):
                chunk = pending[b:b + per_batch]
                got = sample_prompts(policy, self.tokenizer, chunk, [self.prompt_ids(p) for p in chunk],
                                     cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                     top_p=cfg.top_p, batch_size=cfg.generation_batch_size,
                                     seed=cfg.seed * 1000 + t, clock=clock)
                got = [s for s in got if (s.prompt.index, s.sample) not in seen]
                tic = time.perf_counter()
                labels = self.labeller.label(label_batch(got, self.prompt_ids))
                label_s += time.perf_counter() - tic
                for s, lab in zip(got, labels, strict=True):
                    writer.write(_sample_record(s, lab))
                self.log(f"round {t}: {min(b + per_batch, len(pending))}/{len(pending)} prompts sampled, "
                         f"{clock.tokens} tokens at {clock.tokens_per_s:.0f} tokens/s")
        finally:
            writer.close()
        timing.update(sample_s=clock.seconds, label_s=label_s, generated_tokens=float(clock.tokens),
                      tokens_per_s=clock.tokens_per_s)
        return read_jsonl_repairing(path, invalid_hint="delete it to sample again", log=self.log)

    def _pairs(self, t: int, rd: Path, samples: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.cfg
        sweep = None
        alpha = 0.0
        if cfg.label == "implicit":
            # DICE sweeps α ∈ [0, 1) in steps of 0.001 on the log-ratio; the score here is β·log-ratio
            beta = cfg.implicit_beta
            alpha, sweep = dice_alpha(samples, step=0.001 * beta, upper=beta, min_margin=cfg.min_margin)
        chosen_rejected, stats = select_pairs(samples, alpha=alpha, min_margin=cfg.min_margin)
        rows = pair_rows(chosen_rejected)
        _write_jsonl(rd / "pairs.jsonl", rows)
        mixed, n_offline = replay_mix(rows, self.offline, cfg.replay_ratio, cfg.seed + t) if self.offline else (
            rows, 0)
        if not mixed:
            raise UnipoError(f"round {t}: no pair to train on ({stats.prompts} prompts: {stats.no_signal} without "
                             f"signal, {stats.below_margin} below --min-margin, {stats.too_few_scored} with fewer "
                             f"than 2 scored samples); sample more (--samples, --temperature) or lower --min-margin")
        _write_jsonl(rd / "train.jsonl", [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in mixed])
        self.log(f"round {t}: {stats.pairs} pairs from {stats.prompts} prompts ({stats.no_signal} without signal, "
                 f"{stats.below_margin} below the margin, {stats.failed_samples} failed samples)"
                 + (f", {n_offline} offline pairs replayed" if self.offline else "")
                 + (f", DICE α {alpha:.4g}" if sweep else ""))
        return {"pairs": stats.pairs, "prompts": stats.prompts, "no_signal": stats.no_signal,
                "share_without_signal": stats.share_without_signal, "below_margin": stats.below_margin,
                "failed_samples": stats.failed_samples, "offline_pairs": n_offline, "alpha": alpha if sweep else None,
                "length_gap_chars": stats.length_gap_chars}

    def _train_config(self, data: str, out_dir: Path, start: str, seed: int, ref_model: str | None):
        from unipo.training.config import TrainConfig

        keys = {**self.train_base, "model": start, "data": data, "output_dir": str(out_dir), "resume": True,
                "overwrite": False, "seed": seed, "progress": self.cfg.progress, "plots": False}
        if ref_model is not None:
            keys.update(ref_model=ref_model, reference="copy")
        return TrainConfig.from_dict(keys, source="unipo iterate")

    def _train(self, t: int, rd: Path, start: str) -> None:
        from unipo.training.train import train

        fixed = self.cfg.reference == "fixed" and t > 1
        tc = self._train_config(str(rd / "train.jsonl"), rd / "model", start, self.cfg.seed + t,
                                self.model_path if fixed else None)
        train(tc)
        if RunDir(rd / "model").is_adapter and not (rd / "merged").exists():
            _merge_lora(rd / "model", rd / "merged")

    def _baseline(self) -> dict[str, Any]:
        bd = self.out / "baseline"
        done = bd / "round.json"
        if done.exists():
            return json.loads(done.read_text())
        steps = int(self.train_base.get("max_steps", 0)) * self.cfg.rounds
        bd.mkdir(parents=True, exist_ok=True)
        _write_jsonl(bd / "offline.jsonl", self.offline)  # the offline pairs the rounds replay from
        tc = self._train_config(str(bd / "offline.jsonl"), bd / "model", self.model_path, self.cfg.seed, None)
        tc.max_steps = steps
        from unipo.training.train import train

        self.log(f"baseline: the starting model trained on the offline pairs alone, {steps} steps")
        tic = time.perf_counter()
        train(tc)
        if RunDir(bd / "model").is_adapter:
            _merge_lora(bd / "model", bd / "merged")
        train_s = time.perf_counter() - tic
        record = self._evaluate(bd, self._load(bd / ("merged" if (bd / "merged").exists() else "model")),
                                {"offline_pairs": len(self.offline)})
        record["timing"] = {"train_s": train_s, **record.get("timing", {})}
        _write_json(done, record)
        return record

    def _evaluate(self, rd: Path, policy, stats: dict[str, Any]) -> dict[str, Any]:
        path = rd / RunDir.EVAL  # the round's record, named as a run's eval record
        if path.exists():
            return json.loads(path.read_text())
        cfg = self.cfg
        labeller = None if isinstance(self.labeller, ImplicitLabeller) else self.labeller
        tic = time.perf_counter()
        ids = [self.prompt_ids(p) for p in self.heldout]
        metrics = evaluate_policy(policy, self.original, self.tokenizer, self.heldout, ids, labeller,
                                  n_samples=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens,
                                  batch_size=cfg.generation_batch_size, seed=cfg.seed + 7919,
                                  passes=task_pass(cfg.task) if cfg.task else None)
        record = {**metrics, **stats, "timing": {"eval_s": time.perf_counter() - tic}}
        _write_json(path, record)
        self.log(f"{rd.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
        return record


def _sample_record(s, lab) -> dict[str, Any]:
    rec = {"prompt_index": s.prompt.index, "sample": s.sample, "prompt": s.prompt.prompt, "response": s.text,
           "tokens": len(s.tokens), "token_ids": s.tokens, "stopped": s.stopped, "score": lab.score,
           "status": "ok" if lab.score is not None else "failed"}
    if lab.reason:
        rec["reason"] = lab.reason
    return rec


def _merge_lora(adapter_dir: Path, out: Path) -> None:
    """A LoRA round's adapters merged into its base weights: the next round's starting policy."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), dtype=torch.float32)
    partial = out.with_name(out.name + ".partial")  # renamed when whole: a resume never finds half a model
    remove_quietly(partial)
    try:
        model.merge_and_unload().save_pretrained(str(partial))
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(partial))
        partial.rename(out)
    except Exception as exc:
        remove_quietly(partial)
        if is_file_system_error(exc):
            raise UnipoError(describe_write_error(exc, out, again="rerun the same command (it resumes)")) from None
        raise
