"""The seeded row generators of the row fuzz (tests/test_fuzz_rows.py) and of the old-vs-new preparation
comparison (tests/test_data_prepare.py): valid rows of every shape, and rows with one known defect. Not a test
module."""

from __future__ import annotations

import random

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
