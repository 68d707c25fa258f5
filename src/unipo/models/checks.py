"""Checks of a model before it is used: the files of a model directory, and the finiteness of its weights.

A corrupted directory (a truncated ``model.safetensors``, no ``config.json``, no tokenizer files, an empty
directory, a symlink loop) must be refused with one line naming the path and what is wrong, before
transformers reads it: its own messages for these cases talk about installing sentencepiece or about the
hub (issue 23, item 4). A model whose weights hold NaN or inf cannot be evaluated or sampled from
(``torch.multinomial``'s "probs must lie in [0, 1]"), so ``unipo eval`` refuses it (item 5).

The checks read only headers: a safetensors file is complete when its 8-byte header length, its JSON
header and the largest data offset it declares add up to the file's size (the format:
https://github.com/huggingface/safetensors#format).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

from unipo.errors import UnipoError

__all__ = ["check_model_dir", "check_path_is_usable", "check_tokenizer_files", "check_weights_finite",
           "nonfinite_tensors", "safetensors_problem"]

#: files from which transformers can build a tokenizer (any one of these sets is enough; a glob matches any
#: sentencepiece / tiktoken model file: tokenizer.model, spiece.model, sentencepiece.bpe.model, qwen.tiktoken)
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("*.model",), ("*.tiktoken",), ("vocab.json", "merges.txt"),
                       ("vocab.txt",))


def _refuse(path: Path | str, what: str) -> UnipoError:
    return UnipoError(f"model directory {path}: {what}")


def check_path_is_usable(path: Path) -> None:
    """A symlink loop or a dangling link is refused (``Path.is_dir`` reads both as "not there")."""
    if os.path.lexists(path) and not os.path.exists(path):
        try:
            path.resolve(strict=True)
        except (RuntimeError, OSError) as exc:
            loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == 40  # ELOOP
            where = "loops back on itself" if loop else "points nowhere"
            raise UnipoError(f"model {path} is a symbolic link that {where}; give the model directory itself") from None
        raise UnipoError(f"model {path} is a symbolic link that points nowhere; give the model directory itself")


def _read_json(path: Path, root: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise _refuse(root, f"{path.name} cannot be read (permission denied)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(root, f"{path.name} is not valid JSON ({exc}); the file is damaged: copy it again "
                            "from where the model came from") from None


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (None: complete): it is as long as its header says (a
    truncated or torn copy is not)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            header = json.loads(fh.read(n)) if 0 < n <= size - 8 else None
    except PermissionError:
        return f"{path.name} cannot be read (permission denied)"
    except (OSError, ValueError):
        header = None
    if not isinstance(header, dict):
        return f"{path.name} is truncated or not a safetensors file ({size} bytes, no readable header)"
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return f"{path.name} has a damaged header"
    if 8 + n + end != size:
        return f"{path.name} is truncated: {size} bytes, its header declares {8 + n + end}"
    return None


def _check_safetensors(path: Path, root: Path) -> None:
    problem = safetensors_problem(path)
    if problem:
        raise _refuse(root, f"{problem}; copy the weights again")


def _check_weight_file(path: Path, root: Path) -> None:
    if not path.is_file():
        raise _refuse(root, f"{path.name} is missing (the weights index lists it)")
    if path.suffix == ".safetensors":
        _check_safetensors(path, root)
    elif path.suffix == ".bin" and not zipfile.is_zipfile(path):
        raise _refuse(root, f"{path.name} is truncated or not a PyTorch checkpoint; copy the weights again")


#: the weight files transformers / peft load, by kind: (single file, sharded index) in the order they try them
WEIGHT_FILES = {"model": (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")),
                "adapter": (("adapter_model.safetensors", None), ("adapter_model.bin", None))}


def _check_weights(root: Path, kind: str) -> None:
    """The single weights file, or every shard its index lists; refused when none is present."""
    for single, index_name in WEIGHT_FILES[kind]:
        index = root / index_name if index_name else None
        if index is not None and index.is_file():
            shards = sorted(set((_read_json(index, root).get("weight_map") or {}).values()))
            if not shards:
                raise _refuse(root, f"{index.name} lists no weight files")
            for shard in shards:
                _check_weight_file(root / shard, root)
            return
        if (root / single).exists():
            _check_weight_file(root / single, root)
            return
    names = ", ".join(n for pair in WEIGHT_FILES[kind] for n in pair if n)
    raise _refuse(root, f"no weights (none of {names})")


def check_tokenizer_files(root: Path) -> None:
    """One of the tokenizer file sets is present (and ``tokenizer.json`` / its config are valid JSON)."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (root / name).is_file():
            _read_json(root / name, root)
    if not any(all(any(p.is_file() for p in root.glob(f)) for f in files) for files in TOKENIZER_FILE_SETS):
        raise _refuse(root, "no tokenizer files (tokenizer.json, tokenizer.model, or vocab.json + merges.txt); "
                            "copy them from the model the checkpoint was trained from")


def check_model_dir(path: str | Path, *, tokenizer: bool = False) -> None:
    """Refuse a local model directory that cannot be loaded, with one line naming it and what is wrong.

    A full checkpoint needs a ``config.json`` with a ``model_type`` and complete weights; a LoRA adapter
    directory (``adapter_config.json``) its adapter weights. ``tokenizer``: also need tokenizer files."""
    root = Path(path)
    check_path_is_usable(root)
    if not root.is_dir():
        return  # a hub name: not ours to check
    try:
        names = {p.name for p in root.iterdir()}
    except OSError as exc:
        raise _refuse(root, f"cannot be listed ({exc.strerror or exc})") from None
    if not names:
        raise UnipoError(f"model directory {root} is empty (a model directory holds config.json, the weights "
                         "and the tokenizer files)")
    if "adapter_config.json" in names:
        _read_json(root / "adapter_config.json", root)
        _check_weights(root, "adapter")
    else:
        if "config.json" not in names:
            raise _refuse(root, "no config.json (it says which architecture the weights are for); copy it from "
                                "the model the checkpoint was trained from")
        config = _read_json(root / "config.json", root)
        if not isinstance(config, dict) or not config.get("model_type"):
            raise _refuse(root, "config.json has no model_type; it is not a transformers model config")
        _check_weights(root, "model")
    if tokenizer:
        check_tokenizer_files(root)


def nonfinite_tensors(model: Any) -> tuple[list[str], int]:
    """The names of ``model``'s parameters and buffers holding NaN or inf, and how many there are in all."""
    import torch

    bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    return bad, sum(1 for _ in model.parameters())


def check_weights_finite(model: Any, path: str | Path, *, use: str = "evaluated") -> None:
    """Refuse a model with non-finite weights, naming ``path``, how many tensors and the first of them."""
    bad, total = nonfinite_tensors(model)
    if bad:
        raise UnipoError(f"model {path}: {len(bad)} of {total} weight tensors hold NaN or inf (e.g. {bad[0]}); "
                         f"it cannot be {use}. Use the run's last finite checkpoint, or retrain with a lower "
                         "learning rate or beta")
