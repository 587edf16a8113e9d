#!/usr/bin/env python3
"""Fuzz apply_diff with mutated layer tars (tests/reliability/fuzzkit.py) in a sandbox.

    python3 tools/fuzz_apply.py --cases 20000 --seed 1

Each case runs in a forked child with a timeout; a case fails on a crash, a hang, an outcome
other than success/ArchiveError/UnsafeArchive/NoSpace, or any change outside the layer.
Prints the counts per outcome and a reproducer (seed index + operations) per failure.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

import _reliability_common as common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from tests.reliability import fuzzkit as fk

    seeds = fk.corpus_seeds() + fk.generated_seeds()
    log: list = []
    start = time.monotonic()
    counts: dict = {}
    with common.ram_dir(size="64m") as ram:
        sandbox = fk.make_sandbox(ram / "sandbox")
        rng = random.Random(args.seed)
        done = 0
        while done < args.cases:
            batch = min(500, args.cases - done)
            for key, value in fk.fuzz(sandbox, seeds, batch, rng, log).items():
                counts[key] = counts.get(key, 0) + value
            done += batch
            print(f"  {done}/{args.cases} cases, {counts.get('failed', 0)} failures", file=sys.stderr, flush=True)
    seconds = round(time.monotonic() - start, 1)
    summary = {"cases": args.cases, "seeds": len(seeds), "outcomes": counts, "seconds": seconds}
    if args.json:
        print(json.dumps({"summary": summary, "failures": log}, indent=2))
    else:
        print(f"fuzz_apply: {args.cases} cases from {len(seeds)} seeds in {seconds}s: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for line in log[:20]:
            print("  " + line)
    return 1 if log else 0


if __name__ == "__main__":
    sys.exit(main())
