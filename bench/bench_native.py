"""Benchmark of the native core: mount-point check and mount-table parser, as ratios.

Run as root (it makes its own private mount namespace, and creates up to 10,000 mounts):

    unshare -m --propagation private python3 bench/bench_native.py [--counts 10,1000,10000]

For each count N it mounts a scratch tmpfs, N extra mounts below it (half tmpfs, half a
directory bind-mounted onto itself), then the target (a tmpfs) last, and reports in the same
run the median time per call of:

* ``aufs.mounted(target)``, a line-by-line Python scan of ``/proc/self/mountinfo``,
  ``os.path.ismount(target)``, and ``os.lstat(target)`` (the floor: one path-walking syscall);
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


def median_us(fn: Callable[[str], object], arg: str, budget: float = 0.5) -> float:
    """Median over 9 repeats of the mean time per call; each repeat takes about budget/9 s."""
    t0 = time.perf_counter()
    fn(arg)
    one = max(time.perf_counter() - t0, 1e-7)
    loops = max(1, int(budget / 9 / one))
    samples = []
    for _ in range(9):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn(arg)
        samples.append((time.perf_counter() - t0) / loops * 1e6)
    return statistics.median(samples)


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
        return {
            "mounted": median_us(mounts.mounted, target),
            "scan": median_us(python_scan, target, budget=2.0),
            "ismount": median_us(os.path.ismount, target),
            "lstat": median_us(os.lstat, target),
            "c_table": median_us(c_table, "", budget=2.0),
            "twin_table": median_us(twin_table, "", budget=2.0),
        }
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
