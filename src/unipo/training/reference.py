"""Where the reference model's per-token log-probabilities come from.

- ``copy``: a frozen copy of the starting model (in ``ref_dtype``, no gradient);
- ``adapter``: with LoRA, the policy itself with its adapters disabled (no second copy in memory);
- ``precomputed``: one pass over the data before training, cached on disk under a fingerprint of model,
  data and tokenisation, after which no reference model is resident (sequence-level variants only);
- ``none``: reference-free objectives (SimPO, reference_free) need no reference.
"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import nullcontext
from pathlib import Path

import torch

from unipo.errors import ConfigError, UnipoError
from unipo.io.atomic import atomic_path
from unipo.layout import PackedBatch, Sides, gather_side
from unipo.models.forward import ReferenceOutputs, hidden_states, response_logps, unwrap
from unipo.training.config import REFERENCE_MODES as CONFIG_REFERENCE_MODES

#: the reference modes a run resolves to (TrainConfig's choices without "auto")
REFERENCE_MODES = tuple(mode for mode in CONFIG_REFERENCE_MODES if mode != "auto")


def _adapter_disabled(model: torch.nn.Module):
    peft_model = model
    while hasattr(peft_model, "module") and isinstance(peft_model.module, torch.nn.Module):
        peft_model = peft_model.module
    return peft_model.disable_adapter() if hasattr(peft_model, "disable_adapter") else nullcontext()


def _autocast(dtype: torch.dtype | None, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def reference_pass(policy: torch.nn.Module | None, ref_model: torch.nn.Module | None, batch: PackedBatch, *,
                   chunk_size: int, need_hidden: bool, need_layers: bool = False,
                   autocast_dtype: torch.dtype | None = None, head_dtype: torch.dtype | None = None
                   ) -> ReferenceOutputs:
    """Run the reference (``ref_model``, or ``policy`` with its adapters disabled) over ``batch``.

    Returns its per-token log-probs; with ``need_hidden`` instead the gathered final hidden states and the
    head (for per-position KL terms and token signals; log-probs follow from them), plus every layer's
    hidden states with ``need_layers``. ``autocast_dtype`` and ``head_dtype``: compute exactly as the policy
    does under mixed precision (the same autocast, the same LM-head input dtype), so that at step 1, where
    the policy is the reference, every log-ratio is exactly 0."""
    batch = PackedBatch.from_dict(batch)
    model = ref_model if ref_model is not None else policy
    adapter = nullcontext() if ref_model is not None else _adapter_disabled(policy)
    with adapter, _autocast(autocast_dtype, batch.input_ids.device):
        if need_hidden or need_layers:
            extra = {"output_hidden_states": True} if need_layers else {}
            hidden, out = hidden_states(model, batch, **extra)
            return ReferenceOutputs(hidden=batch.sides.map(lambda _, layout: gather_side(hidden, layout)),
                                    head=unwrap(model).get_output_embeddings(),
                                    layers=getattr(out, "hidden_states", None) if need_layers else None)
        out = response_logps(model, batch, chunk_size=chunk_size, head_dtype=head_dtype)
    return ReferenceOutputs(logps=out.logps)


def check_reference_mode(objective, mode: str) -> None:
    """Refuse a reference mode that cannot serve ``objective``: a variant that reads the reference model at
    every step (per-position KL, hidden states for a token signal) cannot use precomputed log-probs or none;
    a variant that reads reference log-probs cannot use none."""
    req, name = objective.requirements, objective.config.name
    if mode in ("precomputed", "none") and req.live_reference:
        what = "precomputed reference log-probs" if mode == "precomputed" else "reference: none"
        raise ConfigError(f"variant {name} needs the reference model at every step (full next-token distributions "
                          f"or hidden states); {what} cannot serve it (use reference: copy, or adapter with LoRA)")
    if mode == "none" and req.reference:
        raise ConfigError(f"variant {name} needs a reference model; reference: none is only for reference-free "
                          f"variants (simpo, reference_free)")


class Reference:
    """Where a step's reference outputs come from (``mode``):

    - ``copy``: ``model``, a frozen copy of the starting model (in ``ref_dtype``, no gradient);
    - ``adapter``: with LoRA, the policy itself with its adapters disabled (no second copy in memory);
    - ``precomputed``: the batch's ``ref_logps`` columns, computed once before training
      (:func:`precompute_cached`); sequence-level variants only;
    - ``none``: no reference (reference-free objectives).

    Whatever the mode, a batch that carries precomputed reference log-probs uses them when nothing more
    (hidden states) is needed.
    """

    def __init__(self, mode: str, model: torch.nn.Module | None = None, autocast_dtype: torch.dtype | None = None):
        if mode not in REFERENCE_MODES:
            raise ValueError(f"reference mode must be one of {REFERENCE_MODES}, got {mode!r}")
        if mode == "copy" and model is None:
            raise ValueError("reference mode copy needs the reference model")
        # the copy runs under the policy's autocast (the adapter-disabled policy already does)
        self.mode, self.model, self.autocast_dtype = mode, model, autocast_dtype if mode == "copy" else None

    def outputs(self, policy: torch.nn.Module, batch: PackedBatch, *, chunk_size: int, need_hidden: bool = False,
                need_layers: bool = False, head_dtype: torch.dtype | None = None) -> ReferenceOutputs:
        """The reference's outputs for ``batch`` (see :class:`~unipo.models.forward.ReferenceOutputs`)."""
        given = batch.chosen.ref_logps is not None and batch.rejected.ref_logps is not None
        if self.mode == "none" or (given and not (need_hidden or need_layers)):
            return ReferenceOutputs(logps=Sides(batch.chosen.ref_logps, batch.rejected.ref_logps) if given else None)
        if self.mode == "precomputed":
            raise UnipoError("reference: precomputed, but the batch carries no reference log-probs (or the "
                             "objective needs the reference model's hidden states)")
        return reference_pass(policy, self.model, batch, chunk_size=chunk_size, need_hidden=need_hidden,
                              need_layers=need_layers, autocast_dtype=self.autocast_dtype, head_dtype=head_dtype)


def file_digest(path: Path) -> str:
    """Cheap identity of a weights file: name, size and modification time (not a full content hash)."""
    st = path.stat()
    return f"{path.name}:{st.st_size}:{int(st.st_mtime)}"


def fingerprint(model_path: str, tokenizer_fp: str, pairs: list[dict], *, ref_dtype: str,
                share_prompt: bool) -> str:
    """Key of a precomputed-reference cache: model identity, tokenizer, every token of the data, dtype."""
    h = hashlib.sha256()
    p = Path(model_path)
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + sorted(p.glob("config.json")) \
        if p.is_dir() else []
    h.update(json.dumps([model_path, [file_digest(f) for f in files], tokenizer_fp, ref_dtype,
                         share_prompt]).encode())
    for ex in pairs:
        more = ex.get("more_rejected_ids") or []  # listwise rows only: other datasets keep their keys
        for ids in (ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"], *more):
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
        if more:
            h.update(b"more_rejected:%d" % len(more))
    return h.hexdigest()[:24]


def _rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gathered(obj, world: int) -> list:
    """``obj`` of every rank, in rank order (``torch.distributed.all_gather_object``; ``[obj]`` alone)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _read_cache(cache_file: Path, n_pairs: int) -> dict | None:
    if not cache_file.exists():
        return None
    cached = torch.load(cache_file, weights_only=True)
    return cached if len(cached["chosen"]) == n_pairs else None


def _reference_batch(ref_model: torch.nn.Module, part: list[dict], collate, *, chunk_size: int,
                     device: torch.device, autocast_dtype: torch.dtype | None) -> list[tuple]:
    """(chosen, rejected, further rejected) log-prob tensors of each pair of ``part``, one batch."""
    batch = PackedBatch.from_dict(collate(part)).to(device)
    out = reference_pass(None, ref_model, batch, chunk_size=chunk_size, need_hidden=False,
                         autocast_dtype=autocast_dtype, head_dtype=autocast_dtype)
    row, rows = 0, []  # the rejected rows: each pair's K responses in turn (unipo.layout.PackedBatch.rejected_pair)
    for i, ex in enumerate(part):
        # clone: each tensor owns its storage (not a view of the padded batch), so that the cache file's bytes
        # do not depend on which process computed it or how it travelled
        c = out.logps.chosen[i, : len(ex["chosen_ids"])].float().cpu().clone()
        rs = [out.logps.rejected[row + k, : len(ids)].float().cpu().clone()
              for k, ids in enumerate([ex["rejected_ids"], *(ex.get("more_rejected_ids") or [])])]
        row += len(rs)
        rows.append((c, rs[0], rs[1:]))
    return rows


def precompute_reference(ref_model: torch.nn.Module, pairs: list[dict], collate, *, batch_size: int,
                         chunk_size: int, cache_file: Path, device: torch.device, progress: bool = True,
                         autocast_dtype: torch.dtype | None = None) -> list[dict]:
    """Add ``ref_chosen_logps`` / ``ref_rejected_logps`` lists to every pair (and, for a listwise pair,
    ``ref_more_rejected_logps``: one list per further rejected response), from the cache when present.

    The cache is a ``torch.save`` file named by :func:`fingerprint`; a changed model, tokenizer, dataset or
    truncation changes the name, so a stale cache is never read.

    Under ``torch.distributed`` with W > 1 processes (torchrun, ``accelerate launch``) the work is split:
    the batches are those of one process (``pairs[b·batch_size : (b+1)·batch_size]``), rank r computes
    batches r, r+W, r+2W, …, the results are gathered once (``all_gather_object``) and every rank ends with
    all pairs in their order; rank 0 writes the cache file, the others wait for it at a barrier. The cache
    is used only when every rank finds it. Same batches, so the same values and the same file as one process.
    """
    rank, world = _rank_world()
    cached = _read_cache(cache_file, len(pairs))
    if all(hit for hit in _gathered(cached is not None, world)):
        more = cached.get("more_rejected") or [[] for _ in pairs]
        return _attach(pairs, cached["chosen"], cached["rejected"], more)
    from tqdm.auto import tqdm

    ref_model.eval()
    starts = range(0, len(pairs), batch_size)
    mine = {start: _reference_batch(ref_model, pairs[start:start + batch_size], collate, chunk_size=chunk_size,
                                    device=device, autocast_dtype=autocast_dtype)
            for start in tqdm(starts[rank::world], desc="reference log-probs", disable=not progress or rank > 0)}
    computed = {start: rows for part in _gathered(mine, world) for start, rows in part.items()}
    rows = [r for start in starts for r in computed[start]]
    chosen, rejected, more_rejected = ([r[k] for r in rows] for k in range(3))
    _attach(pairs, chosen, rejected, more_rejected)
    if rank == 0:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        listwise = {"more_rejected": more_rejected} if any(more_rejected) else {}
        buffer = io.BytesIO()  # not torch.save(tmp): the archive would embed the temporary file's name (its pid)
        torch.save({"chosen": chosen, "rejected": rejected, **listwise}, buffer)
        with atomic_path(cache_file, again="run again (the cache is rebuilt)") as tmp:
            tmp.write_bytes(buffer.getvalue())
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return pairs


def _attach(pairs: list[dict], chosen: list, rejected: list, more: list) -> list[dict]:
    for ex, c, r, m in zip(pairs, chosen, rejected, more, strict=True):
        ex["ref_chosen_logps"], ex["ref_rejected_logps"] = c.tolist(), r.tolist()
        if m:
            ex["ref_more_rejected_logps"] = [x.tolist() for x in m]
    return pairs


def precompute_cached(ref_model: torch.nn.Module, model_path: str, tokenizer, pairs: list[dict], collate, *,
                      ref_dtype: torch.dtype, share_prompt: bool, batch_size: int, chunk_size: int,
                      device: torch.device, progress: bool = True, autocast_dtype: torch.dtype | None = None) -> str:
    """:func:`precompute_reference` into the shared cache ``cache_dir()/reflogps/KEY.pt``, KEY from
    :func:`fingerprint`; training's ``reference: precomputed`` and evaluation read the same files. Returns KEY."""
    from unipo.data.tokenize import tokenizer_fingerprint
    from unipo.models.builtin import cache_dir

    dtype_key = str(ref_dtype) + (f"+autocast:{autocast_dtype}" if autocast_dtype is not None else "")
    key = fingerprint(model_path, tokenizer_fingerprint(tokenizer), pairs, ref_dtype=dtype_key,
                      share_prompt=share_prompt)
    precompute_reference(ref_model, pairs, collate, batch_size=batch_size, chunk_size=chunk_size,
                         cache_file=cache_dir() / "reflogps" / f"{key}.pt", device=device, progress=progress,
                         autocast_dtype=autocast_dtype)
    return key
