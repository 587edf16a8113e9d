#!/usr/bin/env python3
"""Run the load test of tests/reliability/test_concurrency.py again and again.

    python3 tools/stress.py --rounds 20

Each round: 256 threads here and 4 processes x 16 threads on one fresh store, mixing get/put
of shared layers with create/apply_diff/mount/diff/remove of their own; then the exact
reference count at the hold point, no double mounts, no mounts and no references left.
"""
from __future__ import annotations

import argparse
import sys
import time

import _reliability_common as common


def operations_per_round() -> int:
    from tests.reliability import test_concurrency as tc

    def per(threads: int) -> int:
        lifecycle = sum(1 for n in range(threads) if n % 2 == 0)
        # get+put per round, create+apply+get+put+diff+remove for half, and the hold's get+put
        return threads * tc.ROUNDS * 2 + lifecycle * tc.ROUNDS * 6 + threads * 2

    return per(tc.THREADS) + tc.PROCESSES * per(tc.THREADS_PER_PROCESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    from tests.reliability import test_concurrency as tc

    failures = 0
    start = time.monotonic()
    with common.ram_dir() as ram:
        for index in range(args.rounds):
            root = ram / f"round{index}"
            root.mkdir()
            try:
                tc.test_256_threads_and_4_processes_on_one_store(root)
            except AssertionError as exc:
                failures += 1
                print(f"round {index}: {str(exc)[:2000]}", flush=True)
    seconds = round(time.monotonic() - start, 1)
    workers = tc.THREADS + tc.PROCESSES * tc.THREADS_PER_PROCESS
    print(f"stress: {args.rounds} rounds x {workers} workers, {args.rounds * operations_per_round()} store "
          f"operations, {failures} failed rounds, {seconds}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
