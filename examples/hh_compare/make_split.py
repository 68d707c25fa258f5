"""Split HH-RLHF harmless-base test pairs into the comparison's training and held-out sets.

    python examples/hh_compare/make_split.py runs/hh                          # the committed 200-row slice
    python examples/hh_compare/make_split.py --data test.jsonl.gz runs/hh     # the full file (2,312 pairs)

writes ``train.jsonl`` and ``heldout.jsonl`` in the raw HH format ({"chosen": transcript, "rejected":
transcript}); unipo parses the transcripts itself. With the defaults, the first 512 usable pairs are for
training and the last 256 held out; a file with fewer than 768 usable pairs (the committed slice has 199) is
split two thirds / one third instead, unless --train / --heldout are given. A pair is usable when both
transcripts end with a non-empty assistant turn that differs between them (rows that are not are listed on
stderr: the full file has 4 with an empty chosen answer, the slice 1).

``--data`` defaults to ``tests/data/hh-rlhf-harmless-base-test-200.jsonl.gz`` (the first 200 rows of
Anthropic HH-RLHF harmless-base test, MIT licence; see tests/data/README.md); the full file is
``harmless-base/test.jsonl.gz`` of https://github.com/anthropics/hh-rlhf. The source may also be given as
the first positional argument (``make_split.py SOURCE OUT``), as before.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

MARK = "\n\nAssistant:"
#: the committed slice: the default --data
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "hh-rlhf-harmless-base-test-200.jsonl.gz"
TRAIN, HELDOUT = 512, 256


def usable(row: dict) -> bool:
    answers = [row.get(side, "").rpartition(MARK)[2].strip() for side in ("chosen", "rejected")]
    return all(answers) and answers[0] != answers[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default=None, metavar="SOURCE",
                    help="the HH-format file (optionally gzipped); same as --data")
    ap.add_argument("out", help="output directory for train.jsonl and heldout.jsonl")
    ap.add_argument("--data", default=None, metavar="PATH",
                    help=f"the HH-format file (optionally gzipped); default: {DEFAULT_DATA.name} (tests/data)")
    ap.add_argument("--train", type=int, default=None,
                    help=f"training pairs: the first N usable pairs (default {TRAIN}, or two thirds of a "
                         f"smaller file)")
    ap.add_argument("--heldout", type=int, default=None,
                    help=f"held-out pairs: the last N usable pairs (default {HELDOUT}, or one third of a "
                         f"smaller file)")
    args = ap.parse_args(argv)
    if args.source is not None and args.data is not None:
        ap.error("give the source file either as SOURCE or as --data, not both")
    source = str(args.source or args.data or DEFAULT_DATA)
    opener = gzip.open if source.endswith(".gz") else open
    with opener(source, "rt") as f:
        rows = [json.loads(line) for line in f]
    keep = []
    for i, row in enumerate(rows, 1):
        if usable(row):
            keep.append(row)
        else:
            print(f"{source}: row {i} skipped (empty or identical final answers)", file=sys.stderr)
    n_train, n_heldout = args.train, args.heldout
    if n_train is None and n_heldout is None and len(keep) < TRAIN + HELDOUT:
        n_heldout = len(keep) // 3
        n_train = len(keep) - n_heldout
        print(f"{source}: {len(keep)} usable pairs, fewer than {TRAIN} + {HELDOUT}: split {n_train} / {n_heldout}",
              file=sys.stderr)
    n_train = TRAIN if n_train is None else n_train
    n_heldout = HELDOUT if n_heldout is None else n_heldout
    if n_train < 1 or n_heldout < 1:
        sys.exit(f"--train and --heldout must be at least 1, got {n_train} and {n_heldout}")
    if len(keep) < n_train + n_heldout:
        sys.exit(f"{source}: only {len(keep)} usable pairs, need {n_train + n_heldout}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", keep[:n_train]), ("heldout", keep[-n_heldout:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"{out / name}.jsonl: {len(part)} pairs")


if __name__ == "__main__":
    main()
