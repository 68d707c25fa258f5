"""Property-based fuzz of preference rows and files (a seeded generator): every row is either accepted as the
pair it is, or refused with a DataError that names the row and the field — never a traceback from elsewhere,
never a malformed row trained on. 300 cases in the unit tier; 10,000 in the slow tier."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests.row_fuzz import defective_row, valid_row
from unipo.data.tokenize import prepare_pairs
from unipo.errors import DataError, UnipoError
from unipo.testing import make_tiny_tokenizer


def check_case(rng: random.Random, tok) -> None:
    if rng.random() < 0.4:
        row = valid_row(rng)
        pairs, summary = prepare_pairs([row], tok, max_length=10**6, max_prompt_length=None)
        assert len(pairs) == 1 and summary.pairs_kept == 1, row
        p = pairs[0]
        assert p.prompt_ids and p.chosen_ids and p.rejected_ids, row
        return
    row, field = defective_row(rng)
    try:
        pairs, _ = prepare_pairs([row], tok, max_length=10**6, max_prompt_length=None)
    except DataError as exc:
        assert exc.row == 1, (row, str(exc))
        if field is not None:
            root = re.match(r"[a-z_]+", exc.field or "")
            assert root and root.group(0) in ("chosen", "rejected", "prompt"), (row, str(exc))
        return
    except UnipoError as exc:  # a clear error of ours, but not naming the row: still a failure of the contract
        raise AssertionError(f"{row!r} gave {type(exc).__name__} without the row: {exc}") from None
    raise AssertionError(f"a malformed row was accepted silently: {row!r} → {pairs}")


def run_fuzz(n: int, seed: int) -> None:
    tok = make_tiny_tokenizer()
    rng = random.Random(seed)
    for _ in range(n):
        check_case(rng, tok)


@pytest.mark.unit
def test_fuzzed_rows_fast():
    run_fuzz(300, seed=0)


@pytest.mark.slow
def test_fuzzed_rows_10000():
    run_fuzz(10_000, seed=1)


@pytest.mark.unit
def test_fuzzed_files_skip_counts_every_bad_row(tmp_path: Path):
    """A JSONL file mixing good rows, bad rows and garbage lines: with on_invalid=skip every bad row is
    counted and none is kept; with on_invalid=error the first bad one stops the run, naming its row."""
    tok = make_tiny_tokenizer()
    rng = random.Random(3)
    lines, n_good, first_bad = [], 0, None
    for i in range(1, 121):
        if rng.random() < 0.5:
            lines.append(json.dumps(valid_row(rng)))
            n_good += 1
        else:
            first_bad = first_bad or i
            row, _ = defective_row(rng)
            lines.append(json.dumps(row) if rng.random() < 0.8 else rng.choice(["{not json", "[1, 2", "nul"]))
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:
        pairs, summary = prepare_pairs(str(path), tok, max_length=10**6, max_prompt_length=None, on_invalid="skip")
    except DataError as exc:  # a line that is not JSON at all is a file-level error
        assert "not valid JSON" in str(exc) and str(path) in str(exc)
    else:
        assert len(pairs) == n_good and summary.rows_read == 120
    with pytest.raises(DataError, match=f"row {first_bad}"):
        prepare_pairs(str(path), tok, max_length=10**6, max_prompt_length=None)
