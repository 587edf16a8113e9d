#!/usr/bin/env python3
"""Cost of the copy-up of implied parent directories in ``Driver.apply_diff``.

A layer tar that leaves out its entries' parent directories makes ``apply_diff`` take a
read-only mount of the parent chain (the lower view) and copy each implied directory's owner,
mode and xattrs from it. The reference is the same tar with every directory listed (no lower
view is taken, nothing is copied up), applied onto the same parent chain in the same run.
Timed on tmpfs, rounds interleaved, per backend; the result is the ratio of medians.

Run as root in a private mount namespace::

    unshare -m --propagation private python3 bench/bench_copyup.py [--rounds 15] [--files 2000]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aufs

DIRS = 20


def _tar(files: int, listed: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(DIRS):
            if listed:
                for name in (f"srv{d}", f"srv{d}/data"):
                    info = tarfile.TarInfo(name)
                    info.type, info.mode = tarfile.DIRTYPE, 0o2750
                    tar.addfile(info)
            for i in range(files // DIRS):
                info = tarfile.TarInfo(f"srv{d}/data/f{i}")
                info.size = 64
                tar.addfile(info, io.BytesIO(b"x" * 64))
    return buf.getvalue()


def _base() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(DIRS):
            for name in (f"srv{d}", f"srv{d}/data"):
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o2750, 1234, 5678
                info.pax_headers = {"SCHILY.xattr.user.dir": "x"}
                tar.addfile(info)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    implied_tar, listed_tar = _tar(args.files, False), _tar(args.files, True)
    print(f"tar: {args.files} files in {DIRS} x 2 directories; rounds: {args.rounds}")
    for backend in ("overlay", "fuse-overlayfs"):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
            try:
                driver = aufs.Driver(Path(tmp) / "store", backend=backend)
            except aufs.BackendUnavailable as exc:
                print(f"{backend}: skipped ({exc})")
                continue
            try:
                driver.create("base")
                driver.apply_diff("base", _base())
                driver.create("mid", parent="base")  # two layers below: the view is a real mount
                times: dict[str, list[float]] = {"listed": [], "implied": []}
                for r in range(args.rounds):
                    for kind, data in (("listed", listed_tar), ("implied", implied_tar)):
                        layer = f"{kind}{r}"
                        driver.create(layer, parent="mid")
                        start = time.perf_counter()
                        driver.apply_diff(layer, data)
                        times[kind].append(time.perf_counter() - start)
                        driver.remove(layer)
                listed, implied = (statistics.median(times[k]) for k in ("listed", "implied"))
                print(f"{backend}: all directories listed {listed * 1000:.1f} ms, "
                      f"implied parents copied up {implied * 1000:.1f} ms: "
                      f"ratio {implied / listed:.2f}x (+{(implied - listed) * 1000:.1f} ms)")
            finally:
                driver.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
