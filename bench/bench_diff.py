#!/usr/bin/env python3
"""Benchmark ``diff`` (aufs.export.write_diff) against ``tar -c`` and ``changes``
(aufs.changes.compute_changes) against a ``find`` walk, as ratios measured in one run on tmpfs.

Run as root (it mounts a private tmpfs and an overlay in its own mount namespace):

    unshare -m --propagation private python3 bench/bench_diff.py [--source /usr/share] [--files 100000]
    unshare -m --propagation private python3 bench/bench_diff.py --only pipe --rounds 9

1. diff: ``--source`` is copied (``cp -a``) onto a tmpfs as one layer directory. Each round
   times, interleaved: ``tar -cf out.tar -C layer .`` (GNU tar, the reference), ``write_diff``
   into a file on the same tmpfs, and ``cp -a`` of the tree (the physical reference).
2. changes: a synthetic layer of ``--files`` files (100 per directory) over a parent layer.
   Two cases: every file new (directories absent below: no lookups), and every file also
   present below (one lstat in the lower view per entry, the worst case). The lower view is
   a read-only overlay mount of the parent, as the store provides it. Reference: ``find
   LAYER`` (GNU find walks with d_type, no stat per file).

3. pipe: ``Driver.diff`` of a layer into a pipe against ``tar -cf - -C DIR .`` into the same
   kind of pipe, the reader a ``cat >/dev/null`` started before the clock. The layer (unless
   ``--pipe-source``) is synthetic and fixed: 5,500 entries (500 directories of 10 files, sizes
   log-uniform from 64 B to 1 MiB, scaled to 153 MB in all). Rounds alternate the two and the
   ratio is taken per round; the report gives the spread (min, median, max), not only the
   median, because a pipe's reader on the same or the other core makes runs swing.

Each figure is the median of ``--rounds`` rounds; ratios are aufs / reference.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aufs import Driver
from aufs.changes import compute_changes
from aufs.export import write_diff
from aufs.whiteouts import WhiteoutFormat

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount(source: str, target: str, fstype: str, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    _libc.umount2(target.encode(), 2)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def bench_diff(root: str, source: str, rounds: int) -> dict[str, float]:
    layer = os.path.join(root, "layer")
    _run(["cp", "-a", source, layer])
    entries = sum(len(d) + len(f) for _, d, f in os.walk(layer))
    size = sum(os.lstat(os.path.join(p, n)).st_size for p, _, fs in os.walk(layer) for n in fs)
    times: dict[str, list[float]] = {"tar -c": [], "write_diff": [], "cp -a": []}
    out = os.path.join(root, "out.tar")
    for _ in range(rounds):
        times["tar -c"].append(_timed(lambda: _run(["tar", "-cf", out, "-C", layer, "."])))
        os.unlink(out)
        times["write_diff"].append(_timed(lambda: write_diff(layer, out, WhiteoutFormat.OVERLAY)))
        tar_bytes = os.path.getsize(out)
        os.unlink(out)
        copy = os.path.join(root, "copy")
        times["cp -a"].append(_timed(lambda copy=copy: _run(["cp", "-a", layer, copy])))
        shutil.rmtree(copy)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"diff: {source} copied to tmpfs, {entries} entries, {size / 1e6:.0f} MB of file data, "
          f"tar {tar_bytes / 1e6:.0f} MB, median of {rounds}")
    for k, v in med.items():
        print(f"  {k:12s} {v:7.3f} s")
    print(f"  ratio write_diff / tar -c = {med['write_diff'] / med['tar -c']:.2f}")
    shutil.rmtree(layer)
    return med


def _make_tree(root: str, files: int, data: bytes) -> None:
    for i in range(files):
        d = os.path.join(root, f"dir-{i // 100:05d}")
        if i % 100 == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"file-{i}"), "wb") as f:
            f.write(data)


def bench_changes(root: str, files: int, rounds: int) -> dict[str, float]:
    parent = os.path.join(root, "parent")
    new_layer = os.path.join(root, "new")
    over_layer = os.path.join(root, "over")
    view = os.path.join(root, "view")
    for d in (parent, new_layer, view):
        os.makedirs(d)
    _make_tree(parent, files, b"p")
    # every file new: a tree under a directory the parent does not have
    _make_tree(os.path.join(new_layer, "added"), files, b"n")
    # every file also below: same paths as the parent (copy-up and rewrite everywhere)
    _make_tree(over_layer, files, b"o")
    # a read-only overlay with two lowers shows the parent chain, like Driver.diffs.lower_view
    empty = os.path.join(root, "empty")
    os.makedirs(empty)
    _mount("overlay", view, "overlay", f"lowerdir={parent}:{empty}")
    try:
        times: dict[str, list[float]] = {"find (new)": [], "changes (new)": [], "find (over)": [],
                                         "changes (over)": []}
        counts = {}
        for _ in range(rounds):
            times["find (new)"].append(_timed(lambda: _run(["find", new_layer])))
            times["changes (new)"].append(
                _timed(lambda: counts.__setitem__("new", len(compute_changes(new_layer, view, WhiteoutFormat.OVERLAY)))))
            times["find (over)"].append(_timed(lambda: _run(["find", over_layer])))
            times["changes (over)"].append(
                _timed(lambda: counts.__setitem__("over", len(compute_changes(over_layer, view, WhiteoutFormat.OVERLAY)))))
    finally:
        _umount(view)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"changes: {files} files in {files // 100} directories over a {files}-file parent "
          f"(overlay view), median of {rounds}; {counts['new']} and {counts['over']} changes")
    for k, v in med.items():
        print(f"  {k:15s} {v:7.3f} s")
    print(f"  ratio changes / find, all new   = {med['changes (new)'] / med['find (new)']:.2f}")
    print(f"  ratio changes / find, all below = {med['changes (over)'] / med['find (over)']:.2f}")
    return med


def _make_pipe_layer(root: str, entries: int = 5500, total: int = 153_000_000) -> None:
    """The fixed synthetic layer of the pipe case (same bytes on every run)."""
    import random

    rng = random.Random(13)
    files = entries - entries // 11  # one directory per 10 files
    sizes = [int(2 ** rng.uniform(6, 20)) for _ in range(files)]
    scale = total / sum(sizes)
    blob = rng.randbytes(1 << 21)
    for i, size in enumerate(sizes):
        d = os.path.join(root, f"d{i // 10:03d}")
        if i % 10 == 0:
            os.makedirs(d)
        size = min(int(size * scale), len(blob))
        start = rng.randrange(0, len(blob) - size + 1)
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(blob[start:start + size])


def _into_pipe(write: Callable[[object], object]) -> float:
    """Seconds from the start of ``write(pipe)`` until the reader has read everything."""
    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert reader.stdin is not None
    try:
        start = time.perf_counter()
        write(reader.stdin)
        reader.stdin.close()
        reader.wait()
        return time.perf_counter() - start
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()


def bench_pipe(root: str, source: str | None, rounds: int) -> dict[str, float]:
    tree = os.path.join(root, "tree")
    if source is None:
        _make_pipe_layer(tree)
    else:
        _run(["cp", "-a", source, tree])
    entries = sum(len(d) + len(f) for _, d, f in os.walk(tree))
    size = sum(os.lstat(os.path.join(p, n)).st_size for p, _, fs in os.walk(tree) for n in fs)
    # the store's layer, applied from a tar of the same tree (tar -c reads the tree itself)
    driver = Driver(os.path.join(root, "store"))
    driver.create("layer")
    staged = os.path.join(root, "tree.tar")
    _run(["tar", "-cf", staged, "-C", tree, "."])
    driver.apply_diff("layer", staged)
    os.unlink(staged)
    times: dict[str, list[float]] = {"tar -c": [], "Driver.diff": []}
    ratios = []
    out_bytes = 0

    def tar(pipe: object) -> None:
        subprocess.run(["tar", "-cf", "-", "-C", tree, "."], stdout=pipe, check=True)

    def diff(pipe: object) -> None:
        nonlocal out_bytes
        out_bytes = driver.diff("layer", pipe)  # type: ignore[arg-type]

    for _ in range(rounds):
        times["tar -c"].append(_into_pipe(tar))
        times["Driver.diff"].append(_into_pipe(diff))
        ratios.append(times["Driver.diff"][-1] / times["tar -c"][-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"pipe: {'synthetic layer' if source is None else source}, {entries} entries, "
          f"{size / 1e6:.0f} MB of file data, tar {out_bytes / 1e6:.0f} MB, into a pipe read "
          f"by cat, {rounds} alternating rounds")
    for k, v in times.items():
        print(f"  {k:12s} median {med[k]:7.3f} s  (min {min(v):.3f}, max {max(v):.3f})")
    ratios.sort()
    print(f"  ratio Driver.diff / tar -c per round: min {ratios[0]:.2f}, median "
          f"{statistics.median(ratios):.2f}, max {ratios[-1]:.2f}")
    print("  rounds: " + " ".join(f"{r:.2f}" for r in ratios))
    return med


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="/usr/share", help="tree to export (default /usr/share)")
    parser.add_argument("--files", type=int, default=100_000, help="files in the changes layer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["diff", "changes", "pipe"])
    parser.add_argument("--pipe-source", help="tree for the pipe case (default: synthetic)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (mounts tmpfs and overlay)", file=sys.stderr)
        return 2
    root = tempfile.mkdtemp(prefix="aufs-bench-diff-")
    _mount("tmpfs", root, "tmpfs", "size=8g")
    try:
        if args.only in (None, "diff"):
            bench_diff(root, args.source, args.rounds)
        if args.only in (None, "changes"):
            bench_changes(root, args.files, args.rounds)
        if args.only in (None, "pipe"):
            bench_pipe(root, args.pipe_source, args.rounds)
    finally:
        _umount(root)
        os.rmdir(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
