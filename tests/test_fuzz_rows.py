"""Property-based fuzz of preference rows and files (a seeded generator): every row is either accepted as the
pair it is, or refused with a DataError that names the row and the field — never a traceback from elsewhere,
never a malformed row trained on. 300 cases in the unit tier; 10,000 in the slow tier."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from unipo.data.tokenize import prepare_pairs
from unipo.errors import DataError, UnipoError
from unipo.testing import make_tiny_tokenizer

WORDS = ["the", "sum", "is", "12", "bread", "safe", "no", "yes", "I", "cannot", "help", "ok", "é", "漢", "🙂", "\t"]


def _text(rng: random.Random, n_min: int = 1) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(n_min, 6))).strip() or "x"


def _msg(role: str, content) -> dict:
    return {"role": role, "content": content}


def valid_row(rng: random.Random) -> dict:
    kind = rng.randrange(4)
    a, b = _text(rng), _text(rng) + " but different"
    if kind == 0:  # explicit text prompt
        return {"prompt": _text(rng) + "?", "chosen": a, "rejected": b}
    if kind == 1:  # explicit conversational
        return {"prompt": [_msg("user", _text(rng))], "chosen": [_msg("assistant", a)],
                "rejected": [_msg("assistant", b)]}
    if kind == 2:  # implicit text prompt
        p = _text(rng) + "? "
        return {"chosen": p + "A: " + a, "rejected": p + "B: " + b}
    q = _text(rng)  # Anthropic HH transcript
    return {"chosen": f"\n\nHuman: {q}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {b}"}


def _bad_value(rng: random.Random):
    return rng.choice(["", "   ", "\n\t", 7, 3.5, True, {"text": "hi"}, [], [1, 2], ["a", "b"]])


def defective_row(rng: random.Random) -> tuple[dict | list | str, str | None]:
    """A row with one known defect and the field its error must name (None: the row as a whole)."""
    row = valid_row(rng)
    side = rng.choice(["chosen", "rejected"])
    kind = rng.randrange(7)
    if kind == 0:
        del row[side]
    elif kind == 1:
        row[side] = None
    elif kind == 2 and "prompt" in row and isinstance(row["prompt"], str):
        row[side] = _bad_value(rng)  # empty / blank / not text next to a text prompt
        if isinstance(row[side], list) and row[side] and all(isinstance(x, str) for x in row[side]):
            row[side] = 5
    elif kind == 3:  # conversational with a broken message
        row = {"prompt": [_msg("user", _text(rng))], "chosen": [_msg("assistant", _text(rng))],
               "rejected": [_msg("assistant", _text(rng))]}
        row[side] = rng.choice([[_msg("wizard", "hi")], [_msg("assistant", 5)], [{"role": "assistant"}],
                                [_msg("assistant", "   ")], [_msg("user", "hi")], []])
    elif kind == 4:  # one side text, the other messages, no prompt
        row = {"chosen": _text(rng), "rejected": [_msg("assistant", _text(rng))]}
        if side == "rejected":
            row = {"chosen": [_msg("assistant", _text(rng))], "rejected": _text(rng)}
    elif kind == 5:  # HH format on one side only
        q = _text(rng)
        row = {"chosen": f"\n\nHuman: {q}\n\nAssistant: {_text(rng)}", "rejected": _text(rng) + " plain"}
        side = "rejected"
    else:
        return rng.choice([["chosen", "rejected"], "a string", 42]), None
    if kind in (2,) and not ("prompt" in row and isinstance(row["prompt"], str)):
        row[side] = None  # kind 2 only applies to text prompts; fall back to a missing value
    return row, side


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
