"""Seeded fuzz of every configuration key (issue 23): for each key of TrainConfig and of IterateConfig, values of the
wrong type, NaN, ±inf, huge, negative, zero, empty, strings for booleans, numbers as text and random numbers. Each
value is either accepted as what it means (the stored value equals the oracle's) or refused with a one-line
UnipoError naming the key — never a traceback, never a wrong value accepted. The oracle below is the documented
rule of each key (``unipo train --help``, docs/faults.md), written here independently of unipo.training.values.

Through the code a run goes through before any model loads: ``TrainConfig.from_dict`` then ``plan_training``
(the objective, the token signal, the reference mode); ``unipo iterate``'s ``check_config``."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from unipo.errors import UnipoError
from unipo.iterate.config import IterateConfig
from unipo.iterate.pipeline import check_config
from unipo.objective.presets import PRESETS
from unipo.training.config import (
    LR_SCHEDULERS,
    ON_INVALID,
    PRECISIONS,
    REF_DTYPES,
    TRUNCATION_MODES,
    TrainConfig,
)
from unipo.training.plan import plan_training

pytestmark = pytest.mark.unit

F32 = 3.4028234663852886e38
INT_MAX = 2**31 - 1
NAN, INF = float("nan"), float("inf")
INVALID = object()  # the oracle's "must be refused"
EITHER = object()  # the oracle cannot say (a semantic check elsewhere): only "no traceback" is asserted

Oracle = Callable[[Any], Any]  # value -> normalised value, INVALID or EITHER


# ---- the rules, one small oracle per kind of key ----

def number(integer: bool, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, optional: bool = False, also: tuple = (), check: Callable = lambda v: True) -> Oracle:
    """An int / float key: a real number (not a bool), or text that reads as one; finite and within float32;
    an integer key takes whole numbers only; in [lo, hi] (open ends as given) or one of ``also``."""
    def oracle(v):
        if v is None:
            return None if optional else INVALID
        if isinstance(v, bool):
            return INVALID
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                return INVALID
        if not isinstance(v, int | float):
            return INVALID
        if not math.isfinite(v) or abs(v) > F32:
            return INVALID
        if integer:
            if v != int(v):
                return INVALID
            v = int(v)
        else:
            v = float(v)
        if v in also:
            return v
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return INVALID
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return INVALID
        return v if check(v) else INVALID
    return oracle


def count(lo: int = 1, optional: bool = False, **kw) -> Oracle:
    return number(True, lo, INT_MAX, optional=optional, **kw)


def boolean(v):
    return v if isinstance(v, bool) else INVALID


def text(optional: bool = False) -> Oracle:
    def oracle(v):
        if v is None:
            return None if optional else INVALID
        return v if isinstance(v, str) and v.strip() else INVALID
    return oracle


def choice(options, optional: bool = False) -> Oracle:
    def oracle(v):
        if v is None:
            return None if optional else INVALID
        return v if isinstance(v, str) and v in options else INVALID
    return oracle


def names(allowed=None, length=None, optional=False) -> Oracle:
    """A list of non-empty strings (a single string is a list of one)."""
    def oracle(v):
        if v is None:
            return None if optional else INVALID
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i.strip() for i in items):
            return INVALID
        if (allowed is not None and any(i not in allowed for i in items)) or (length and len(items) != length):
            return INVALID
        return list(items)
    return oracle


def variant(optional: bool = False) -> Oracle:
    def oracle(v):
        if v is None:
            return None if optional else INVALID
        if isinstance(v, str):
            return v if v in PRESETS else INVALID
        if isinstance(v, dict):
            return v if set(v) == {"preset"} and v["preset"] in PRESETS else INVALID
        return INVALID
    return oracle


LORA = {"r": count(), "alpha": number(False, 0, lo_open=True), "dropout": number(False, 0, 1, hi_open=True),
        "target_modules": names()}


def lora(v):
    if v is None:
        return None
    if not isinstance(v, dict) or not v or any(k not in LORA for k in v):
        return INVALID
    out = {k: LORA[k](x) for k, x in v.items()}
    return INVALID if any(x is INVALID for x in out.values()) else out


def token_signal(v):
    """A type name or a mapping; none, null and the empty string mean no signal (models/signals.py)."""
    if v is None:
        return None
    known = ("none", "null", "", "sparsepo_masks", "activation_masks", "learned_prior")
    if isinstance(v, str) and v.strip().lower().replace("-", "_") not in known:
        return INVALID
    return EITHER if isinstance(v, str | dict) else INVALID


def report_to(v):
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return names(allowed={"none", "all", *INTEGRATION_TO_CALLBACK})(v)


def attn(v):
    if v is None:
        return None
    ok = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
    return v if isinstance(v, str) and (v in ok or "/" in v) else INVALID


BEMA_RANGES = {"update_freq": (1, None), "ema_power": (0, None), "bias_power": (0, None), "lag": (0, None),
               "update_after": (0, None), "multiplier": (0, None), "min_ema_multiplier": (0, 1),
               "ref_update_after": (0, None)}


def bema(v):
    """ref_sync_bema: a mapping of TRL's BEMACallback arguments, each a real number (no text) in its range."""
    if v is None:
        return None
    if not isinstance(v, dict) or any(k not in BEMA_RANGES for k in v):
        return INVALID
    for key, x in v.items():
        lo, hi = BEMA_RANGES[key]
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or abs(x) > F32:
            return INVALID
        if x < lo or (hi is not None and x > hi):
            return INVALID
    return v if v.get("lag", 10) + v.get("multiplier", 1.0) > 0 else INVALID


POSITIVE = {"lo": 0, "lo_open": True}
TRAIN: dict[str, Oracle] = {
    "model": text(), "data": text(), "eval_data": text(True), "variant": variant(),
    "beta": number(False, optional=True, **POSITIVE), "output_dir": text(),
    "learning_rate": number(False, 0),  # 0 is a control (the policy stays its reference), e.g. in a sweep
    "lr_scheduler_type": choice(LR_SCHEDULERS),
    "warmup_ratio": number(False, 0, check=lambda v: v < 1 or v == int(v)),
    "weight_decay": number(False, 0), "max_grad_norm": number(False, 0), "per_device_batch_size": count(),
    "gradient_accumulation_steps": count(), "num_epochs": number(False, **POSITIVE),
    "max_steps": count(also=(-1,)), "seed": number(True, 0, 2**32 - 1),
    "max_length": count(2, check=lambda v: v > 256),  # above the default max_prompt_length
    "max_prompt_length": count(optional=True, check=lambda v: v < 512),  # below the default max_length; null: no limit
    "truncation_mode": choice(TRUNCATION_MODES), "limit": count(optional=True), "eval_limit": count(optional=True),
    "eval_fraction": number(False, 0, 1, hi_open=True), "on_invalid": choice(ON_INVALID),
    "weights_columns": names(length=2, optional=True), "weight_column": text(True),
    "score_columns": names(length=2, optional=True),
    "bmc_alignment": choice(("levenshtein", "difflib")),
    "bmc_exempt": choice(("stopwords", "stopwords_punctuation", "none")), "token_signal": token_signal,
    "precision": choice(PRECISIONS),
    "reference": choice(("auto", "copy", "precomputed")),  # none and adapter cannot serve dpo without LoRA
    "ref_model": text(True), "ref_sync": choice(("none", "soft", "hard", "bema")), "ref_sync_bema": bema,
    "ref_sync_alpha": number(False, 0, 1, lo_open=True, optional=True), "ref_sync_steps": count(optional=True),
    "ref_dtype": choice(REF_DTYPES), "lora": lora, "gradient_checkpointing": boolean,
    "attn_implementation": attn, "share_prompt": boolean, "packing": boolean, "chunk_size": count(),
    "nan_policy": choice(("stop", "skip_step")), "nan_skip_limit": count(), "logging_steps": count(),
    "eval_steps": count(optional=True), "save_steps": count(), "save_total_limit": count(optional=True),
    "data_num_proc": count(optional=True), "data_streaming": boolean, "stream_buffer": count(0),
    "report_to": report_to, "resume": boolean, "overwrite": boolean, "progress": boolean, "plots": boolean,
    # last: a key added in the middle shifts the shared random draws of every later key
    "gold_column": text(),
}
#: keys fuzzed on top of another key's value (they apply only there)
TRAIN_BASE = {"ref_sync_alpha": {"ref_sync": "soft"}, "ref_sync_steps": {"ref_sync": "soft"},
              "ref_sync_bema": {"ref_sync": "bema"}, "data_streaming": {"max_steps": 2}}

ITERATE: dict[str, Oracle] = {
    "out": text(), "model": text(), "task": choice(("arithmetic",)), "prompts": text(),
    "prompt_limit": count(optional=True), "heldout": count(), "prompts_per_round": count(), "rounds": count(),
    "seed": number(True, 0, 2**32 - 1), "samples": count(2), "temperature": number(False, **POSITIVE),
    "top_p": number(False, 0, 1, lo_open=True), "max_new_tokens": count(), "generation_batch_size": count(),
    "label": choice(("verifier", "reward-model", "judge")),  # implicit needs label_reference
    "verifier": text(True), "reward_model": text(True), "judge_url": text(True), "judge_model": text(True),
    "api_key_env": text(True), "judge_concurrency": count(), "implicit_beta": number(False, **POSITIVE),
    "label_reference": text(True), "min_margin": number(False, 0), "variant": variant(optional=True),
    "beta": number(False, optional=True, **POSITIVE), "steps": count(optional=True),
    "learning_rate": number(False, optional=True, **POSITIVE), "batch_size": count(optional=True), "lora": lora,
    "reference": choice(("reset", "fixed")), "data": text(True), "task_pairs": boolean,
    "on_invalid": choice(("error", "skip")), "replay_ratio": number(False, 0, 1, hi_open=True), "baseline": boolean,
    "config": lambda v: None if v is None else INVALID,  # no such file
    "set": lambda v: [] if v == [] else INVALID,  # every fuzz item lacks KEY=VALUE or is not a key
    "eval_samples": count(), "overwrite": boolean, "progress": boolean,
}
ITERATE_BASE = {"prompts": {"task": None}}

# ---- the values ----

FIXED = [None, True, False, 0, 1, -1, 2, 3, 7, 256, 511, 512, 100, INT_MAX, INT_MAX + 1, 2**32 - 1, 2**32, 10**30,
         10**40, -10**9, 0.0, -0.0, 0.5, 1.0, 1.5, 2.0, 8.0, -0.5, -1e-9, 1e-9, 1e38, 3.5e38, 1e308, -1e308, NAN, INF,
         -INF, "", " ", "0", "1", "-1", "2.5", "8.0", "1e-4", "1e3", "nan", "inf", "-inf", ".nan", "no", "yes", "true",
         "false", "True", "on", "off", "none", "null", "dpo", "simpo", "bogus", "stop", "skip_step", "copy", "auto",
         "fp32", "linear", "keep_end", "error", "skip", "tensorboard", "wandb", "arithmetic", "verifier", "judge",
         "reset", "fixed", "soft", "sdpa", "org/kernel", ".", [], ["a"], ["a", "b"], ["a", "b", "c"], [1, 2], ["a", ""],
         ["tensorboard"], ["none", "wandb"], {}, {"r": 8}, {"r": 0}, {"r": "x"}, {"r": 8.5}, {"preset": "simpo"},
         {"preset": "nope"}, {"bogus": 1}, {"r": 8, "alpha": NAN}, {"r": 8, "dropout": 1.0}, {"r": 4, "alpha": 1e39},
         {"target_modules": ["q_proj"]}, {"target_modules": [3]}]
RANDOM_PER_KEY = 30


def _random_values(rng: random.Random) -> list[Any]:
    out = []
    for _ in range(RANDOM_PER_KEY):
        kind = rng.randrange(5)
        if kind == 0:
            out.append(rng.randint(-10**12, 10**12) if rng.random() < 0.3 else rng.randint(-3, 2000))
        elif kind == 1:
            out.append(rng.uniform(-1, 1) * 10 ** rng.randint(-12, 40))
        elif kind == 2:
            out.append(rng.uniform(0, 1))
        elif kind == 3:
            out.append(repr(rng.choice([rng.randint(-5, 5000), rng.uniform(-2, 2), rng.uniform(0, 1)])))
        else:
            out.append(rng.choice(["x", "1x", "3 4", "--", "0x10", "1_000", " 12 ", "+3", "[1]", "{a: 1}"]))
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


def _run(oracle_table: dict[str, Oracle], attempt: Callable[[str, Any], Any], aliases: dict[str, tuple]) -> dict:
    rng = random.Random(23)
    stats = {"cases": 0, "tracebacks": [], "accepted_wrong": [], "refused_right": [], "unnamed": []}
    for key, oracle in oracle_table.items():
        for value in FIXED + _random_values(rng):
            stats["cases"] += 1
            want = oracle(value)
            try:
                got = attempt(key, value)
            except UnipoError as exc:
                if want is not INVALID and want is not EITHER:
                    stats["refused_right"].append((key, value, str(exc)))
                elif not any(name in str(exc) for name in (key, *aliases.get(key, ()))):
                    stats["unnamed"].append((key, value, str(exc)))
                continue
            except Exception as exc:  # a traceback for the user
                stats["tracebacks"].append((key, value, f"{type(exc).__name__}: {exc}"))
                continue
            if want is INVALID:
                stats["accepted_wrong"].append((key, value, got))
            elif want is not EITHER and not _same(got, want):
                stats["accepted_wrong"].append((key, value, got, want))
    return stats


def _check(stats: dict, minimum: int) -> None:
    assert stats["cases"] >= minimum
    for kind in ("tracebacks", "accepted_wrong", "refused_right", "unnamed"):
        assert not stats[kind], f"{len(stats[kind])} {kind}, e.g. {stats[kind][:5]}"


def test_every_train_config_key():
    assert set(TRAIN) == set(TrainConfig.keys())  # a new key needs its rule here

    def attempt(key, value):
        cfg = TrainConfig.from_dict({"data": "d.jsonl", **TRAIN_BASE.get(key, {}), key: value}, source="fuzz")
        plan_training(cfg)
        return getattr(cfg, key)

    aliases = {"variant": ("preset",), "beta": ("beta",), "lora": ("lora",), "reference": ("reference",),
               "token_signal": ("token_signal", "token signal")}
    stats = _run(TRAIN, attempt, aliases)
    _check(stats, 5000)


def test_every_iterate_config_key():
    import dataclasses

    assert set(ITERATE) == {f.name for f in dataclasses.fields(IterateConfig)}

    def attempt(key, value):
        cfg = IterateConfig(**{"task": "arithmetic", **ITERATE_BASE.get(key, {}), key: value})
        check_config(cfg)
        return getattr(cfg, key)

    aliases = {k: (k.replace("_", "-"),) for k in ITERATE}
    aliases.update({"task": ("task", "--task"), "prompts": ("prompts",), "set": ("--set",), "config": ("config",),
                    "variant": ("variant", "preset"), "steps": ("max_steps",), "batch_size": ("per_device_batch_size",),
                    "label": ("label",)})
    stats = _run(ITERATE, attempt, aliases)
    _check(stats, 4000)


@pytest.mark.parametrize("make,message", [
    (lambda d: d, "not found (it is a directory)"),
    (lambda d: d / "absent.yaml", "not found"),
    (lambda d: (d / "b.yaml").write_bytes(b"\xf0\x28\x8c\x28") and d / "b.yaml", "cannot be read as a UTF-8 YAML"),
    (lambda d: (d / "l.yaml").write_text("- a list\n") and d / "l.yaml", "the top level must be a mapping"),
])
def test_a_config_file_that_is_not_a_yaml_mapping_is_one_line(tmp_path, make, message):
    import re

    from unipo.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig.load(make(tmp_path))
