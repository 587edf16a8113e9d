#!/usr/bin/env python3
"""Reads through a 20-layer rootless mount (fuse-overlayfs) against the same chain in a root
store (kernel overlayfs), in one run, on tmpfs, read by the same ordinary user.

Both stores hold the same 20-layer chain: the bottom layer has one 64 MiB file (``big``), and
every layer adds 100 small files (4 KiB) to one directory ``small/`` that is therefore merged
across all 20 layers: 2000 small files, half of them found 10 or more layers down.

* root store: made and mounted (``get``) by root, kernel overlayfs;
* rootless stores, made and mounted by the user ``aufs-test`` in the process that then reads:
  an override_stat store (fuse-overlayfs, /dev/fuse 0666 as on stock Debian) and a userns store
  (kernel overlayfs in the store's user namespace, which the reader joins).

That one process, run as ``aufs-test`` with ``runuser``, reads through both mounts, alternating
which goes first each round: the 64 MiB file in 1 MiB ``read`` calls; the 2000 small files
(``listdir`` of the merged directory, then ``open``/``read``/``close`` each). Each of
``--cycles`` mount cycles mounts both afresh (root remounts its store; a new reader process mounts
the user's); the first round after mounting (cold: nothing looked up through the fresh mounts yet,
the layers' pages in tmpfs) is reported apart from the later rounds (warm: the kernel's page,
dentry and attribute caches in front of both).

Run as root::

    unshare -m --propagation private python3 bench/bench_rootless_reads.py [--cycles 5] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aufs  # noqa: E402

LAYERS = 20
SMALL_PER_LAYER = 100
SMALL_SIZE = 4096
BIG_SIZE = 64 << 20


def fill(driver: aufs.Driver) -> str:
    """The 20-layer chain in ``driver``'s store; returns the top layer's id."""
    parent = None
    payload = os.urandom(SMALL_SIZE)
    for i in range(LAYERS):
        layer = f"l{i:02d}"
        driver.create(layer, parent)
        diff = Path(driver.diff_dir(layer))
        if i == 0:
            chunk = os.urandom(1 << 20)
            with open(diff / "big", "wb") as out:
                for _ in range(BIG_SIZE >> 20):
                    out.write(chunk)
        (diff / "small").mkdir()
        for j in range(SMALL_PER_LAYER):
            (diff / "small" / f"f{i:02d}-{j:03d}").write_bytes(payload)
        parent = layer
    assert parent is not None
    return parent


# run by aufs-test: argv = bench dir, rootless store home, root mount, rounds, rootless kind
_READER = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import aufs
from bench_rootless_reads import fill, read_big, read_small
d = aufs.Driver(sys.argv[2], rootless=sys.argv[5])
top = "l19" if d.exists("l19") else fill(d)
mine = d.get(top)
try:
    want = "fuse-overlayfs" if sys.argv[5] == "override_stat" else "overlay"
    assert d.status()["backend"] == want, d.status()
    mounts = {"rootless": mine, "root": sys.argv[3]}
    rounds = []
    for r in range(int(sys.argv[4])):
        order = list(mounts) if r % 2 == 0 else list(reversed(list(mounts)))
        times = {}
        for name in order:
            times[name + " big"] = read_big(mounts[name])
            times[name + " small"] = read_small(mounts[name])
        rounds.append(times)
    print(json.dumps(rounds))
finally:
    d.put(top)
'''


def read_big(root: str) -> float:
    import time
    start = time.perf_counter()
    fd = os.open(os.path.join(root, "big"), os.O_RDONLY)
    total = 0
    try:
        while True:
            got = len(os.read(fd, 1 << 20))
            if not got:
                break
            total += got
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    assert total == BIG_SIZE, total
    return elapsed


def read_small(root: str) -> float:
    import time
    start = time.perf_counter()
    small = os.path.join(root, "small")
    names = os.listdir(small)
    total = 0
    for name in names:
        fd = os.open(os.path.join(small, name), os.O_RDONLY)
        try:
            total += len(os.read(fd, SMALL_SIZE + 1))
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - start
    assert len(names) == LAYERS * SMALL_PER_LAYER and total == len(names) * SMALL_SIZE, (len(names), total)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=5, help="mount cycles (one cold round each)")
    parser.add_argument("--rounds", type=int, default=5, help="read rounds per cycle (the first is cold)")
    args = parser.parse_args()
    from bench_rootless import USER, bench_user, user_fuse, user_pids
    found = bench_user()
    if found is None:
        return 2
    user, interpreter = found
    before = user_pids(user.pw_uid)
    work = Path(tempfile.mkdtemp(prefix="aufs-bench-rlreads-", dir="/dev/shm"))
    os.chmod(work, 0o755)
    root_driver = None
    top = None
    try:
        user_fuse(work)
        root_driver = aufs.Driver(work / "root-store", backend="overlay")
        top = fill(root_driver)
        root_mount = root_driver.get(top)
        for path in (work / "root-store", work / "root-store" / "mnt"):
            os.chmod(path, 0o755)  # the reader is aufs-test
        play = work / "play"
        play.mkdir()
        os.chown(play, user.pw_uid, user.pw_gid)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(play),
               "USER": USER, "LOGNAME": USER, "LANG": "C.UTF-8",
               "PYTHONPATH": interpreter.pythonpath, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        bench_dir = work / "bench"
        bench_dir.mkdir()
        for name in ("bench_rootless_reads.py",):
            shutil.copy(Path(__file__).resolve().parent / name, bench_dir / name)
        os.chmod(bench_dir, 0o755)
        def argv(kind: str) -> list[str]:
            return ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                    *interpreter.argv, "-c", _READER, str(bench_dir), str(play / f"store-{kind}"), root_mount,
                    str(args.rounds), kind]
        cold: dict[str, list[float]] = {}
        warm: dict[str, list[float]] = {}
        for cycle in range(args.cycles):
            # both mounts fresh each cycle: the reader mounts its own, root remounts; the
            # override_stat store (fuse-overlayfs) and the userns store (kernel overlayfs in
            # its user namespace) each in a reader of its own, each compared with root's mount
            for kind, side in (("override_stat", "fuse"), ("userns", "userns")):
                root_driver.put(top)
                assert root_driver.get(top) == root_mount
                proc = subprocess.run(argv(kind), capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                rounds = json.loads(proc.stdout)
                rename = {"rootless": side, "root": f"root ({side} run)"}
                for key, value in rounds[0].items():
                    name, what = key.split(" ")
                    cold.setdefault(f"{rename[name]} {what}", []).append(value)
                for later in rounds[1:]:
                    for key, value in later.items():
                        name, what = key.split(" ")
                        warm.setdefault(f"{rename[name]} {what}", []).append(value)
        print(f"{LAYERS} layers; big: {BIG_SIZE >> 20} MiB in layer 1 of {LAYERS}; small: "
              f"{LAYERS * SMALL_PER_LAYER} files of {SMALL_SIZE} B, {SMALL_PER_LAYER} per layer, one merged dir")
        print(f"read by {USER}, tmpfs, {args.cycles} mount cycles x {args.rounds} rounds; cold = first round "
              "after mounting (median over cycles), warm = the later rounds (median over all)")
        print("| what | cold median (s) | warm median (s) | cold runs (s) |")
        print("|---|---|---|---|")
        med = statistics.median
        sides = ("root (fuse run)", "fuse", "root (userns run)", "userns")
        for what in ("big", "small"):
            for side in sides:
                key = f"{side} {what}"
                print(f"| {key} | {med(cold[key]):.4f} | {med(warm[key]):.4f} | "
                      f"{' '.join(f'{v:.4f}' for v in cold[key])} |")
        for side in ("fuse", "userns"):
            for what in ("big", "small"):
                root = f"root ({side} run) {what}"
                print(f"ratio {side} / root, {what}: cold {med(cold[f'{side} {what}']) / med(cold[root]):.2f}x,"
                      f" warm {med(warm[f'{side} {what}']) / med(warm[root]):.2f}x")
        for side in sides:
            print(f"{side} big read: cold {BIG_SIZE / 1e6 / med(cold[side + ' big']):.0f} MB/s, "
                  f"warm {BIG_SIZE / 1e6 / med(warm[side + ' big']):.0f} MB/s")
    finally:
        if root_driver is not None and top is not None and root_driver.is_mounted(top):
            root_driver.put(top)
        started = user_pids(user.pw_uid) - before
        for pid in sorted(started):
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        subprocess.run(["umount", "-l", "/dev/fuse"], check=False)
        subprocess.run(["umount", "-l", str(work / "dev")], check=False)
        for leftover in Path("/proc/self/mountinfo").read_text().splitlines():
            if str(work) in leftover:
                subprocess.run(["umount", "-l", leftover.split()[4]], check=False)
        shutil.rmtree(work, ignore_errors=True)
        interpreter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
