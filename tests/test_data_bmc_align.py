"""BMC token alignment (Jiang et al., ICLR 2025): edit-distance difference masks (unipo.data.bmc_align)."""

from __future__ import annotations

import difflib
import random
import time

import numpy as np
import pytest

from tests.bmc_reference import alignment_cost, dp_alignment, levenshtein
from unipo.data.bmc_align import (
    StopTokens,
    diff_masks,
    difflib_alignment,
    edit_alignment,
    edit_distance,
    is_stop_text,
    load_stopwords,
)
from unipo.errors import ConfigError
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


def _random_pair(rng: random.Random, vocab: int, n: int, edits: int) -> tuple[list[int], list[int]]:
    """A sequence and a copy with ``edits`` random substitutions, insertions and deletions."""
    a = [rng.randrange(vocab) for _ in range(rng.randint(0, n))]
    b = list(a)
    for _ in range(edits):
        k = rng.randint(0, len(b))
        op = rng.choice("sid")
        if op == "i":
            b.insert(k, rng.randrange(vocab))
        elif k < len(b):
            if op == "s":
                b[k] = rng.randrange(vocab)
            else:
                del b[k]
    return a, b


def test_alignment_is_minimal_on_random_sequences():
    """Small alphabets: many alignments share the minimal cost, so only minimality and validity are checked
    (the former DP, tests/bmc_reference.py, has the same cost on every pair)."""
    rng = random.Random(0)
    for _ in range(400):
        a = [rng.randint(0, 4) for _ in range(rng.randint(0, 12))]
        b = [rng.randint(0, 4) for _ in range(rng.randint(0, 12))]
        fa, fb = edit_alignment(a, b)
        assert [t for t, f in zip(a, fa, strict=True) if not f] == [t for t, f in zip(b, fb, strict=True) if not f]
        assert alignment_cost(fa, fb) == levenshtein(a, b) == alignment_cost(*dp_alignment(a, b)), (a, b, fa, fb)
        assert edit_distance(a, b) == levenshtein(a, b), (a, b)


def test_masks_agree_with_the_former_dp_on_edited_sequences():
    """Pairs as bridging makes them (a response and a few edits of it, a tokenizer-sized vocabulary): the
    rapidfuzz masks equal the former DP's, except between alignments of equal cost, where rapidfuzz never
    marks more tokens on these pairs (it keeps a match where the DP substitutes twice: [1, 2] vs [2, 1])."""
    rng = random.Random(1)
    same = 0
    for _ in range(300):
        a, b = _random_pair(rng, vocab=5000, n=60, edits=rng.randint(0, 6))
        ours, ref = edit_alignment(a, b), dp_alignment(a, b)
        if ours == ref:
            same += 1
            continue
        assert alignment_cost(*ours) == alignment_cost(*ref) == levenshtein(a, b), (a, b)
        assert sum(ours[0]) + sum(ours[1]) <= sum(ref[0]) + sum(ref[1]), (a, b, ours, ref)
    assert same >= 270, same  # 96% on 2,000 such pairs
    assert edit_alignment([1, 2], [2, 1]) == ([0, 1], [1, 0]) and dp_alignment([1, 2], [2, 1]) == ([1, 1], [1, 1])


def test_numpy_ids_and_words_are_compared_by_value():
    assert edit_alignment(np.array([1, 2, 3]), [1, 5, 3]) == ([0, 1, 0], [0, 1, 0])
    assert edit_distance("the quick fox".split(), "the slow brown fox".split()) == 2


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


@pytest.mark.parametrize("text, stop, stop_or_punct", [
    (" The", True, True), ("and", True, True), ("don’t", True, True), ("!", False, True), (" ...", False, True),
    ("\n", False, True), ("", False, True), ("«", False, True),
    (" fox", False, False), ("47", False, False), ("\ufffd", False, False), ("<|im_end|>", False, False),
])
def test_is_stop_text(text, stop, stop_or_punct):
    """Stop-words always (the released code's exemption); punctuation/whitespace only when asked."""
    assert is_stop_text(text) is stop
    assert is_stop_text(text, punctuation=True) is stop_or_punct


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
    bang = tok("!", add_special_tokens=False)["input_ids"][-1]
    assert bang not in stops and bang in StopTokens(tok, punctuation=True)


# ------------------------------------------------------------------------ difflib: the released BMC code


def released_find_modifications(original, corrected, stopword_ids):
    """YJiangcm/BMC scripts/dpo_bmc_trainer.py, ``find_modifications``, written out again: per-index flags
    from difflib.SequenceMatcher(None, original, corrected) (autojunk on), original = the rejected row."""
    d = difflib.SequenceMatcher(None, original, corrected)
    orig_mod, corr_mod = [0] * len(original), [0] * len(corrected)
    for tag, i1, i2, j1, j2 in d.get_opcodes():
        if tag in ("replace", "delete"):
            for i in range(i1, i2):
                orig_mod[i] = int(original[i] not in stopword_ids)
        if tag in ("replace", "insert"):
            for j in range(j1, j2):
                corr_mod[j] = int(corrected[j] not in stopword_ids)
    return orig_mod, corr_mod


def _released_rows(prompt, chosen, rejected, pad):
    width = max(len(prompt) + len(chosen), len(prompt) + len(rejected))
    return [list(prompt) + list(r) + [pad] * (width - len(prompt) - len(r)) for r in (rejected, chosen)]


@pytest.mark.parametrize("n", [8, 40, 150, 400])
def test_difflib_option_is_the_released_alignment(n):
    """Prompt + response rows right-padded to a common length (the released trainer's padded batch rows),
    aligned rejected-against-chosen; long rows (>= 200 tokens) exercise difflib's autojunk."""
    rng = random.Random(n)
    autojunk_mattered = False
    for _ in range(15):
        prompt = [rng.randrange(30) for _ in range(rng.randint(0, n // 2))]
        chosen, rejected = _random_pair(rng, vocab=rng.choice([12, 300]), n=n, edits=rng.randint(0, 10))
        rej_row, cho_row = _released_rows(prompt, chosen, rejected, pad=0)
        fr, fc = released_find_modifications(rej_row, cho_row, stopword_ids=[])
        want = (fc[len(prompt):len(prompt) + len(chosen)], fr[len(prompt):len(prompt) + len(rejected)])
        assert diff_masks(chosen, rejected, alignment="difflib", prompt_ids=prompt, pad_id=0) == want
        assert difflib_alignment(rejected, chosen, prompt=prompt, pad_id=0) == want[::-1]
        plain = difflib.SequenceMatcher(None, rej_row, cho_row, autojunk=False).get_opcodes()
        autojunk_mattered |= plain != difflib.SequenceMatcher(None, rej_row, cho_row).get_opcodes()
    assert autojunk_mattered == (n >= 150)  # only rows of >= 200 tokens have junk


def test_difflib_and_levenshtein_can_differ():
    """difflib matches the longest common block first, so it is not a minimal edit alignment."""
    chosen, rejected = [3, 3], [4, 3]  # difflib matches the rejected 3 with the first chosen 3: cost 2, not 1
    assert diff_masks(chosen, rejected, alignment="difflib") == ([0, 1], [1, 0])
    assert diff_masks(chosen, rejected) == ([1, 0], [1, 0])
    assert levenshtein(chosen, rejected) == 1


def test_unknown_alignment_is_a_config_error():
    with pytest.raises(ConfigError, match="bmc_alignment must be one of levenshtein, difflib"):
        diff_masks([1], [2], alignment="lcs")
