"""Batch layout for preference pairs: the shared prompt is computed once.

Each pair becomes ONE row ``[prompt | chosen | rejected]``. Position ids restart at the end of the prompt for
the rejected response, and a 4-D attention mask lets chosen tokens see the prompt and earlier chosen
tokens, rejected tokens see the prompt and earlier rejected tokens, and nobody see padding. So the prompt
is processed once per pair instead of twice (TRL's layout is two rows ``[prompt | chosen]`` and
``[prompt | rejected]``), and the first token of each response is predicted from the same last prompt
position. ``share_prompt=False`` gives that plain two-row layout (used to test the fast path against).

Response tokens are addressed by flat indices into the ``[rows × length]`` hidden states: ``*_src`` is the
position whose hidden state predicts the token ``*_labels``; ``*_mask`` marks real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

PAD_SEGMENT, PROMPT, CHOSEN, REJECTED = -1, 0, 1, 2
#: optional per-token columns carried through to the objective, by dataset key
TOKEN_COLUMNS = ("chosen_weights", "rejected_weights", "chosen_diff_mask", "rejected_diff_mask",
                 "ref_chosen_logps", "ref_rejected_logps")


def _pad2d(rows: Sequence[Sequence[float]], width: int, value: float, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


def collate_pairs(examples: Sequence[dict[str, Any]], pad_token_id: int, share_prompt: bool = True
                  ) -> dict[str, torch.Tensor]:
    """Collate tokenized pairs (dicts with ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` and optional
    per-token columns) into the packed layout described in the module docstring."""
    rows, segs, poss = [], [], []
    c_src, c_lab, r_src, r_lab = [], [], [], []
    for ex in examples:
        p, c, r = list(ex["prompt_ids"]), list(ex["chosen_ids"]), list(ex["rejected_ids"])
        n_p = len(p)
        if share_prompt:
            rows.append(p + c + r)
            segs.append([PROMPT] * n_p + [CHOSEN] * len(c) + [REJECTED] * len(r))
            poss.append(list(range(n_p + len(c))) + list(range(n_p, n_p + len(r))))
            c_src.append([n_p - 1 + j for j in range(len(c))])
            r_src.append([n_p - 1] + [n_p + len(c) + j - 1 for j in range(1, len(r))])
        else:
            rows.append(p + c)
            segs.append([PROMPT] * n_p + [CHOSEN] * len(c))
            poss.append(list(range(n_p + len(c))))
            c_src.append([n_p - 1 + j for j in range(len(c))])
        c_lab.append(c)
        r_lab.append(r)
    if not share_prompt:  # rejected rows after all chosen rows
        for ex in examples:
            p, r = list(ex["prompt_ids"]), list(ex["rejected_ids"])
            rows.append(p + r)
            segs.append([PROMPT] * len(p) + [REJECTED] * len(r))
            poss.append(list(range(len(p) + len(r))))
            r_src.append([len(p) - 1 + j for j in range(len(r))])
    length = max(len(x) for x in rows)
    n_rows = len(rows)
    batch = {
        "input_ids": _pad2d(rows, length, pad_token_id, torch.long),
        "position_ids": _pad2d(poss, length, 0, torch.long),
        "segments": _pad2d(segs, length, PAD_SEGMENT, torch.int8),
    }
    b = len(examples)
    for name, src, lab, offset in (("chosen", c_src, c_lab, 0), ("rejected", r_src, r_lab, b)):
        t = max(len(x) for x in lab)
        flat = [[(i if share_prompt else i + offset) * length + s for s in row] for i, row in enumerate(src)]
        batch[f"{name}_src"] = _pad2d(flat, t, 0, torch.long)
        batch[f"{name}_labels"] = _pad2d(lab, t, 0, torch.long)
        batch[f"{name}_mask"] = _pad2d([[1] * len(x) for x in lab], t, 0, torch.bool)
    for key in TOKEN_COLUMNS:
        if examples[0].get(key) is not None:
            side = "chosen" if "chosen" in key else "rejected"
            batch[key] = _pad2d([ex[key] for ex in examples], batch[f"{side}_labels"].shape[1], 0.0, torch.float32)
    if "index" in examples[0]:
        batch["index"] = torch.tensor([ex["index"] for ex in examples], dtype=torch.long)
    assert batch["input_ids"].shape[0] == n_rows
    return batch


def attention_mask_4d(segments: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[rows, 1, L, L]`` mask from segment ids: causal, no padding keys, rejected never sees chosen.

    Boolean (True = attend) by default, as SDPA takes it; with ``dtype`` an additive float mask (0 / min)
    for eager attention. Padding queries attend to themselves only, so no row is fully masked.
    """
    n, length = segments.shape
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    q, k = segments[:, :, None], segments[:, None, :]
    allowed = causal[None] & (k != PAD_SEGMENT) & ~((q == REJECTED) & (k == CHOSEN))
    eye = torch.eye(length, dtype=torch.bool, device=segments.device)[None]
    allowed = allowed | (eye & (q == PAD_SEGMENT))
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segments.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
