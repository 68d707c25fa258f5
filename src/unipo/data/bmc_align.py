"""Token alignment for BMC: which tokens differ between the two responses of a pair.

BMC (Jiang et al., ICLR 2025, "Bridging and Modeling Correlations in Pairwise Data for Direct Preference
Optimization") up-weights the token log-ratios on the tokens where the (pseudo-)winning and the losing
response differ: λ_t = 1 + min(sg(1/π_θ(y_t)), δ) on those tokens, 1 elsewhere (see docs/variants.md).
"Differ" comes from a minimal edit-distance (Levenshtein) alignment of the two token sequences: tokens that
are substituted, inserted or deleted are marked 1, matched tokens 0. As in the authors' code, tokens whose
text is an English stop-word are not marked; neither are tokens that are pure punctuation or whitespace.

The masks are computed once per pair at data preparation (``unipo.data.tokenize.prepare_pairs`` with
``bmc_masks=True``), not in the training loop.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Container, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

__all__ = ["StopTokens", "diff_masks", "edit_alignment", "edit_distance", "is_stop_text", "load_stopwords"]


@lru_cache(maxsize=1)
def load_stopwords() -> frozenset[str]:
    """The English stop-word list shipped in ``unipo/resources/stopwords_en.txt`` (NLTK's 179 words)."""
    text = resources.files("unipo").joinpath("resources/stopwords_en.txt").read_text(encoding="utf-8")
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip() and not w.startswith("#"))


def is_stop_text(text: str) -> bool:
    """Whether a token's decoded ``text`` is not worth marking: a stop-word, punctuation or whitespace.

    The text is stripped and lower-cased first; curly apostrophes count as straight ones ("don’t");
    empty text counts as whitespace. (A byte-level BPE token holding part of a UTF-8 character decodes
    to "\\ufffd", which is neither, so it can be marked.)
    """
    t = text.strip().lower().replace("\u2019", "'")
    if not t:
        return True
    if t in load_stopwords():
        return True
    return all(ch.isspace() or ch in string.punctuation or unicodedata.category(ch).startswith("P")
               for ch in t)


class StopTokens(Container[int]):
    """A lazily filled set of the token ids of ``tokenizer`` whose text is a stop-word or punctuation.

    Behaves like ``set[int]`` for ``in``: each id is decoded once, the first time it is asked about,
    so nothing is paid for the (large) part of the vocabulary that never appears in a difference.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, bool] = {}

    def __contains__(self, token_id: object) -> bool:
        if not isinstance(token_id, (int, np.integer)):
            return False
        tid = int(token_id)
        hit = self._cache.get(tid)
        if hit is None:
            hit = self._cache[tid] = is_stop_text(self.tokenizer.decode([tid]))
        return hit


def _common_affix(a: Sequence, b: Sequence) -> tuple[int, int, int]:
    """``(lo, hi_a, hi_b)`` with ``a[:lo] == b[:lo]`` the common prefix and ``a[hi_a:] == b[hi_b:]`` the
    common suffix of what remains (``lo <= hi_a``, ``lo <= hi_b``). Matching them first never changes the
    edit distance, and the edits compared here are meant to be small."""
    lo = 0
    while lo < len(a) and lo < len(b) and a[lo] == b[lo]:
        lo += 1
    hi_a, hi_b = len(a), len(b)
    while hi_a > lo and hi_b > lo and a[hi_a - 1] == b[hi_b - 1]:
        hi_a -= 1
        hi_b -= 1
    return lo, hi_a, hi_b


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two token sequences: insertions, deletions and substitutions cost 1.

    Tokens are any values compared with ``==`` (token ids, or words for a whitespace split). Used by
    ``unipo bridge`` to measure how far the editor moved y_l; the alignment itself is
    :func:`edit_alignment`.
    """
    lo, hi_a, hi_b = _common_affix(a, b)
    a, b = a[lo:hi_a], b[lo:hi_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def edit_alignment(a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[int]]:
    """Minimal Levenshtein alignment of ``a`` and ``b``: per-token flags, 1 where not matched.

    Unit costs for substitution, insertion and deletion. Returns ``(flags_a, flags_b)``: 1 on the tokens
    of ``a`` that are substituted or deleted and on the tokens of ``b`` that are substituted or inserted.
    Ties between optimal alignments are broken towards matches, then substitutions, when tracing back
    from the end. The common prefix and suffix are matched first (this never changes the distance); the
    rest is an O(n·m) dynamic programme vectorised row by row with numpy (the in-row recurrence
    D[i, j] = min(t_j, D[i, j-1] + 1) is solved with a cumulative minimum of t_j - j).
    """
    a_arr = np.asarray(list(a), dtype=np.int64)
    b_arr = np.asarray(list(b), dtype=np.int64)
    fa = [0] * len(a_arr)
    fb = [0] * len(b_arr)
    lo, hi_a, hi_b = _common_affix(a_arr, b_arr)
    x, y = a_arr[lo:hi_a], b_arr[lo:hi_b]
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        for i in range(lo, hi_a):
            fa[i] = 1
        for j in range(lo, hi_b):
            fb[j] = 1
        return fa, fb

    cols = np.arange(m + 1, dtype=np.int32)
    dist = np.empty((n + 1, m + 1), dtype=np.int32)
    dist[0] = cols
    tmp = np.empty(m + 1, dtype=np.int32)
    for i in range(1, n + 1):
        prev = dist[i - 1]
        tmp[0] = i
        np.minimum(prev[1:] + 1, prev[:-1] + (y != x[i - 1]), out=tmp[1:])
        dist[i] = np.minimum.accumulate(tmp - cols) + cols

    i, j = n, m
    while i > 0 or j > 0:
        d = dist[i, j]
        if i > 0 and j > 0 and x[i - 1] == y[j - 1] and d == dist[i - 1, j - 1]:
            i, j = i - 1, j - 1
        elif i > 0 and j > 0 and d == dist[i - 1, j - 1] + 1:
            fa[lo + i - 1] = 1
            fb[lo + j - 1] = 1
            i, j = i - 1, j - 1
        elif i > 0 and d == dist[i - 1, j] + 1:
            fa[lo + i - 1] = 1
            i -= 1
        else:
            fb[lo + j - 1] = 1
            j -= 1
    return fa, fb


def diff_masks(chosen_ids: Sequence[int], rejected_ids: Sequence[int], tokenizer: Any = None,
               stopword_ids: Container[int] | None = None) -> tuple[list[int], list[int]]:
    """BMC difference masks of a pair: 1 on the tokens that differ from the other response, else 0.

    ``chosen_ids`` / ``rejected_ids`` are the response token ids. Tokens are aligned with
    :func:`edit_alignment`; then tokens in ``stopword_ids`` are set to 0. If ``stopword_ids`` is None and
    a ``tokenizer`` is given, the stop tokens are found by decoding (see :class:`StopTokens`); with
    neither, no token is exempted. Pass one :class:`StopTokens` for many pairs to reuse its cache.
    """
    ma, mb = edit_alignment(chosen_ids, rejected_ids)
    stops = stopword_ids if stopword_ids is not None else (StopTokens(tokenizer) if tokenizer else None)
    if stops is not None:
        ma = [0 if f and int(t) in stops else f for f, t in zip(ma, chosen_ids, strict=True)]
        mb = [0 if f and int(t) in stops else f for f, t in zip(mb, rejected_ids, strict=True)]
    return ma, mb
