"""``python -m claims NAME [NAME ...] --out DIR``: run the seed papers' claims (README, "The papers' claims").

Each claim trains what it needs (resumable: a finished (arm, seed) is never trained again; the arithmetic
arms are shared between claims in ``OUT/arith``) and writes ``OUT/NAME/report.md`` and ``OUT/NAME/result.json``
with its figures and verdicts. ``--smoke`` runs every code path on a tiny random model in seconds (CI).

    python -m claims minordpo midpo bmc fdpo tisdpo --out runs/claims
    python -m claims all --out runs/claims --precision fp32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from claims import bmc, fdpo, midpo, minordpo, tisdpo
from claims.common import Setting

CLAIMS = {"minordpo": minordpo.run, "midpo": midpo.run, "bmc": bmc.run, "fdpo": fdpo.run, "tisdpo": tisdpo.run}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m claims", description=__doc__.splitlines()[0])
    p.add_argument("claims", nargs="+", choices=[*CLAIMS, "all"])
    p.add_argument("--out", default="runs/claims")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--model", default=None, help="starting model (default smollm2-135m-instruct)")
    p.add_argument("--smoke", action="store_true", help="a tiny random model and 2 steps: code paths only")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.smoke:
        from unipo.testing import make_tiny_model

        model = a.model or str(make_tiny_model(out / "tiny-model"))
        s = Setting.smoke(model)
    else:
        s = Setting(model=a.model or Setting.model)
    s = Setting(**{**s.__dict__, "precision": a.precision, **({"seeds": tuple(a.seeds)} if a.seeds else {})})
    names = list(CLAIMS) if "all" in a.claims else a.claims
    for name in names:
        t = time.time()
        report = CLAIMS[name](out, s)
        print(f"claims: {name}: {report} ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
