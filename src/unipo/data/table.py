"""Prepared pairs as an Arrow table: written chunk by chunk, read memory-mapped, indexed pair by pair.

One row per :class:`~unipo.data.tokenize.TokenizedPair`. The token ids are ``list<int32>`` columns
(``prompt_ids``, ``chosen_ids``, ``rejected_ids``); ``row`` (int64) is the pair's row in its source; the optional
columns exist when the preparation options can fill them: ``chosen_weights`` / ``rejected_weights``
(``list<float64>``, TIS-DPO), ``chosen_diff_mask`` / ``rejected_diff_mask`` (``list<int8>``, BMC),
``pair_weight`` (float64), ``chosen_score`` / ``rejected_score`` (float64), ``gold_ids`` (``list<int32>``, a
third, gold response per pair: TPO's, with ``PrepOptions.gold_column``), and always ``more_rejected_ids``
(``list<list<int32>>``, null but for listwise rows).

:class:`PairsTable` is the dataset training reads: ``table[i]`` is the dict that the collator takes (the
pair's non-null fields and ``index``, its position in the prepared data), cut from the mapped buffers, so a
table of millions of pairs holds in memory only the pages its batches touch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from unipo.data.tokenize import PrepOptions, TokenizedPair

__all__ = ["PairsTable", "first_listwise", "record_batch", "schema_for", "take"]

ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
_IDS = pa.list_(pa.int32())


def schema_for(opts: PrepOptions) -> pa.Schema:
    """The table's columns for pairs prepared with ``opts``."""
    fields = [pa.field(name, _IDS, nullable=False) for name in ID_COLUMNS]
    fields.append(pa.field("row", pa.int64(), nullable=False))
    if opts.weights_columns is not None:
        fields += [pa.field(f"{side}_weights", pa.list_(pa.float64())) for side in ("chosen", "rejected")]
    if opts.bmc_masks:
        fields += [pa.field(f"{side}_diff_mask", pa.list_(pa.int8())) for side in ("chosen", "rejected")]
    if opts.pair_weight_column is not None:
        fields.append(pa.field("pair_weight", pa.float64()))
    if opts.score_columns is not None:
        fields += [pa.field(f"{side}_score", pa.float64()) for side in ("chosen", "rejected")]
    fields.append(pa.field("more_rejected_ids", pa.list_(_IDS)))
    if opts.gold_column is not None:
        fields.append(pa.field("gold_ids", _IDS, nullable=False))
    return pa.schema(fields)


def _list_array(lists: Sequence[Sequence[Any]], dtype: Any) -> pa.Array:
    """``lists`` (none of them None) as a list array, through flat numpy buffers (no per-element Arrow call)."""
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)), out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(lists), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def record_batch(pairs: Sequence[TokenizedPair], schema: pa.Schema) -> pa.RecordBatch:
    """One chunk of prepared pairs as a record batch of ``schema``."""
    columns = []
    for f in schema:
        values = [getattr(p, f.name) for p in pairs]
        if f.name in ID_COLUMNS or f.name == "gold_ids":
            columns.append(_list_array(values, np.int32))
        elif f.name == "row":
            columns.append(pa.array(values, type=pa.int64()))
        else:
            columns.append(pa.array(values, type=f.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class _Batch:
    """One record batch's columns: the id columns as numpy views of their offsets and values, others as Arrow."""

    def __init__(self, batch: pa.RecordBatch):
        self.ids = {}
        for name in ID_COLUMNS:
            arr = batch.column(name)
            self.ids[name] = (arr.offsets.to_numpy(zero_copy_only=True), arr.values.to_numpy(zero_copy_only=True))
        self.rows = batch.column("row").to_numpy(zero_copy_only=True)
        self.others = {name: batch.column(name) for name in batch.schema.names
                       if name not in ID_COLUMNS and name != "row"}

    def get(self, k: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (offsets, values) in self.ids.items():
            out[name] = values[offsets[k]:offsets[k + 1]].tolist()
        out["row"] = int(self.rows[k])
        for name, arr in self.others.items():
            value = arr[k].as_py()
            if value is not None:
                out[name] = value
        return out


class PairsTable:
    """Prepared pairs, in an Arrow table (memory-mapped when it comes from the cache); a map-style dataset.

    ``positions``: the pairs of the table this view holds (a subset, e.g. the training part of a hold-out
    split), None for all. ``self[i]["index"]`` is the pair's position in the whole table."""

    def __init__(self, table: pa.Table, positions: np.ndarray | None = None):
        self.table = table
        self._batches = [_Batch(b) for b in table.to_batches() if b.num_rows]
        self._starts = np.cumsum([0] + [len(b.rows) for b in self._batches])
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions) if self.positions is not None else int(self._starts[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"pair {i} of {len(self)}")
        i = i % len(self)
        j = int(self.positions[i]) if self.positions is not None else i
        b = int(np.searchsorted(self._starts, j, side="right")) - 1
        out = self._batches[b].get(j - int(self._starts[b]))
        out["index"] = j
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    def subset(self, indices: Sequence[int]) -> PairsTable:
        """The pairs at ``indices`` of this view, in that order."""
        base = self.positions if self.positions is not None else np.arange(len(self))
        return PairsTable.__new__(PairsTable)._share(self, base[np.asarray(indices, dtype=np.int64)])

    def _share(self, other: PairsTable, positions: np.ndarray) -> PairsTable:
        self.table, self._batches, self._starts, self.positions = other.table, other._batches, other._starts, positions
        return self

    def to_rows(self) -> list[dict[str, Any]]:
        """Every pair as a dict in a Python list (for the callers that add columns to the pairs)."""
        return list(self)

    def first_listwise(self) -> dict[str, Any] | None:
        """The first pair with several rejected responses, or None, reading only that column."""
        found = [b for b in self._batches if "more_rejected_ids" in b.others
                 and b.others["more_rejected_ids"].null_count < len(b.rows)]
        if not found:
            return None
        return next((r for r in self if r.get("more_rejected_ids")), None)

    @classmethod
    def from_pairs(cls, pairs: Sequence[TokenizedPair], opts: PrepOptions) -> PairsTable:
        """An in-memory table of ``pairs`` (sources that are not cached: rows given as a list, Hub datasets)."""
        schema = schema_for(opts)
        return cls(pa.Table.from_batches([record_batch(pairs, schema)] if pairs else [], schema=schema))


def take(rows: PairsTable | list[dict[str, Any]], indices: Sequence[int]) -> PairsTable | list[dict[str, Any]]:
    """The rows at ``indices``: a view of a table, or a new list."""
    return rows.subset(indices) if isinstance(rows, PairsTable) else [rows[i] for i in indices]


def first_listwise(rows: PairsTable | list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first row with several rejected responses (``more_rejected_ids``), or None."""
    if isinstance(rows, PairsTable):
        return rows.first_listwise()
    return next((r for r in rows if r.get("more_rejected_ids")), None)
