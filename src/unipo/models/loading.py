"""Loading models and tokenizers: local paths, hub names and built-in sources; dtype; LoRA through peft."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch

from unipo.errors import UnipoError
from unipo.models.builtin import is_builtin, resolve_builtin
from unipo.models.checks import check_model_dir, check_path_is_usable, check_tokenizer_files

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_model_path(name: str) -> str:
    """A built-in source name → its cached checkpoint; an existing directory → itself; else a hub name.

    Neither an existing directory nor a well-formed hub name (``NAME`` or ``ORG/NAME``, as
    ``huggingface_hub.utils.validate_repo_id`` accepts) is refused here, before anything loads, with both
    readings named (rather than with the hub's own validation message); a symlink loop or a dangling link
    too (rather than as a hub name). The directory's files are checked by :func:`load_model` /
    :func:`load_tokenizer` (and by the commands, before any work: :func:`unipo.models.checks.check_model_dir`)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if is_builtin(name):
        return str(resolve_builtin(name))
    path = Path(name).expanduser()
    check_path_is_usable(path)
    if path.is_dir():
        return str(path)
    if path.exists():
        raise UnipoError(f"model {name!r} is a file, not a model directory (give the directory that holds "
                         f"config.json and the weights)")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UnipoError(f"model {name!r} is not a directory and not a hub name (a hub name is NAME or ORG/NAME; "
                         f"the built-in model is smollm2-135m-instruct); check the path") from None
    return name


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _matmul_seconds(dtype: torch.dtype, size: int = 256, reps: int = 5) -> float:
    x = torch.randn(size, size).to(dtype)
    x @ x
    best = float("inf")
    for _ in range(reps):  # the minimum: robust to other processes stealing the CPU
        t = time.perf_counter()
        x @ x
        best = min(best, time.perf_counter() - t)
    return best


@functools.lru_cache(maxsize=4)
def bf16_is_fast(device_type: str = "cpu") -> bool:
    """Whether bfloat16 matmul beats float32 here. GPUs with bf16 support: yes. x86 CPUs: only those with
    native bf16 instructions (AVX512-BF16 / AMX) can be, confirmed by a short measurement; an AVX2-only
    CPU runs bf16 matmul 50-200x SLOWER than float32 (measured on this project's 2-core machines)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = _cpu_flags()
    if flags is not None and not ({"avx512_bf16", "amx_bf16"} & flags):
        return False
    return _matmul_seconds(torch.bfloat16) < _matmul_seconds(torch.float32)


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_precision(precision: str) -> str:
    """``auto`` → ``bf16`` where bf16 is fast on this machine, else ``fp32``."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_fast(device_type()) else "fp32"


def resolve_dtype(name: str, precision: str) -> torch.dtype:
    """The weight dtype of a frozen copy. ``auto`` is float32 whatever ``precision``: the copy then computes
    exactly as the policy (float32 weights under the run's autocast), so log-ratios start at exactly 0;
    ``bfloat16`` halves its memory at the cost of a small offset in every log-ratio (docs/precision.md)."""
    if name == "auto":
        return torch.float32
    if name not in DTYPES:
        raise UnipoError(f"unknown dtype {name!r}; choose from {sorted(DTYPES)} or auto")
    return DTYPES[name]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def load_tokenizer(path: str):
    """The tokenizer of ``path`` (pad = eos where it has none); a local directory's tokenizer files are
    checked first (:func:`unipo.models.checks.check_tokenizer_files`), and whatever loading raises is one line."""
    from transformers import AutoTokenizer

    local = Path(path)
    check_path_is_usable(local)
    if local.is_dir():
        check_tokenizer_files(local)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - transformers / tokenizers raise ValueError, OSError, Exception
        raise UnipoError(f"could not load a tokenizer from {path!r}: {_first_line(exc)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
               trainable: bool = True):
    """A causal LM from ``path``. ``attn_implementation=None`` (the default): segment attention
    (:mod:`unipo.models.segment_attention`) where it is exact for the model, else transformers' default;
    any other value is passed to transformers as is ("sdpa" or "eager" give the dense-mask path)."""
    from transformers import AutoModelForCausalLM

    from unipo.models import segment_attention

    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    check_model_dir(path)  # a local directory's config and weights (a hub name passes)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a damaged file the checks cannot see (SafetensorError is an Exception)
        raise UnipoError(f"could not load a causal LM from {path!r}: {_first_line(exc)}") from None
    if attn_implementation is None:
        segment_attention.enable(model)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model


def apply_lora(model, lora: dict[str, Any]):
    """Wrap ``model`` with LoRA adapters (peft). Keys: r, alpha, dropout, target_modules."""
    from peft import LoraConfig, get_peft_model

    allowed = {"r", "alpha", "dropout", "target_modules"}
    unknown = set(lora) - allowed
    if unknown:
        raise UnipoError(f"unknown lora keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    config = LoraConfig(r=int(lora.get("r", 16)), lora_alpha=int(lora.get("alpha", 32)),
                        lora_dropout=float(lora.get("dropout", 0.05)),
                        target_modules=lora.get("target_modules", "all-linear"), task_type="CAUSAL_LM")
    return get_peft_model(model, config)
