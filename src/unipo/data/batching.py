"""Batch layout for preference pairs: the shared prompt is computed once, and padding is packed away.

Each pair becomes ONE sequence ``[prompt | chosen | rejected]``. Position ids restart at the end of the prompt
for the rejected response, and a 4-D attention mask lets chosen tokens see the prompt and earlier chosen
tokens, rejected tokens see the prompt and earlier rejected tokens, and nobody see padding. So the prompt
is processed once per pair instead of twice (TRL's layout is two rows ``[prompt | chosen]`` and
``[prompt | rejected]``), and the first token of each response is predicted from the same last prompt
position. ``share_prompt=False`` gives that plain two-sequence layout (used to test the fast path against).

A pair with several rejected responses (listwise rows, :mod:`unipo.objective.listwise`) is ONE sequence
``[prompt | chosen | rejected_1 | … | rejected_K]``: each rejected response has its own segment id
(:func:`unipo.layout.rejected_segment`) and positions that restart at the end of the prompt, and sees only the
prompt and itself, so the prompt is computed once for all K + 1 responses. A pair with a gold response (TPO,
``gold_ids``) has it as one more such branch, last, with the segment id :data:`unipo.layout.GOLD`
(``[prompt | chosen | rejected | gold]``); ``share_prompt=False`` gives it its own ``[prompt | gold]`` sequence.

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

from unipo.errors import UnipoError
from unipo.layout import (
    CHOSEN,
    GOLD,
    MAX_REJECTED,
    PAD_SEGMENT,
    PROMPT,
    RESPONSE_KEYS,
    SEGMENT_OF,
    TOKEN_COLUMNS,
    pad_rows,
    rejected_segment,
)


@dataclass
class _Sequence:
    """One contiguous run of tokens with its own positions; ``src``: for each response in it, ``(side, row,
    local source positions)``, ``row`` its row in that side's ``[B, T]`` (or ``[N, T]``) layout."""

    ids: list[int]
    segments: list[int]
    positions: list[int]
    src: list[tuple[str, int, list[int]]]


def rejected_responses(example: dict[str, Any]) -> list[list[int]]:
    """A tokenized pair's rejected responses: ``rejected_ids`` then, for a listwise row, ``more_rejected_ids``."""
    return [list(example["rejected_ids"]), *(list(r) for r in example.get("more_rejected_ids") or ())]


def _sequences(examples: Sequence[dict[str, Any]], share_prompt: bool) -> list[_Sequence]:
    """The sequences a batch is made of: one ``[prompt | chosen | rejected_1 | … | rejected_K]`` per pair (shared
    prompt; every rejected response a branch over the prompt, with its own segment id and positions that
    continue from the prompt), or ``[prompt | chosen]`` for every pair followed by ``[prompt | rejected_k]`` for
    every rejected response. Rejected rows are numbered pair by pair (pair 0's K_0 responses first)."""
    seqs, rejected, row = [], [], 0
    for i, ex in enumerate(examples):
        p, c, rs = list(ex["prompt_ids"]), list(ex["chosen_ids"]), rejected_responses(ex)
        rejected.append([(row + k, p, r) for k, r in enumerate(rs)])
        row += len(rs)
        n_p = len(p)
        if not share_prompt:
            seqs.append(_plain_sequence(i, p, c, "chosen"))
            continue
        seq = _Sequence(ids=p + c, segments=[PROMPT] * n_p + [CHOSEN] * len(c), positions=list(range(n_p + len(c))),
                        src=[("chosen", i, [n_p - 1 + j for j in range(len(c))])])
        for k, r in enumerate(rs):
            _branch(seq, "rejected", rejected[-1][k][0], n_p, r, rejected_segment(k))
        if ex.get("gold_ids") is not None:  # TPO's gold response: one more branch over the prompt
            _branch(seq, "gold", i, n_p, list(ex["gold_ids"]), GOLD)
        seqs.append(seq)
    if not share_prompt:  # rejected sequences after all chosen ones, then the gold ones
        seqs += [_plain_sequence(j, p, r, "rejected") for group in rejected for j, p, r in group]
        seqs += [_plain_sequence(i, list(ex["prompt_ids"]), list(ex["gold_ids"]), "gold")
                 for i, ex in enumerate(examples) if ex.get("gold_ids") is not None]
    return seqs


def _branch(seq: _Sequence, side: str, row: int, n_p: int, response: list[int], segment: int) -> None:
    """Append ``response`` to ``seq`` as a branch over its prompt (``n_p`` tokens): its own ``segment``, positions
    that continue from the prompt, its first token predicted from the prompt's last position."""
    start = len(seq.ids)
    seq.src.append((side, row, [n_p - 1] + [start + j - 1 for j in range(1, len(response))]))
    seq.ids += response
    seq.segments += [segment] * len(response)
    seq.positions += list(range(n_p, n_p + len(response)))


def _plain_sequence(row: int, prompt: list[int], response: list[int], side: str) -> _Sequence:
    """``[prompt | response]``: response token j is predicted from position len(prompt) - 1 + j."""
    n_p, n_r = len(prompt), len(response)
    return _Sequence(ids=prompt + response, segments=[PROMPT] * n_p + [SEGMENT_OF.get(side, GOLD)] * n_r,
                     positions=list(range(n_p + n_r)), src=[(side, row, list(range(n_p - 1, n_p - 1 + n_r)))])


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
    """Collate tokenized pairs (dicts with ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, for listwise rows
    ``more_rejected_ids``, for TPO ``gold_ids`` (every pair or none: the batch then has ``gold_src`` /
    ``gold_labels`` / ``gold_mask``), and optional per-token columns) into the layout described in the module docstring;
    ``packing`` puts several sequences in one row (:func:`pack_rows`), ``one_row`` all of them in a single row
    with no padding at all (for segment attention, :mod:`unipo.models.segment_attention`, whose cost does not
    grow with the row). When some pair has several rejected responses, the rejected tensors have one row per
    rejected response and ``rejected_pair`` names each row's pair (:class:`unipo.layout.PackedBatch`)."""
    seqs = _sequences(examples, share_prompt)
    lengths = [len(s.ids) for s in seqs]
    if one_row:
        layout, length = [list(range(len(seqs)))], sum(lengths)
    else:
        length = max(lengths)
        layout = pack_rows(lengths, length) if packing else [[j] for j in range(len(seqs))]
    responses = {"chosen": [list(ex["chosen_ids"]) for ex in examples],
                 "rejected": [r for ex in examples for r in rejected_responses(ex)]}
    golds = [ex.get("gold_ids") for ex in examples]
    if any(g is not None for g in golds):
        if any(g is None for g in golds):
            raise UnipoError("some pairs of this batch have a gold response (gold_ids) and some do not: every pair "
                             "of a batch needs one, or none")
        responses["gold"] = [list(g) for g in golds]
    flat_src: dict[str, list[list[int]]] = {side: [[] for _ in labels] for side, labels in responses.items()}
    rows, segs, poss, docs = [], [], [], []
    for r, members in enumerate(layout):
        ids, seg, pos, doc = [], [], [], []
        for j in members:
            s = seqs[j]
            for side, row, local in s.src:
                flat_src[side][row] = [r * length + len(ids) + k for k in local]
            ids += s.ids
            seg += s.segments
            pos += s.positions
            doc += [j] * len(s.ids)
        rows.append(ids)
        segs.append(seg)
        poss.append(pos)
        docs.append(doc)
    batch = {
        "input_ids": pad_rows(rows, length, pad_token_id, torch.long),
        "position_ids": pad_rows(poss, length, 0, torch.long),
        "segments": pad_rows(segs, length, PAD_SEGMENT, torch.int8),
        "documents": pad_rows(docs, length, -1, torch.int32),
    }
    for side, labels in responses.items():
        t = max(len(x) for x in labels)
        batch[f"{side}_src"] = pad_rows(flat_src[side], t, 0, torch.long)
        batch[f"{side}_labels"] = pad_rows(labels, t, 0, torch.long)
        batch[f"{side}_mask"] = pad_rows([[1] * len(x) for x in labels], t, 0, torch.bool)
    batch.update(_pair_columns(examples, batch))
    return batch


def _pair_columns(examples: Sequence[dict[str, Any]], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The optional columns: per-token and per-response data columns (the responses' scores), pair weights, dataset
    indices, and ``rejected_pair``."""
    out = {}
    counts = [len(rejected_responses(ex)) for ex in examples]
    listwise = any(k > 1 for k in counts)
    if max(counts) > MAX_REJECTED:
        raise UnipoError(f"a pair has {max(counts)} rejected responses; at most {MAX_REJECTED} are supported")
    for key in TOKEN_COLUMNS:
        if examples[0].get(key) is not None:
            side = "chosen" if "chosen" in key else "rejected"
            values = [ex[key] for ex in examples]
            if listwise and side == "rejected":
                if key != "ref_rejected_logps":
                    raise UnipoError(f"the per-token column {key} is not supported for pairs with several rejected "
                                     "responses (listwise rows work with sequence-level variants)")
                values = [v for ex in examples for v in [ex[key], *(ex.get("ref_more_rejected_logps") or [])]]
            out[key] = pad_rows(values, batch[f"{side}_labels"].shape[1], 0.0, torch.float32)
    if listwise:
        out["rejected_pair"] = torch.repeat_interleave(torch.arange(len(examples)), torch.tensor(counts))
    if examples[0].get("pair_weight") is not None:
        out["pair_weight"] = torch.tensor([float(ex["pair_weight"]) for ex in examples], dtype=torch.float32)
    for key in RESPONSE_KEYS:  # [B]: one value per response (float64: as read); one rejected response per pair
        if examples[0].get(key) is not None:
            if listwise:
                raise UnipoError(f"the per-response column {key} is not supported for pairs with several rejected "
                                 "responses (listwise rows work with sequence-level variants)")
            out[key] = torch.tensor([float(ex[key]) for ex in examples], dtype=torch.float64)
    if "index" in examples[0]:
        out["index"] = torch.tensor([ex["index"] for ex in examples], dtype=torch.long)
    return out
