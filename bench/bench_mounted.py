"""Benchmark: how fast is ``aufs.mounted`` as the mount table grows?

In a private mount namespace (the script re-executes itself under
``unshare -m --propagation private`` when needed; root only) it mounts a tmpfs scratch area,
then grows the mount table to 10, 1,000 and 10,000 extra mounts (half tmpfs, half a directory
bind-mounted onto itself) and, at each size, mounts a fresh tmpfs target LAST (the worst case
for anything that scans the table) and times, in the same run:

* ``aufs.mounted(target)``;
* ``statx`` alone through ``aufs._syscalls`` (the floor: one cffi call, no Python wrapper);
* ``os.lstat(target)`` (one syscall through CPython's C code: the machine's speed reference,
  so the absolute goal can be read on a loaded or slow VM);
* ``os.path.ismount(target)`` (two ``lstat`` calls; right for a tmpfs target, wrong for
  self-binds, so a fair but generous reference);
* a line-by-line Python scan of ``/proc/self/mountinfo`` (what pure-Python code has to do to
  be right for bind mounts);
* and, for the mount-table parser: ``aufs.mount_table()`` (the C parser) against
  ``aufs.mounts.parse_mountinfo`` (its pure-Python twin, the test oracle) over the whole table.

Each figure is the median over ``--repeat`` batches of the per-call time; the batch size is
calibrated so one batch takes about ``--batch-seconds``, and the batches of the five contenders
are interleaved so that noise from other processes hits them alike. Prints a markdown table, the
ratios and the issue-2 goals with PASS/FAIL. Nothing is left mounted: the namespace dies with
the process, and the scratch tmpfs is detached before that.

Usage: ``python3 bench/bench_mounted.py [--counts 10,1000,10000] [--repeat 15]``
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

try:  # the installed package (e.g. a wheel in a PyPy venv) ...
    import aufs
except ImportError:  # ... else the source tree this script belongs to, built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import aufs
from aufs import _syscalls, mounts

_MS_BIND = 4096  # <linux/mount.h>
_REEXEC_MARK = "AUFS_BENCH_MOUNTED_PRIVATE_NS"

# issue 2 goals
GOAL_US_AT_10K = 3.0
GOAL_FLAT = 1.5
GOAL_VS_SCAN = 5000.0
GOAL_VS_ISMOUNT = 5.0


def python_scan_mounted(path: str) -> bool:
    """The pure-Python reference: read mountinfo line by line, compare the unescaped field 5."""
    target = os.fsencode(os.path.abspath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            field = line.split(b" ", 5)[4]
            if b"\\" in field:  # mountinfo octal-escapes space, tab, newline and backslash
                field = (
                    field.replace(b"\\040", b" ").replace(b"\\011", b"\t")
                    .replace(b"\\012", b"\n").replace(b"\\134", b"\\")
                )
            if field == target:
                return True
    return False


def median_us_per_call(
    calls: Sequence[tuple[Callable[[Any], object], object]], repeat: int, batch_seconds: float
) -> list[float]:
    """Median time per call, in microseconds, of each ``(func, arg)`` in ``calls``.

    The batches are interleaved (one batch of each, ``repeat`` rounds, in rotating order) so
    that load from other processes on a shared machine falls on every contender alike and the
    ratios stay fair.
    """
    timers = [timeit.Timer("func(arg)", globals={"func": func, "arg": arg}) for func, arg in calls]
    numbers = []
    for timer in timers:
        number, elapsed = timer.autorange()  # smallest 1, 2, 5, 10... with a batch >= 0.2 s
        numbers.append(max(1, int(number * batch_seconds / max(elapsed, 1e-9))))
    samples: list[list[float]] = [[] for _ in timers]
    for round_ in range(repeat):
        # rotate the order too: whoever runs right after the mountinfo scan (1 MB read at
        # 10,000 mounts) starts with cold caches
        for i in range(len(timers)):
            k = (i + round_) % len(timers)
            samples[k].append(timers[k].timeit(numbers[k]) / numbers[k] * 1e6)
    return [statistics.median(times) for times in samples]


def c_table(_: object) -> int:
    return sum(1 for _ in aufs.mount_table())


def twin_table(_: object) -> int:
    with open(mounts.MOUNTINFO, "rb") as f:
        return len(mounts.parse_mountinfo(f.read()))


class Row(NamedTuple):
    extra_mounts: int
    mounted_us: float
    statx_us: float
    lstat_us: float
    ismount_us: float
    scan_us: float
    c_table_us: float
    twin_table_us: float


class MountTable:
    """Extra mounts under one scratch tmpfs; ``grow_to(n)`` adds them half tmpfs, half self-bind."""

    def __init__(self, scratch: str) -> None:
        self.scratch = scratch
        self.count = 0

    def grow_to(self, n: int) -> None:
        while self.count < n:
            path = os.path.join(self.scratch, f"m{self.count}")
            os.mkdir(path)
            if self.count % 2 == 0:
                aufs.mount("tmpfs", path, "tmpfs")
            else:
                aufs.mount(path, path, None, _MS_BIND)
            self.count += 1

    def new_target(self, n: int) -> str:
        target = os.path.join(self.scratch, f"target-{n}")
        os.mkdir(target)
        aufs.mount("tmpfs", target, "tmpfs")
        return target


def table_lines() -> int:
    with open("/proc/self/mountinfo", "rb") as f:
        return sum(1 for _ in f)


def run(counts: Sequence[int], repeat: int, batch_seconds: float) -> list[Row]:
    base = tempfile.mkdtemp(prefix="aufs-bench-mounted-")
    aufs.mount("tmpfs", base, "tmpfs", 0, "mode=0755")
    rows = []
    try:
        table = MountTable(base)
        baseline = table_lines()
        for targets, n in enumerate(counts, start=1):
            table.grow_to(n)
            target = table.new_target(n)
            # the earlier targets stay mounted: they are extra mounts too, and few
            assert table_lines() == baseline + n + targets
            for check in (aufs.mounted, os.path.ismount, python_scan_mounted):
                assert check(target), f"{check.__name__} says the target is not mounted"
            assert _syscalls.mountpoint_statx(os.fsencode(target)) == 1
            mounted_us, statx_us, lstat_us, ismount_us, scan_us = median_us_per_call(
                [
                    (aufs.mounted, target),
                    (_syscalls.mountpoint_statx, os.fsencode(target)),
                    (os.lstat, target),
                    (os.path.ismount, target),
                    (python_scan_mounted, target),
                ],
                repeat,
                batch_seconds,
            )
            assert c_table(None) == twin_table(None)
            c_table_us, twin_table_us = median_us_per_call(
                [(c_table, None), (twin_table, None)], max(3, repeat // 3), batch_seconds
            )
            rows.append(Row(n, mounted_us, statx_us, lstat_us, ismount_us, scan_us,
                            c_table_us, twin_table_us))
            print(f"  {n:>6} extra mounts: aufs.mounted {rows[-1].mounted_us:.3f} µs", file=sys.stderr)
    finally:
        # one lazy detach takes the whole tree of extra mounts with it
        aufs.unmount(base, lazy=True)
        os.rmdir(base)
    return rows


def report(rows: Sequence[Row]) -> bool:
    """Print the markdown table, the ratios and the goals; return True if every goal is met."""
    print(f"{platform.python_implementation()} {platform.python_version()}, "
          f"kernel {platform.release()}, aufs {aufs.__version__} "
          f"from {os.path.dirname(aufs.__file__ or '?')}; median µs per call\n")
    print("| extra mounts | `aufs.mounted` | statx via cffi alone | `os.lstat` (reference) "
          "| `os.path.ismount` | Python mountinfo scan | mounted / lstat | scan / mounted "
          "| ismount / mounted |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.extra_mounts:,} | {r.mounted_us:.3f} | {r.statx_us:.3f} | {r.lstat_us:.3f} "
              f"| {r.ismount_us:.3f} | {r.scan_us:,.1f} | {r.mounted_us / r.lstat_us:.2f}× "
              f"| {r.scan_us / r.mounted_us:,.0f}× | {r.ismount_us / r.mounted_us:.1f}× |")
    print("\nWhole mount table parsed (ms): C parser `aufs.mount_table()` vs the Python twin\n")
    print("| extra mounts | `mount_table()` (C) | `parse_mountinfo` (Python twin) | twin / C |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.extra_mounts:,} | {r.c_table_us / 1000:.2f} | {r.twin_table_us / 1000:.2f} "
              f"| {r.twin_table_us / r.c_table_us:.1f}× |")
    first, last = rows[0], rows[-1]
    flat = last.mounted_us / first.mounted_us
    goals = [
        (f"aufs.mounted at {last.extra_mounts:,} mounts <= {GOAL_US_AT_10K} µs",
         last.mounted_us <= GOAL_US_AT_10K, f"{last.mounted_us:.3f} µs"),
        (f"flat: {last.extra_mounts:,} vs {first.extra_mounts:,} mounts <= {GOAL_FLAT}×",
         flat <= GOAL_FLAT, f"{flat:.2f}×"),
        (f">= {GOAL_VS_SCAN:,.0f}× faster than the Python scan at {last.extra_mounts:,}",
         last.scan_us / last.mounted_us >= GOAL_VS_SCAN, f"{last.scan_us / last.mounted_us:,.0f}×"),
        (f">= {GOAL_VS_ISMOUNT}× faster than os.path.ismount at {last.extra_mounts:,}",
         last.ismount_us / last.mounted_us >= GOAL_VS_ISMOUNT, f"{last.ismount_us / last.mounted_us:.1f}×"),
    ]
    print()
    for text, ok, value in goals:
        print(f"- {'PASS' if ok else 'FAIL'} {text}: {value}")
    # the machine-independent readings: the absolute goal against one syscall through CPython's
    # C code, and the flatness of the bare statx (the wrapper's Python adds only noise to it)
    print(f"- aufs.mounted / os.lstat at {last.extra_mounts:,}: {last.mounted_us / last.lstat_us:.2f}× "
          f"(os.lstat costs {last.lstat_us:.3f} µs on this machine now)")
    print(f"- bare statx at {last.extra_mounts:,} vs {first.extra_mounts:,} mounts: "
          f"{last.statx_us / first.statx_us:.2f}×")
    wrapper = last.mounted_us - last.statx_us
    print(f"- Python wrapper cost over the bare cffi call at {last.extra_mounts:,}: {wrapper:.3f} µs")
    return all(ok for _, ok, _ in goals)


def reexec_in_private_namespace(argv: Sequence[str]) -> int | None:
    """Run this script again under unshare unless that already happened; None = carry on here."""
    if os.environ.get(_REEXEC_MARK) == "1":
        return None
    if os.geteuid() != 0:
        print("bench_mounted: needs root (it mounts tmpfs and bind mounts)", file=sys.stderr)
        return 2
    env = {**os.environ, _REEXEC_MARK: "1"}
    cmd = ["unshare", "-m", "--propagation", "private", sys.executable, os.path.abspath(__file__), *argv]
    return subprocess.call(cmd, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10,1000,10000", help="extra mount counts, ascending")
    parser.add_argument("--repeat", type=int, default=15, help="batches per measurement")
    parser.add_argument("--batch-seconds", type=float, default=0.05, help="target time per batch")
    args = parser.parse_args(argv)
    status = reexec_in_private_namespace(argv)
    if status is not None:
        return status
    counts = sorted(int(c) for c in args.counts.split(","))
    rows = run(counts, args.repeat, args.batch_seconds)
    return 0 if report(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
