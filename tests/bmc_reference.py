"""Independent references for the BMC alignment tests and bench/bmc_align.py.

``dp_alignment`` is unipo's former hand-written alignment (src/unipo/data/bmc_align.py before rapidfuzz):
a Levenshtein dynamic programme, unit costs, traced back from the end with ties broken towards matches,
then substitutions, then deletions. It is kept here only as the reference the rapidfuzz alignment is
compared with (the masks must agree, or differ only between alignments of equal cost).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Textbook two-row Levenshtein distance (unit costs)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def alignment_cost(fa: Sequence[int], fb: Sequence[int]) -> int:
    """Cost of the alignment in which the unmarked tokens match in order: each run of marked tokens between
    two matches costs max(run in a, run in b) (substitutions, then insertions or deletions)."""
    cost = i = j = 0
    while True:
        p = q = 0
        while i < len(fa) and fa[i]:
            p, i = p + 1, i + 1
        while j < len(fb) and fb[j]:
            q, j = q + 1, j + 1
        cost += max(p, q)
        if i == len(fa) and j == len(fb):
            return cost
        i, j = i + 1, j + 1


def _common_affix(a: Sequence, b: Sequence) -> tuple[int, int, int]:
    lo = 0
    while lo < len(a) and lo < len(b) and a[lo] == b[lo]:
        lo += 1
    hi_a, hi_b = len(a), len(b)
    while hi_a > lo and hi_b > lo and a[hi_a - 1] == b[hi_b - 1]:
        hi_a -= 1
        hi_b -= 1
    return lo, hi_a, hi_b


def _dp_table(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n, m = len(x), len(y)
    cols = np.arange(m + 1, dtype=np.int32)
    dist = np.empty((n + 1, m + 1), dtype=np.int32)
    dist[0] = cols
    tmp = np.empty(m + 1, dtype=np.int32)
    for i in range(1, n + 1):
        prev = dist[i - 1]
        tmp[0] = i
        np.minimum(prev[1:] + 1, prev[:-1] + (y != x[i - 1]), out=tmp[1:])
        dist[i] = np.minimum.accumulate(tmp - cols) + cols
    return dist


def dp_alignment(a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[int]]:
    """The former unipo alignment: per-token flags, 1 where not matched (see the module docstring)."""
    a_arr = np.asarray(list(a), dtype=np.int64)
    b_arr = np.asarray(list(b), dtype=np.int64)
    fa, fb = [0] * len(a_arr), [0] * len(b_arr)
    lo, hi_a, hi_b = _common_affix(a_arr, b_arr)
    x, y = a_arr[lo:hi_a], b_arr[lo:hi_b]
    if len(x) == 0 or len(y) == 0:
        fa[lo:hi_a] = [1] * (hi_a - lo)
        fb[lo:hi_b] = [1] * (hi_b - lo)
        return fa, fb
    dist = _dp_table(x, y)
    i, j = len(x), len(y)
    while i > 0 or j > 0:
        d = dist[i, j]
        if i > 0 and j > 0 and x[i - 1] == y[j - 1] and d == dist[i - 1, j - 1]:
            i, j = i - 1, j - 1
        elif i > 0 and j > 0 and d == dist[i - 1, j - 1] + 1:
            fa[lo + i - 1] = fb[lo + j - 1] = 1
            i, j = i - 1, j - 1
        elif i > 0 and d == dist[i - 1, j] + 1:
            fa[lo + i - 1] = 1
            i -= 1
        else:
            fb[lo + j - 1] = 1
            j -= 1
    return fa, fb
