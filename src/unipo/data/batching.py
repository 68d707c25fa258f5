"""Batch layout for preference pairs: the shared prompt is computed once, and padding is packed away.

Each pair becomes ONE sequence ``[prompt | chosen | rejected]``. Position ids restart at the end of the prompt
for the rejected response, and a 4-D attention mask lets chosen tokens see the prompt and earlier chosen
tokens, rejected tokens see the prompt and earlier rejected tokens, and nobody see padding. So the prompt
is processed once per pair instead of twice (TRL's layout is two rows ``[prompt | chosen]`` and
``[prompt | rejected]``), and the first token of each response is predicted from the same last prompt
position. ``share_prompt=False`` gives that plain two-sequence layout (used to test the fast path against).

Without packing every sequence is a row, padded to the longest. With ``packing=True`` several sequences
share a row (first-fit decreasing into rows no longer than the longest sequence, :func:`pack_rows`): each
keeps its own position ids, and ``documents`` (the sequence id of every position) makes the mask
block-diagonal, so a packed batch computes exactly what the unpacked one does on fewer padded positions.

Response tokens are addressed by flat indices into the ``[rows × length]`` hidden states: ``*_src`` is the
position whose hidden state predicts the token ``*_labels``; ``*_mask`` marks real tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unipo.layout import CHOSEN, PAD_SEGMENT, PROMPT, REJECTED, SEGMENT_OF, TOKEN_COLUMNS


def _pad2d(rows: Sequence[Sequence[float]], width: int, value: float, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


@dataclass
class _Sequence:
    """One contiguous run of tokens with its own positions; ``src[side] = (pair, local source positions)``."""

    ids: list[int]
    segments: list[int]
    positions: list[int]
    src: dict[str, tuple[int, list[int]]]


def _sequences(examples: Sequence[dict[str, Any]], share_prompt: bool) -> list[_Sequence]:
    """The sequences a batch is made of: one ``[prompt | chosen | rejected]`` per pair (shared prompt), or
    ``[prompt | chosen]`` for every pair followed by ``[prompt | rejected]`` for every pair."""
    seqs = []
    for i, ex in enumerate(examples):
        p, c, r = list(ex["prompt_ids"]), list(ex["chosen_ids"]), list(ex["rejected_ids"])
        n_p = len(p)
        if share_prompt:
            seqs.append(_Sequence(
                ids=p + c + r, segments=[PROMPT] * n_p + [CHOSEN] * len(c) + [REJECTED] * len(r),
                positions=list(range(n_p + len(c))) + list(range(n_p, n_p + len(r))),
                src={"chosen": (i, [n_p - 1 + j for j in range(len(c))]),
                     "rejected": (i, [n_p - 1] + [n_p + len(c) + j - 1 for j in range(1, len(r))])}))
        else:
            seqs.append(_plain_sequence(i, p, c, "chosen"))
    if not share_prompt:  # rejected sequences after all chosen ones
        seqs += [_plain_sequence(i, list(ex["prompt_ids"]), list(ex["rejected_ids"]), "rejected")
                 for i, ex in enumerate(examples)]
    return seqs


def _plain_sequence(pair: int, prompt: list[int], response: list[int], side: str) -> _Sequence:
    """``[prompt | response]``: response token j is predicted from position len(prompt) - 1 + j."""
    n_p, n_r = len(prompt), len(response)
    return _Sequence(ids=prompt + response, segments=[PROMPT] * n_p + [SEGMENT_OF[side]] * n_r,
                     positions=list(range(n_p + n_r)), src={side: (pair, list(range(n_p - 1, n_p - 1 + n_r)))})


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: sequence indices grouped into rows of at most ``capacity`` tokens.

    Longest first, each into the first row with room; ties keep their order. With ``capacity`` = the
    longest sequence, no row is longer than the unpacked batch's rows, so packing removes padding without
    lengthening any attention window."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def collate_pairs(examples: Sequence[dict[str, Any]], pad_token_id: int, share_prompt: bool = True,
                  packing: bool = False, one_row: bool = False) -> dict[str, torch.Tensor]:
    """Collate tokenized pairs (dicts with ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` and optional
    per-token columns) into the layout described in the module docstring; ``packing`` puts several
    sequences in one row (:func:`pack_rows`), ``one_row`` all of them in a single row with no padding at all
    (for segment attention, :mod:`unipo.models.segment_attention`, whose cost does not grow with the row)."""
    seqs = _sequences(examples, share_prompt)
    lengths = [len(s.ids) for s in seqs]
    if one_row:
        layout, length = [list(range(len(seqs)))], sum(lengths)
    else:
        length = max(lengths)
        layout = pack_rows(lengths, length) if packing else [[j] for j in range(len(seqs))]
    rows, segs, poss, docs = [], [], [], []
    b = len(examples)
    flat_src: dict[str, list[list[int]]] = {"chosen": [[] for _ in range(b)], "rejected": [[] for _ in range(b)]}
    for r, members in enumerate(layout):
        ids, seg, pos, doc = [], [], [], []
        for j in members:
            s = seqs[j]
            for side, (pair, local) in s.src.items():
                flat_src[side][pair] = [r * length + len(ids) + k for k in local]
            ids += s.ids
            seg += s.segments
            pos += s.positions
            doc += [j] * len(s.ids)
        rows.append(ids)
        segs.append(seg)
        poss.append(pos)
        docs.append(doc)
    batch = {
        "input_ids": _pad2d(rows, length, pad_token_id, torch.long),
        "position_ids": _pad2d(poss, length, 0, torch.long),
        "segments": _pad2d(segs, length, PAD_SEGMENT, torch.int8),
        "documents": _pad2d(docs, length, -1, torch.int32),
    }
    for side in ("chosen", "rejected"):
        labels = [list(ex[f"{side}_ids"]) for ex in examples]
        t = max(len(x) for x in labels)
        batch[f"{side}_src"] = _pad2d(flat_src[side], t, 0, torch.long)
        batch[f"{side}_labels"] = _pad2d(labels, t, 0, torch.long)
        batch[f"{side}_mask"] = _pad2d([[1] * len(x) for x in labels], t, 0, torch.bool)
    for key in TOKEN_COLUMNS:
        if examples[0].get(key) is not None:
            side = "chosen" if "chosen" in key else "rejected"
            batch[key] = _pad2d([ex[key] for ex in examples], batch[f"{side}_labels"].shape[1], 0.0, torch.float32)
    if examples[0].get("pair_weight") is not None:
        batch["pair_weight"] = torch.tensor([float(ex["pair_weight"]) for ex in examples], dtype=torch.float32)
    if "index" in examples[0]:
        batch["index"] = torch.tensor([ex["index"] for ex in examples], dtype=torch.long)
    return batch
