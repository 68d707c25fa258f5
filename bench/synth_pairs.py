"""Synthesise an N-pair preference file from the committed HH-RLHF slice, with varied text.

    .venv/bin/python bench/synth_pairs.py 20000 /tmp/hh-20k.jsonl        # 20,000 pairs (.gz: gzipped)
    .venv/bin/python bench/synth_pairs.py 200000 /tmp/hh-200k.jsonl --source other.jsonl.gz --seed 1

Every output row is a raw HH-RLHF transcript pair (``chosen`` / ``rejected``, Anthropic's format, read by unipo
as a conversational pair with an implicit prompt) made from a row of the source (default: the 200-row slice
``tests/data/hh-rlhf-harmless-base-test-200.jsonl.gz``; rows unipo refuses, such as row 87 with its empty chosen
answer, are left out), taken in turn, with words replaced by words drawn from the whole slice: 6 in the shared
conversation (the same positions and words in both transcripts, so the pair keeps its common prompt) and 3 in
each final answer. Seeded: the same N and seed give the same file. The prompts of the output are therefore
(almost all) distinct, so a preparation cannot profit from repeated prompts more than real data would.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "data" / "hh-rlhf-harmless-base-test-200.jsonl.gz"
MARKERS = ("Human:", "Assistant:")
_WORD = re.compile(r"(\s+)")


def _templates(source: Path) -> list[tuple[list[str], list[str], list[str]]]:
    """(shared prefix, chosen rest, rejected rest) of each usable row, split into words and whitespace."""
    from unipo.data.formats import iter_rows, normalize_row
    from unipo.errors import DataError

    out = []
    for rec in iter_rows(source):
        try:
            normalize_row(rec.data, file=rec.file, row_number=rec.row)
        except DataError:
            continue
        chosen, rejected = rec.data["chosen"], rec.data["rejected"]
        cut = chosen.rfind("\n\nAssistant:")  # the shared conversation ends before the last Assistant turn
        cut = cut if cut > 0 and chosen[:cut] == rejected[:cut] else 0
        out.append((_WORD.split(chosen[:cut]), _WORD.split(chosen[cut:]), _WORD.split(rejected[cut:])))
    return out


def _vary(parts: list[str], k: int, words: list[str], rng: random.Random) -> str:
    slots = [i for i in range(0, len(parts), 2) if parts[i] and parts[i] not in MARKERS]
    parts = list(parts)
    for i in rng.sample(slots, min(k, len(slots))):
        parts[i] = rng.choice(words)
    return "".join(parts)


def synthesise(n: int, out: Path, source: Path = SLICE, seed: int = 0) -> int:
    """Write ``n`` varied pairs to ``out``; return the number written."""
    templates = _templates(source)
    words = sorted({w for t in templates for part in t for w in part[::2] if w.isalpha()})
    rng = random.Random(seed)
    opener = gzip.open if out.suffix == ".gz" else open
    with opener(out, "wt", encoding="utf-8") as f:
        for i in range(n):
            prefix, chosen, rejected = templates[i % len(templates)]
            shared = _vary(prefix, 6, words, rng)
            row = {"chosen": shared + _vary(chosen, 3, words, rng), "rejected": shared + _vary(rejected, 3, words, rng)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, help="pairs to write")
    ap.add_argument("out", type=Path, help="output JSONL file (.gz: gzipped)")
    ap.add_argument("--source", type=Path, default=SLICE, help="HH-RLHF rows to start from (default: the slice)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    synthesise(args.n, args.out, args.source, args.seed)
    print(f"wrote {args.n} pairs to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
