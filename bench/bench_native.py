"""Benchmark of the native core: mount-point check and mount-table parser, as ratios.

Run as root (it makes its own private mount namespace, and creates up to 10,000 mounts):

    unshare -m --propagation private python3 bench/bench_native.py [--counts 10,1000,10000]

For each count N it mounts a scratch tmpfs, N extra mounts below it (half tmpfs, half a
directory bind-mounted onto itself), then the target (a tmpfs) last, and reports in the same
run the median time per call of:

* ``aufs.mounted(target)``, a line-by-line Python scan of ``/proc/self/mountinfo``,
  ``os.path.ismount(target)``, and ``os.lstat(target)`` (the floor: one path-walking syscall);
  batches of the different calls are interleaved, so machine load hits them alike;
* ``list(aufs.mount_table())`` (C parser) and ``parse_mountinfo`` (its pure-Python twin).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aufs import mounts  # noqa: E402  (after the sys.path line above)


def python_scan(path: str) -> bool:
    """The obvious pure-Python check: read mountinfo line by line, compare the mount point."""
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = line.split(b" ", 5)[4]
            if b"\\" in point:
                point = (point.replace(b"\\040", b" ").replace(b"\\011", b"\t")
                         .replace(b"\\012", b"\n").replace(b"\\134", b"\\"))
            if os.fsdecode(point) == path:
                return True
    return False


def c_table(_: str) -> bool:
    return bool(list(mounts.mount_table()))


def twin_table(_: str) -> bool:
    with open(mounts.MOUNTINFO, "rb") as f:
        return bool(mounts.parse_mountinfo(f.read()))


def medians_us(calls: dict[str, tuple[Callable[[str], object], str]], repeats: int = 21,
               batch_seconds: float = 0.02) -> dict[str, float]:
    """Median per-call time of each call, in µs. The batches of the different calls are
    interleaved (round-robin, ``repeats`` rounds) so load swings on a shared machine hit them
    all alike and the ratios stay fair."""
    loops = {}
    for name, (fn, arg) in calls.items():
        t0 = time.perf_counter()
        fn(arg)
        loops[name] = max(1, int(batch_seconds / max(time.perf_counter() - t0, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, arg) in calls.items():
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn(arg)
            samples[name].append((time.perf_counter() - t0) / n * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def run(count: int, base: str) -> dict[str, float]:
    os.makedirs(base, exist_ok=True)
    mounts.mount("tmpfs", base, "tmpfs", 0, "size=64m")
    try:
        for i in range(count):
            path = os.path.join(base, f"m{i:05d}")
            os.mkdir(path)
            if i % 2:
                mounts.mount(path, path, None, mounts.MS_BIND)
            else:
                mounts.mount("tmpfs", path, "tmpfs", 0, "size=1m")
        target = os.path.join(base, "target")
        os.mkdir(target)
        mounts.mount("tmpfs", target, "tmpfs", 0, "size=1m")
        assert mounts.mounted(target) and python_scan(target) and os.path.ismount(target)
        return medians_us({
            "mounted": (mounts.mounted, target),
            "scan": (python_scan, target),
            "ismount": (os.path.ismount, target),
            "lstat": (os.lstat, target),
            "c_table": (c_table, ""),
            "twin_table": (twin_table, ""),
        })
    finally:
        mounts.unmount(base, lazy=True)


def enter_private_mount_namespace() -> None:
    """Belt and braces on top of `unshare -m`: no benchmark mount can reach the host."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed (run as root)")
    mounts.mount(None, "/", None, mounts.MS_REC | mounts.MS_PRIVATE)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10,1000,10000")
    args = parser.parse_args(argv)
    enter_private_mount_namespace()
    counts = [int(c) for c in args.counts.split(",")]
    base = tempfile.mkdtemp(prefix="aufs-bench-native-")
    results = {n: run(n, base) for n in counts}
    os.rmdir(base)
    print("| extra mounts | aufs.mounted | Python scan | os.path.ismount | os.lstat (floor) "
          "| scan / mounted | ismount / mounted |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in results.items():
        m = r["mounted"]
        print(f"| {n:,} | {m:.2f} µs | {r['scan']:,.0f} µs | {r['ismount']:.2f} µs "
              f"| {r['lstat']:.2f} µs | {r['scan'] / m:,.0f}x | {r['ismount'] / m:.1f}x |")
    first, last = results[counts[0]]["mounted"], results[counts[-1]]["mounted"]
    print(f"\naufs.mounted at {counts[-1]:,} vs {counts[0]:,} mounts: {last / first:.2f}x\n")
    print("| extra mounts | mount_table() (C parser) | parse_mountinfo (Python twin) | twin / C |")
    print("|---:|---:|---:|---:|")
    for n, r in results.items():
        c, py = r["c_table"], r["twin_table"]
        print(f"| {n:,} | {c / 1000:.2f} ms | {py / 1000:.2f} ms | {py / c:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
