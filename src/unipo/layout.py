"""The packed preference batch: the one tensor layout that data, models and training share.

This module sits below ``unipo.data``, ``unipo.models`` and ``unipo.training`` (it imports only torch and the
objective's input table, :mod:`unipo.objective.inputs`) and holds the contract between them:

* the segment ids of every position (:data:`PAD_SEGMENT`, :data:`PROMPT`, :data:`CHOSEN`, :data:`REJECTED`;
  with several rejected responses per pair the k-th is ``REJECTED + k``, :func:`rejected_segment`; a gold
  response, TPO's third one, :data:`GOLD`);
* :class:`PackedBatch` (with one :class:`SideLayout` per response side): what
  :func:`unipo.data.batching.collate_pairs` produces and what the model forward consumes;
* :func:`gather_side` / :func:`scatter_tokens`: between the packed ``[rows × L]`` positions and the
  per-response ``[B, T]`` token layout the objective reads;
* :func:`attention_mask_4d`: the dense mask of the layout (for ``attn_implementation: sdpa|eager``).

A batch travels through transformers' Trainer and accelerate as a plain ``dict`` (they move mappings of
tensors between devices); :meth:`PackedBatch.from_dict` turns it into the typed form at the start of a step
and :meth:`PackedBatch.to_dict` back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, make_dataclass
from typing import Generic, TypeVar

import torch

from unipo.objective.inputs import DATA_COLUMNS, RESPONSE_COLUMNS

T = TypeVar("T")
U = TypeVar("U")

PAD_SEGMENT, PROMPT, CHOSEN, REJECTED = -1, 0, 1, 2
SIDES = ("chosen", "rejected")
SEGMENT_OF = {"chosen": CHOSEN, "rejected": REJECTED}
#: the most rejected responses one pair may have (segment ids are int8)
MAX_REJECTED = 100


#: the segment id of a pair's gold response (TPO's third response; after every possible rejected one)
GOLD = REJECTED + MAX_REJECTED


def rejected_segment(k: int) -> int:
    """The segment id of a pair's k-th rejected response (k = 0, 1, …): each response of a sequence has its
    own id, so that every rejected response is its own branch over the shared prompt."""
    return REJECTED + k

#: optional data columns of a side (per token, then per response), by :class:`SideLayout` field → batch key pattern
#: (from the objective's input table: the inputs declared ``column``)
SIDE_COLUMNS = dict(DATA_COLUMNS)
#: every optional per-token key a collated batch may carry (``[B, T]``, padded with 0)
TOKEN_COLUMNS = tuple(pattern.format(side) for side in SIDES for name, pattern in SIDE_COLUMNS.items()
                      if name not in RESPONSE_COLUMNS)
#: every optional per-response key a collated batch may carry (``[B]``: one value per response, e.g. its score)
RESPONSE_KEYS = tuple(pattern.format(side) for side in SIDES for pattern in RESPONSE_COLUMNS.values())


@dataclass(frozen=True)
class Sides(Generic[T]):
    """One value per response side."""

    chosen: T
    rejected: T

    def __getitem__(self, name: str) -> T:
        if name not in SIDES:
            raise KeyError(f"side must be one of {SIDES}, got {name!r}")
        return self.chosen if name == "chosen" else self.rejected

    def items(self) -> tuple[tuple[str, T], tuple[str, T]]:
        return (("chosen", self.chosen), ("rejected", self.rejected))

    def map(self, fn: Callable[[str, T], U]) -> Sides[U]:
        """``Sides(fn("chosen", chosen), fn("rejected", rejected))``."""
        return Sides(fn("chosen", self.chosen), fn("rejected", self.rejected))

    @classmethod
    def build(cls, fn: Callable[[str], U]) -> Sides[U]:
        return cls(fn("chosen"), fn("rejected"))


class _SideLayoutMethods:
    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


SideLayout = make_dataclass("SideLayout", [
    ("src", "torch.Tensor"), ("labels", "torch.Tensor"), ("mask", "torch.Tensor"),
    *[(name, "torch.Tensor | None", field(default=None)) for name in SIDE_COLUMNS],
], bases=(_SideLayoutMethods,), frozen=True, namespace={"__module__": __name__, "__doc__": """\
Where one side's response tokens sit in the packed rows. Every tensor is ``[B, T]`` (B pairs, T the
    longest response of this side in the batch) but the per-response data columns (``[B]``):

    - ``src`` (long): flat index into the ``[rows × L]`` positions of the position whose hidden state
      PREDICTS each token;
    - ``labels`` (long): the token ids; ``mask`` (bool): True on real tokens, False on padding;
    - the optional per-token data columns (float, padded with 0), one field each: the inputs of the objective's
      input table declared ``column`` (:data:`unipo.objective.inputs.DATA_COLUMNS`: ``ref_logps``, precomputed
      reference log-probs; ``weights``, token weights from the data (TIS-DPO); ``diff_mask``, BMC's differing
      tokens), then the per-response ones (float ``[B]``: ``score``, each response's score from the data, Uni-DPO).
    """})


@dataclass(frozen=True)
class PackedBatch:
    """A batch of B preference pairs packed into ``rows`` rows of length ``L``.

    - ``input_ids``, ``position_ids`` (long) and ``segments`` (int8, :data:`PAD_SEGMENT` … :data:`REJECTED`):
      ``[rows, L]``; ``documents`` (int32, ``[rows, L]``, -1 on padding): the sequence id of every position
      when several sequences share a row, else ``None``;
    - ``chosen`` / ``rejected``: :class:`SideLayout`;
    - ``index`` (long ``[B]``): each pair's row in its dataset, when known;
    - ``pair_weights`` (float ``[B]``): each pair's weight in the loss (a data column), when given;
    - ``rejected_pair`` (long ``[N]``): with several rejected responses per pair, the pair of each row of
      ``rejected`` (whose tensors are then ``[N, T]``, N the number of rejected responses, each pair's rows
      contiguous and in pair order); None when every pair has one;
    - ``gold``: the :class:`SideLayout` of a third, gold response per pair (TPO; ``[B, T'']``, no data columns),
      packed in its pair's sequence; None unless the data carries one (``gold_*`` keys).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    chosen: SideLayout
    rejected: SideLayout
    documents: torch.Tensor | None = None
    index: torch.Tensor | None = None
    pair_weights: torch.Tensor | None = None
    rejected_pair: torch.Tensor | None = None
    gold: SideLayout | None = None

    def side(self, name: str) -> SideLayout:
        return Sides(self.chosen, self.rejected)[name]

    @property
    def sides(self) -> Sides[SideLayout]:
        return Sides(self.chosen, self.rejected)

    @property
    def num_pairs(self) -> int:
        return int(self.chosen.mask.shape[0])

    @classmethod
    def from_dict(cls, batch: Mapping[str, torch.Tensor] | PackedBatch) -> PackedBatch:
        """The typed form of a collated batch (see :func:`unipo.data.batching.collate_pairs` for its keys)."""
        if isinstance(batch, PackedBatch):
            return batch
        sides = {}
        for side in SIDES:
            columns = {name: batch.get(pattern.format(side)) for name, pattern in SIDE_COLUMNS.items()}
            sides[side] = SideLayout(batch[f"{side}_src"], batch[f"{side}_labels"], batch[f"{side}_mask"],
                                     **columns)
        gold = SideLayout(batch["gold_src"], batch["gold_labels"], batch["gold_mask"]) if "gold_src" in batch else None
        return cls(batch["input_ids"], batch["position_ids"], batch["segments"], sides["chosen"],
                   sides["rejected"], batch.get("documents"), batch.get("index"), batch.get("pair_weight"),
                   batch.get("rejected_pair"), gold)

    def to_dict(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids, "position_ids": self.position_ids, "segments": self.segments}
        for key in ("documents", "index", "rejected_pair"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.pair_weights is not None:
            out["pair_weight"] = self.pair_weights
        if self.gold is not None:
            out.update({"gold_src": self.gold.src, "gold_labels": self.gold.labels, "gold_mask": self.gold.mask})
        for side in SIDES:
            layout = self.side(side)
            out.update({f"{side}_src": layout.src, f"{side}_labels": layout.labels, f"{side}_mask": layout.mask})
            for name, pattern in SIDE_COLUMNS.items():
                if getattr(layout, name) is not None:
                    out[pattern.format(side)] = getattr(layout, name)
        return out

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch.from_dict({k: v.to(device) for k, v in self.to_dict().items()})


def gather_side(hidden: torch.Tensor, side: SideLayout) -> torch.Tensor:
    """``[N, H]``: the rows of ``hidden`` (``[rows, L, H]``) that predict the real tokens of ``side``
    (N = its number of real tokens, in ``[B, T]`` row-major order)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return flat[side.src[side.mask]]


def scatter_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` values of the real tokens back to ``[B, T]`` (zeros on padding)."""
    out = values.new_zeros(mask.shape)
    return out.masked_scatter(mask, values)


def attention_mask_4d(segments: torch.Tensor, documents: torch.Tensor | None = None,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[rows, 1, L, L]`` mask from segment and sequence ids: causal, within one sequence (``documents``;
    all of a row when not given), no padding keys, and a response sees only the prompt and itself (rejected
    never sees chosen, nor another rejected response of its pair).

    Boolean (True = attend) by default, as SDPA takes it; with ``dtype`` an additive float mask (0 / min)
    for eager attention. Padding queries attend to themselves only, so no row is fully masked.
    """
    n, length = segments.shape
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    q, k = segments[:, :, None], segments[:, None, :]
    allowed = causal[None] & (k != PAD_SEGMENT) & ((k == PROMPT) | (k == q))
    if documents is not None:
        allowed = allowed & (documents[:, :, None] == documents[:, None, :])
    eye = torch.eye(length, dtype=torch.bool, device=segments.device)[None]
    allowed = allowed | (eye & (q == PAD_SEGMENT))
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segments.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def pad_rows(rows: Sequence[Sequence[float]], width: int, value: float, dtype: torch.dtype) -> torch.Tensor:
    """``[len(rows), width]``: each row's values at its start, ``value`` after them (the collated batch's padding)."""
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out
