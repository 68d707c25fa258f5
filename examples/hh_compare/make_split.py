"""Split the HH-RLHF harmless-base test file into the comparison's training and held-out sets.

    python examples/hh_compare/make_split.py ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz runs/hh

writes ``train.jsonl`` (the first 512 usable pairs) and ``heldout.jsonl`` (the last 256 usable pairs) in
the raw HH format ({"chosen": transcript, "rejected": transcript}); unipo parses the transcripts itself.
A pair is usable when both transcripts end with a non-empty assistant turn that differs between them
(4 rows of the file have an empty chosen answer; they are listed on stderr).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

MARK = "\n\nAssistant:"


def usable(row: dict) -> bool:
    answers = [row.get(side, "").rpartition(MARK)[2].strip() for side in ("chosen", "rejected")]
    return all(answers) and answers[0] != answers[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--heldout", type=int, default=256)
    args = ap.parse_args()
    opener = gzip.open if args.source.endswith(".gz") else open
    with opener(args.source, "rt") as f:
        rows = [json.loads(line) for line in f]
    keep = []
    for i, row in enumerate(rows, 1):
        if usable(row):
            keep.append(row)
        else:
            print(f"{args.source}: row {i} skipped (empty or identical final answers)", file=sys.stderr)
    if len(keep) < args.train + args.heldout:
        sys.exit(f"{args.source}: only {len(keep)} usable pairs, need {args.train + args.heldout}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", keep[:args.train]), ("heldout", keep[-args.heldout:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"{out / name}.jsonl: {len(part)} pairs")


if __name__ == "__main__":
    main()
