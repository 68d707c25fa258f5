"""BMC diff masks: rapidfuzz's Levenshtein alignment vs unipo's former Python/numpy DP, on real pairs.

    .venv/bin/python bench/bmc_align.py --data FILE [--pairs 1000] [--model smollm2-135m-instruct] [--repeat 3]
        [--json OUT]

Tokenises the first ``--pairs`` usable pairs of ``--data`` (whole responses: no truncation) with the model's
tokenizer, then aligns every (chosen, rejected) pair three ways, timing each over all pairs (best of
``--repeat``):

- ``dp``: the former hand-written alignment (tests/bmc_reference.py, ties broken towards matches);
- ``rapidfuzz``: :func:`unipo.data.bmc_align.edit_alignment` (``bmc_alignment: levenshtein``);
- ``difflib``: :func:`unipo.data.bmc_align.difflib_alignment` (``bmc_alignment: difflib``, the released code's).

It then compares the dp and rapidfuzz flags pair by pair (before the stop-word exemption, which is the same
function on both): identical, or else both of minimal Levenshtein cost (checked) and how many tokens each
marks. Figures are in docs/bridge.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.bmc_reference


def _timed(fn, pairs, repeat: int):
    """``fn`` over all pairs ``repeat`` times: its results and the best wall time (the machine is shared)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = [fn(c, r) for c, r in pairs]
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    from tests.bmc_reference import alignment_cost, dp_alignment

    from unipo.data.bmc_align import difflib_alignment, edit_alignment, edit_distance
    from unipo.data.tokenize import prepare_pairs
    from unipo.models.loading import load_tokenizer, resolve_model_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="preference pairs, e.g. Anthropic's "
                    "hh-rlhf-harmless-base-test.jsonl.gz (tests/data holds a 200-row slice)")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeat", type=int, default=3, help="time each way this many times, keep the best")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tok = load_tokenizer(resolve_model_path(args.model))
    prepared, _ = prepare_pairs(args.data, tok, max_length=1 << 20, max_prompt_length=None, on_invalid="skip",
                                limit=args.pairs * 2)
    pairs = [(p.chosen_ids, p.rejected_ids) for p in prepared[: args.pairs]]
    dp, t_dp = _timed(dp_alignment, pairs, args.repeat)
    rf, t_rf = _timed(edit_alignment, pairs, args.repeat)
    _, t_dl = _timed(lambda c, r: difflib_alignment(r, c), pairs, args.repeat)
    same, fewer, more, equal_count, tokens_differing = 0, 0, 0, 0, 0
    for (c, r), a, b in zip(pairs, dp, rf, strict=True):
        if a == b:
            same += 1
            continue
        cost = edit_distance(c, r)
        assert alignment_cost(*a) == alignment_cost(*b) == cost, "an alignment that is not minimal"
        n_dp, n_rf = sum(a[0]) + sum(a[1]), sum(b[0]) + sum(b[1])
        fewer, more, equal_count = fewer + (n_rf < n_dp), more + (n_rf > n_dp), equal_count + (n_rf == n_dp)
        tokens_differing += sum(x != y for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))
    n_tok = sum(len(c) + len(r) for c, r in pairs)
    result = {"pairs": len(pairs), "response_tokens": n_tok, "seconds": {"dp": t_dp, "rapidfuzz": t_rf,
              "difflib": t_dl}, "speedup_rapidfuzz_vs_dp": t_dp / t_rf, "identical_masks": same,
              "differing_pairs": {"rapidfuzz_marks_fewer": fewer, "rapidfuzz_marks_more": more,
                                  "same_count": equal_count, "tokens_flagged_differently": tokens_differing}}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
