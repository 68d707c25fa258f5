"""BMC token alignment (Jiang et al., ICLR 2025): edit-distance difference masks (unipo.data.bmc_align)."""

from __future__ import annotations

import random
import time

import pytest

from unipo.data.bmc_align import (
    StopTokens,
    diff_masks,
    edit_alignment,
    edit_distance,
    is_stop_text,
    load_stopwords,
)
from unipo.testing import make_tiny_tokenizer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("a, b, ma, mb", [
    ([1, 2, 3, 4], [1, 5, 3, 4], [0, 1, 0, 0], [0, 1, 0, 0]),            # substitution
    ([1, 2, 3], [1, 2, 9, 3], [0, 0, 0], [0, 0, 1, 0]),                  # insertion
    ([1, 2, 9, 3], [1, 2, 3], [0, 0, 1, 0], [0, 0, 0]),                  # deletion
    ([1, 2, 3], [1, 2, 3], [0, 0, 0], [0, 0, 0]),                        # identical
    ([], [4, 5], [], [1, 1]),                                            # one empty
    ([7, 8], [], [1, 1], []),
    ([], [], [], []),
    ([1, 2, 3, 4, 5], [1, 9, 3, 8, 5], [0, 1, 0, 1, 0], [0, 1, 0, 1, 0]),  # two substitutions
    ([5, 1, 2, 3], [1, 2, 3, 6], [1, 0, 0, 0], [0, 0, 0, 1]),            # deletion + insertion (cost 2)
    ([1, 2], [3, 4, 5], [1, 1], [1, 1, 1]),                              # nothing in common
])
def test_hand_worked_alignments(a, b, ma, mb):
    assert diff_masks(a, b) == (ma, mb)


def _levenshtein(a, b) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _alignment_cost(fa, fb) -> int:
    """Cost of the alignment in which the unmarked tokens match in order (gaps cost max(len_a, len_b))."""
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


def test_alignment_is_minimal_on_random_sequences():
    rng = random.Random(0)
    for _ in range(400):
        a = [rng.randint(0, 4) for _ in range(rng.randint(0, 12))]
        b = [rng.randint(0, 4) for _ in range(rng.randint(0, 12))]
        fa, fb = edit_alignment(a, b)
        assert [t for t, f in zip(a, fa, strict=True) if not f] == [t for t, f in zip(b, fb, strict=True) if not f]
        assert _alignment_cost(fa, fb) == _levenshtein(a, b), (a, b, fa, fb)
        assert edit_distance(a, b) == _levenshtein(a, b), (a, b)


def test_long_responses_are_fast():
    rng = random.Random(1)
    a = [rng.randint(0, 50) for _ in range(512)]
    b = [rng.randint(0, 50) for _ in range(512)]
    start = time.perf_counter()
    fa, fb = edit_alignment(a, b)
    assert time.perf_counter() - start < 1.0
    assert len(fa) == len(b) == len(fb)


def test_stopword_ids_are_zeroed():
    # 10 and 11 differ but are "stop-words"; 12 differs and is kept
    assert diff_masks([1, 10, 12], [1, 11, 13], stopword_ids={10, 11}) == ([0, 0, 1], [0, 0, 1])
    assert diff_masks([1, 10], [1, 10], stopword_ids={10}) == ([0, 0], [0, 0])


def test_stopword_list():
    words = load_stopwords()
    assert len(words) == 179
    assert {"the", "and", "i", "wouldn't", "own", "ourselves"} <= words and "fox" not in words


@pytest.mark.parametrize("text, stop", [
    (" The", True), ("and", True), ("don’t", True), ("!", True), (" ...", True), ("\n", True), ("", True),
    (" fox", False), ("47", False), ("\ufffd", False), ("<|im_end|>", False),
])
def test_is_stop_text(text, stop):
    assert is_stop_text(text) is stop


def test_stop_tokens_with_a_tokenizer():
    tok = make_tiny_tokenizer()
    chosen = tok(" the fox and the dog.", add_special_tokens=False)["input_ids"]
    rejected = tok(" a cat or a bird!", add_special_tokens=False)["input_ids"]
    stops = StopTokens(tok)
    ma, mb = diff_masks(chosen, rejected, tokenizer=tok)
    assert (ma, mb) == diff_masks(chosen, rejected, stopword_ids=stops)
    for ids, mask in ((chosen, ma), (rejected, mb)):
        for t, m in zip(ids, mask, strict=True):
            assert m == (0 if is_stop_text(tok.decode([t])) else 1), (tok.decode([t]), m)
    assert tok(" the", add_special_tokens=False)["input_ids"][0] in stops
    assert "not an id" not in stops
