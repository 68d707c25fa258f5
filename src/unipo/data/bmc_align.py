"""Token alignment for BMC: which tokens differ between the two responses of a pair.

BMC (Jiang et al., ICLR 2025, "Bridging and Modeling Correlations in Pairwise Data for Direct Preference
Optimization", arXiv 2408.07471) up-weights the token log-ratios on the tokens where the (pseudo-)winning
and the losing response differ: λ_t = 1 + min(sg(1/π_θ(y_t)), δ) on those tokens, 1 elsewhere (Eq. 4–6 of
the ICLR 2025 version; see docs/variants.md). Which tokens "differ" is an alignment of the two token
sequences, in one of two ways (``alignment``):

- ``"levenshtein"`` (default; the paper's words): a minimal edit-distance alignment with unit costs, from
  rapidfuzz's ``Levenshtein.opcodes`` on the token-id lists. Substituted, inserted and deleted tokens are
  marked 1, matched tokens 0.
- ``"difflib"`` (the released code, YJiangcm/BMC ``scripts/dpo_bmc_trainer.py``, ``find_modifications``):
  ``difflib.SequenceMatcher(None, rejected, chosen)`` (autojunk on) over the whole prompt + response rows,
  right-padded to a common length with the pad id, as that trainer builds them; ``replace`` / ``delete``
  mark the rejected row, ``replace`` / ``insert`` the chosen row; the response part is kept.

Then some marked tokens are unmarked (``exempt``): ``"stopwords"`` (default; the released code drops
English stop-words, NLTK's list), ``"stopwords_punctuation"`` (also punctuation- and whitespace-only
tokens: neither the paper nor the released code does this) or ``"none"``.

The masks are computed once per pair at data preparation (``unipo.data.tokenize.prepare_pairs`` with
``bmc_masks=True``), not in the training loop.
"""

from __future__ import annotations

import difflib
import string
import unicodedata
from collections.abc import Container, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from unipo.errors import ConfigError

__all__ = ["ALIGNMENTS", "EXEMPTIONS", "StopTokens", "diff_masks", "difflib_alignment", "edit_alignment",
           "edit_distance", "is_stop_text", "load_stopwords"]

#: ways to align the two responses (see the module docstring)
ALIGNMENTS = ("levenshtein", "difflib")
#: which differing tokens are not marked
EXEMPTIONS = ("stopwords", "stopwords_punctuation", "none")


@lru_cache(maxsize=1)
def load_stopwords() -> frozenset[str]:
    """The English stop-word list shipped in ``unipo/resources/stopwords_en.txt`` (NLTK's 179 words)."""
    text = resources.files("unipo").joinpath("resources/stopwords_en.txt").read_text(encoding="utf-8")
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip() and not w.startswith("#"))


def _is_punctuation(t: str) -> bool:
    return all(ch.isspace() or ch in string.punctuation or unicodedata.category(ch).startswith("P") for ch in t)


def is_stop_text(text: str, *, punctuation: bool = False) -> bool:
    """Whether a token's decoded ``text`` is exempt from the diff mask: an English stop-word, or (with
    ``punctuation``) punctuation / whitespace only, empty text included.

    The text is stripped and lower-cased first; curly apostrophes count as straight ones ("don’t").
    (A byte-level BPE token holding part of a UTF-8 character decodes to "\\ufffd", which is neither.)
    """
    t = text.strip().lower().replace("\u2019", "'")
    if t and t in load_stopwords():
        return True
    return punctuation and _is_punctuation(t)


class StopTokens(Container[int]):
    """A lazily filled set of the token ids of ``tokenizer`` that :func:`is_stop_text` exempts.

    Behaves like ``set[int]`` for ``in``: each id is decoded once, the first time it is asked about,
    so nothing is paid for the (large) part of the vocabulary that never appears in a difference.
    ``punctuation``: also punctuation- and whitespace-only tokens.
    """

    def __init__(self, tokenizer: Any, *, punctuation: bool = False):
        self.tokenizer, self.punctuation = tokenizer, punctuation
        self._cache: dict[int, bool] = {}

    def __contains__(self, token_id: object) -> bool:
        if not isinstance(token_id, (int, np.integer)):
            return False
        tid = int(token_id)
        hit = self._cache.get(tid)
        if hit is None:
            hit = self._cache[tid] = is_stop_text(self.tokenizer.decode([tid]), punctuation=self.punctuation)
        return hit


def _ints(seq: Sequence) -> list[int]:
    return [int(t) for t in seq]


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two token sequences: insertions, deletions and substitutions cost 1.

    Tokens are any hashable values compared by their hash (token ids, or words for a whitespace split);
    rapidfuzz's ``Levenshtein.distance``. Used by ``unipo bridge`` to measure how far the editor moved y_l.
    """
    return int(Levenshtein.distance(list(a), list(b)))


def _flags_from_opcodes(opcodes: Any, n_a: int, n_b: int) -> tuple[list[int], list[int]]:
    """Per-token flags from difflib-style opcodes ``(tag, i1, i2, j1, j2)``: 1 where not ``equal``."""
    fa, fb = [0] * n_a, [0] * n_b
    for tag, i1, i2, j1, j2 in opcodes:
        if tag != "equal":
            fa[i1:i2] = [1] * (i2 - i1)
            fb[j1:j2] = [1] * (j2 - j1)
    return fa, fb


def edit_alignment(a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[int]]:
    """Minimal Levenshtein alignment of ``a`` and ``b``: per-token flags, 1 where not matched.

    Unit costs for substitution, insertion and deletion (rapidfuzz ``Levenshtein.opcodes``; token ids are
    compared by value, Python or numpy integers alike). Returns
    ``(flags_a, flags_b)``: 1 on the tokens of ``a`` that are substituted or deleted and on the tokens of
    ``b`` that are substituted or inserted. Where several alignments have the minimal cost, rapidfuzz picks
    one (docs/bridge.md compares it with a DP that breaks ties towards matches).
    """
    return _flags_from_opcodes(Levenshtein.opcodes(a, b).as_list(), len(a), len(b))


def difflib_alignment(rejected: Sequence[int], chosen: Sequence[int], *, prompt: Sequence[int] = (),
                      pad_id: int = -1) -> tuple[list[int], list[int]]:
    """The released BMC code's alignment: ``(flags_rejected, flags_chosen)`` over the two responses.

    As YJiangcm/BMC ``scripts/dpo_bmc_trainer.py`` (``find_modifications`` on ``concatenated_input_ids``):
    the rows are ``prompt + response``, right-padded with ``pad_id`` to the longer one's length, and
    aligned by ``difflib.SequenceMatcher(None, rejected_row, chosen_row)`` with autojunk on (so the rejected
    row is ``a`` and the chosen row ``b``, whose frequent tokens count as junk when it has ≥ 200 tokens).
    ``replace`` / ``delete`` mark the rejected row, ``replace`` / ``insert`` the chosen row. The released
    trainer pads to the longest row of the whole batch; here each pair is its own batch.
    """
    p = _ints(prompt)
    rows = [p + _ints(rejected), p + _ints(chosen)]
    width = max(len(r) for r in rows)
    rows = [r + [int(pad_id)] * (width - len(r)) for r in rows]
    matcher = difflib.SequenceMatcher(None, rows[0], rows[1])
    fr, fc = _flags_from_opcodes(matcher.get_opcodes(), width, width)
    return fr[len(p):len(p) + len(rejected)], fc[len(p):len(p) + len(chosen)]


def diff_masks(chosen_ids: Sequence[int], rejected_ids: Sequence[int], tokenizer: Any = None,
               stopword_ids: Container[int] | None = None, *, alignment: str = "levenshtein",
               prompt_ids: Sequence[int] = (), pad_id: int = -1) -> tuple[list[int], list[int]]:
    """BMC difference masks of a pair ``(chosen_mask, rejected_mask)``: 1 on the tokens that differ from
    the other response, else 0.

    ``chosen_ids`` / ``rejected_ids`` are the response token ids. ``alignment``: ``"levenshtein"``
    (:func:`edit_alignment`, the paper's) or ``"difflib"`` (:func:`difflib_alignment`, the released code's;
    it also reads ``prompt_ids`` and ``pad_id``). Then tokens in ``stopword_ids`` are set to 0. If
    ``stopword_ids`` is None and a ``tokenizer`` is given, the stop-words are found by decoding (see
    :class:`StopTokens`); with neither, no token is exempted. Pass one :class:`StopTokens` for many pairs
    to reuse its cache.
    """
    if alignment == "levenshtein":
        ma, mb = edit_alignment(chosen_ids, rejected_ids)
    elif alignment == "difflib":
        mb, ma = difflib_alignment(rejected_ids, chosen_ids, prompt=prompt_ids, pad_id=pad_id)
    else:
        raise ConfigError(f"bmc_alignment must be one of {', '.join(ALIGNMENTS)}, not {alignment!r}")
    stops = stopword_ids if stopword_ids is not None else (StopTokens(tokenizer) if tokenizer else None)
    if stops is not None:
        ma = [0 if f and int(t) in stops else f for f, t in zip(ma, chosen_ids, strict=True)]
        mb = [0 if f and int(t) in stops else f for f, t in zip(mb, rejected_ids, strict=True)]
    return ma, mb
