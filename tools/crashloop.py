#!/usr/bin/env python3
"""Kill a store scenario (create, apply_diff, get/put, diff, changes, remove, re-create) with
SIGKILL at many points and check the store after every kill (tests/reliability/crashkit.py).

    python3 tools/crashloop.py --all                 # every event point, overlay backend
    python3 tools/crashloop.py --points 200 --backend fuse-overlayfs
    python3 tools/crashloop.py --random 500          # kills after random delays
    python3 tools/crashloop.py --points 500 --double # and kill each recovery as well

Prints one summary line per run and exits 1 if any kill left a store that fails a check.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time

import _reliability_common as common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="overlay")
    parser.add_argument("--points", type=int, default=100, help="event points to kill at (spread)")
    parser.add_argument("--all", action="store_true", help="kill at every event point")
    parser.add_argument("--random", type=int, default=0, help="also kill after N random delays")
    parser.add_argument("--double", action="store_true",
                        help="after each kill, kill the recovery (open, check(repair=True), cleanup) too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import aufs
    from tests.reliability import crashkit as ck

    failures = []
    kills = survived = completed = 0
    start = time.monotonic()
    with common.ram_dir() as ram:
        scratch = ck.make_scratch(ram / "scratch")
        home = ram / "store"
        states = ck.reference_states(home, scratch, args.backend)
        total = ck.count_events(home, scratch, args.backend)
        rng = random.Random(args.seed)
        points = list(range(1, total + 1)) if args.all else ck.kill_points(total, args.points, rng)
        t0 = time.monotonic()
        ck.run_child(home, scratch, args.backend)
        duration = time.monotonic() - t0
        aufs.Driver(home, backend=args.backend).cleanup()
        shutil.rmtree(home)
        plan = [("event", p) for p in points] + [("delay", rng.uniform(0, duration)) for _ in range(args.random)]
        for index, (how, where) in enumerate(plan):
            if how == "event":
                outcome = ck.run_child(home, scratch, args.backend, kill_at=int(where))
            else:
                outcome = ck.run_child(home, scratch, args.backend, kill_after=float(where))
            if args.double:
                kills += ck.kill_recovery(home, args.backend, rng.randrange(1, 400))
            problems = ck.verify_after_crash(home, args.backend, states, outcome)
            kills += outcome.killed
            completed += not outcome.killed
            if problems:
                failures.append({"kill": f"{how} {where}", "outcome": repr(outcome), "problems": problems})
            elif outcome.killed:
                survived += 1
            aufs.Driver(home, backend=args.backend).cleanup()
            shutil.rmtree(home)
            if (index + 1) % 200 == 0:
                print(f"  {index + 1}/{len(plan)} runs, {len(failures)} failures", file=sys.stderr, flush=True)
    summary = {
        "backend": args.backend, "events_per_run": total, "runs": len(plan), "kills": kills,
        "survived": survived, "double": args.double, "completed_unkilled": completed, "failures": len(failures),
        "seconds": round(time.monotonic() - start, 1), "steps": [name for name, _ in ck.SCENARIO],
    }
    if args.json:
        print(json.dumps({"summary": summary, "failures": failures}, indent=2))
    else:
        print(f"crashloop {args.backend}: {kills} kills over {total} event points/run, {survived} survived, "
              f"{len(failures)} failures, {summary['seconds']}s")
        for failure in failures[:20]:
            print(f"  {failure['kill']}: {failure['outcome']}: {failure['problems']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
