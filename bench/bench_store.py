#!/usr/bin/env python3
"""Benchmark of the layer store (aufs.Driver), every figure a ratio against a reference
measured in the same run, on a private tmpfs.

* get() latency for chains of 1, 10, 128 and 500 layers, per backend; reference: the bare
  mount + unmount of the same chain (``mounts.mount_overlay`` for overlay, the fuse-overlayfs
  binary run directly for fuse-overlayfs), so the ratio is the store's own overhead.
* reading a file through a 20-layer mount against reading it from a plain directory
  (one 64 MiB file, and 2000 small files opened and read).
* exists() against ``os.path.exists`` of the same path.

Run as root in a private mount namespace:
    unshare -m --propagation private python3 bench/bench_store.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from aufs import mounts
from aufs.backends import BACKENDS
from aufs.store import Driver


def _median_ms(fn: Callable[[], None], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def _chain(d: Driver, prefix: str, depth: int) -> str:
    parent: str | None = None
    for i in range(depth):
        layer = f"{prefix}{i}"
        d.create(layer, parent=parent)
        (pathlib.Path(d.diff_dir(layer)) / f"f{i}").write_text(str(i))
        parent = layer
    assert parent is not None
    return parent


def _bare_mount(d: Driver, top: str, target: str) -> Callable[[], None]:
    """Mount + unmount of what ``get`` mounts (``d.mounts(top)``), without the store: the
    reference (for fuse-overlayfs the binary run directly, daemonizing itself)."""
    described = d.mounts(top)

    def run() -> None:
        mounts.mount_described(described, target)
        mounts.unmount(target)

    return run


def bench_get(root: pathlib.Path, backend: str, depths: list[int], repeat: int) -> list[str]:
    rows = []
    d = Driver(root / f"get-{backend}", backend=backend)
    target = root / f"bare-{backend}"
    target.mkdir()
    try:
        for depth in depths:
            if depth > d.max_depth:
                continue
            top = _chain(d, f"c{depth}-", depth)
            # a 500-layer fuse-overlayfs mount takes seconds: fewer samples keep the run short
            runs = repeat if d.backend == "overlay" or depth < 128 else max(3, repeat // 3)
            bare = _bare_mount(d, top, str(target))
            get_times, pair_times, bare_times = [], [], []
            # interleaved, so that load from other processes hits both sides alike
            for _ in range(runs):
                t0 = time.perf_counter()
                d.get(top)
                t1 = time.perf_counter()
                d.put(top)
                t2 = time.perf_counter()
                bare()
                t3 = time.perf_counter()
                get_times.append((t1 - t0) * 1000)
                pair_times.append((t2 - t0) * 1000)
                bare_times.append((t3 - t2) * 1000)
            get_ms = statistics.median(get_times)
            pair_ms = statistics.median(pair_times)
            bare_ms = statistics.median(bare_times)
            rows.append(
                f"| {backend} | {depth} | {get_ms:.2f} | {pair_ms:.2f} | {bare_ms:.2f} | {pair_ms / bare_ms:.2f}x |"
            )
            print(rows[-1], flush=True)
    finally:
        d.cleanup()
    return rows


def bench_read(root: pathlib.Path, backend: str) -> list[str]:
    d = Driver(root / f"read-{backend}", backend=backend)
    plain = root / f"plain-{backend}"
    plain.mkdir()
    big = os.urandom(1 << 20) * 64
    try:
        top = _chain(d, "r", 20)
        bottom = pathlib.Path(d.diff_dir("r0"))
        (bottom / "big").write_bytes(big)
        (plain / "big").write_bytes(big)
        (bottom / "small").mkdir()
        (plain / "small").mkdir()
        for i in range(2000):
            (bottom / "small" / f"s{i}").write_bytes(b"x" * 100)
            (plain / "small" / f"s{i}").write_bytes(b"x" * 100)

        def read_big(base: str) -> Callable[[], None]:
            def run() -> None:
                with open(f"{base}/big", "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass
            return run

        def read_small(base: str) -> Callable[[], None]:
            def run() -> None:
                for i in range(2000):
                    with open(f"{base}/small/s{i}", "rb") as f:
                        f.read()
            return run

        with d.mount(top) as mnt:
            read_big(mnt)()  # warm
            rows = []
            for label, make in (("64 MiB file", read_big), ("2000 small files", read_small)):
                through_run, direct_run = make(mnt), make(str(plain))
                through_times, direct_times = [], []
                for _ in range(7):  # interleaved, as for get()
                    through_times.append(_median_ms(through_run, 1))
                    direct_times.append(_median_ms(direct_run, 1))
                through = statistics.median(through_times)
                direct = statistics.median(direct_times)
                rows.append(f"| {backend} | {label} | {through:.1f} | {direct:.1f} | {through / direct:.2f}x |")
                print(rows[-1], flush=True)
        return rows
    finally:
        d.cleanup()


def bench_exists(root: pathlib.Path, backend: str) -> str:
    d = Driver(root / f"exists-{backend}", backend=backend)
    _chain(d, "e", 10)
    path = d.layout.layer_meta("e5")
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        d.exists("e5")
    ours = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        os.path.exists(path)
    ref = (time.perf_counter() - t) / n * 1e6
    row = f"| {backend} | {ours:.2f} | {ref:.2f} | {ours / ref:.2f}x |"
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    repeat = 5 if args.quick else 25
    root = pathlib.Path(tempfile.mkdtemp(prefix="aufs-bench-store-"))
    mounts.mount("tmpfs", root, "tmpfs", 0, "size=4g")
    backends = [n for n, c in BACKENDS.items() if c.unavailable_reason() is None]
    out: dict[str, list[str]] = {"get": [], "read": [], "exists": []}
    try:
        print("| backend | chain | get ms | get+put ms | bare mount+umount ms | ratio |")
        for backend in backends:
            out["get"] += bench_get(root, backend, [1, 10, 128, 500], repeat)
        print("| backend | read | through 20 layers ms | plain dir ms | ratio |")
        for backend in backends:
            out["read"] += bench_read(root, backend)
        print("| backend | exists() us | os.path.exists us | ratio |")
        for backend in backends:
            out["exists"].append(bench_exists(root, backend))
    finally:
        for info in mounts.submounts(root):
            mounts.unmount(info.mountpoint, lazy=True)
        os.rmdir(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
