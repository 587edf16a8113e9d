"""Benchmark: aufs.mounted() against a Python scan of the mount table and os.path.ismount.

Run as root inside a private mount namespace (it creates up to 10,000 mounts):

    unshare -m --propagation private python3 bench/bench_mounted.py [--counts 10,1000,10000]

For each count N it mounts a tmpfs base, N extra mounts below it (half tmpfs, half a directory
bind-mounted onto itself), then the target (a tmpfs) last, and reports the median time per call
of the three checks on the target, all in the same run, plus the ratios the goal is stated in.
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

from aufs import mounts

MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


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


def median_us(fn: Callable[[str], bool], arg: str, budget: float = 0.4) -> float:
    """Median over repeats of the mean time per call, each repeat about budget/9 seconds."""
    t0 = time.perf_counter()
    fn(arg)
    one = max(time.perf_counter() - t0, 1e-7)
    loops = max(1, int(budget / 9 / one))
    samples: list[float] = []
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
                mounts.mount(path, path, None, MS_BIND)
            else:
                mounts.mount("tmpfs", path, "tmpfs", 0, "size=1m")
        target = os.path.join(base, "target")
        os.mkdir(target)
        mounts.mount("tmpfs", target, "tmpfs", 0, "size=1m")
        assert mounts.mounted(target) and python_scan(target) and os.path.ismount(target)
        return {
            "aufs.mounted": median_us(mounts.mounted, target),
            "python scan": median_us(python_scan, target, budget=2.0),
            "os.path.ismount": median_us(os.path.ismount, target),
        }
    finally:
        mounts.unmount(base, lazy=True)


def enter_private_mount_namespace() -> None:
    """Belt and braces on top of `unshare -m`: no benchmark mount can reach the host."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed (run as root)")
    mounts.mount(None, "/", None, MS_REC | MS_PRIVATE)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10,1000,10000")
    args = parser.parse_args(argv)
    enter_private_mount_namespace()
    counts = [int(c) for c in args.counts.split(",")]
    base = tempfile.mkdtemp(prefix="aufs-bench-mounted-")
    results = {n: run(n, base) for n in counts}
    os.rmdir(base)
    print(f"{'mounts':>7} {'aufs.mounted':>13} {'python scan':>13} {'os.path.ismount':>16}"
          f" {'scan/mounted':>13} {'ismount/mounted':>16}")
    for n, r in results.items():
        m = r["aufs.mounted"]
        print(f"{n:>7} {m:>11.2f}us {r['python scan']:>11.1f}us {r['os.path.ismount']:>14.2f}us"
              f" {r['python scan'] / m:>12.0f}x {r['os.path.ismount'] / m:>15.1f}x")
    first, last = results[counts[0]]["aufs.mounted"], results[counts[-1]]["aufs.mounted"]
    print(f"aufs.mounted at {counts[-1]} vs {counts[0]} mounts: {last / first:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
