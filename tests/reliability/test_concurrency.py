"""Load: 256 threads in this process and 4 more processes (16 threads each) on one store.

Every thread mounts shared layers again and again (get/put, through its own ``Driver`` or one
shared with other threads) and builds, fills, mounts, exports and removes layers of its own.
Asserted: no operation fails; a layer is never mounted twice on its mountpoint; while 320
holders hold a layer its reference table counts exactly 320 and it is mounted once; after the
last put nothing is mounted below the store and no reference table is left.
"""
from __future__ import annotations

from pathlib import Path
import io
import os
import pathlib
import random
import sys
import threading
import time
import traceback
from typing import Callable

import pytest

import aufs
from aufs.backends import BACKENDS
from aufs.refcount import RefTable

from .trees import build_tar, mounts_below

THREADS = 256
PROCESSES = 4
THREADS_PER_PROCESS = 16
ROUNDS = 3
SHARED = ("s0", "s1")
# fuse-overlayfs runs a daemon per mount: the same load, scaled down
FUSE_LOAD = (32, 2, 8)


def _mount_count(path: str) -> int:
    with open("/proc/self/mountinfo", "rb") as f:
        needle = b" " + os.fsencode(path) + b" "
        return sum(1 for line in f if line.split(b" ", 5)[4] == needle.strip())


def _worker(home: pathlib.Path, backend: str, n: int, prefix: str, shared_driver: aufs.Driver,
            errors: list[str], hold: Callable[[aufs.Driver], None]) -> None:
    """One thread's work; failures are collected, never raised (so every thread finishes)."""
    rng = random.Random(f"{prefix}{n}")
    try:
        d = shared_driver if n % 4 == 0 else aufs.Driver(home, backend=backend)
        own = f"{prefix}-t{n}"
        for i in range(ROUNDS):
            layer = rng.choice(SHARED)
            path = d.get(layer)
            try:
                if not os.path.isfile(f"{path}/etc/os-release"):
                    errors.append(f"{prefix}{n}: {layer} mounted without its content")
                count = _mount_count(path)
                if count != 1:
                    errors.append(f"{prefix}{n}: {layer} mounted {count} times")
            finally:
                d.put(layer)
            if n % 2 == 0:  # half the threads also run a layer's whole life
                d.create(own, parent=rng.choice(SHARED))
                d.apply_diff(own, build_tar([("dir", "mine"), ("file", f"mine/{n}-{i}", b"x" * (n + 1))]))
                with d.mount(own) as root:
                    if not os.path.isfile(f"{root}/mine/{n}-{i}") or not os.path.isfile(f"{root}/etc/os-release"):
                        errors.append(f"{prefix}{n}: union of {own} is missing content")
                out = io.BytesIO()
                d.diff(own, out)
                if f"mine/{n}-{i}".encode() not in out.getvalue():
                    errors.append(f"{prefix}{n}: diff of {own} misses its file")
                d.remove(own)
        hold(d)
    except BaseException:  # noqa: BLE001 - reported by the test
        errors.append(f"{prefix}{n}: {traceback.format_exc()}")


def _child(home: pathlib.Path, backend: str, threads_here: int, index: int, held_w: int, release_r: int,
           result_w: int) -> None:
    """A process with ``threads_here`` threads; reports 'held' and waits to be released."""
    errors: list[str] = []
    try:
        shared = aufs.Driver(home, backend=backend)
        held = threading.Semaphore(0)
        go = threading.Event()

        def hold(d: aufs.Driver) -> None:
            d.get("s0")
            held.release()
            go.wait()
            d.put("s0")

        threads = [threading.Thread(target=_worker, args=(home, backend, n, f"p{index}", shared, errors, hold))
                   for n in range(threads_here)]
        for t in threads:
            t.start()
        for _ in threads:
            held.acquire()
        os.write(held_w, b"h")
        os.read(release_r, 1)
        go.set()
        for t in threads:
            t.join()
    except BaseException:  # noqa: BLE001
        errors.append(traceback.format_exc())
    finally:
        os.write(result_w, "\n".join(errors).encode()[:60000] or b"ok")
        os._exit(0)


def test_256_threads_and_4_processes_on_one_store(ramdir: pathlib.Path) -> None:
    run_load(ramdir, "overlay", THREADS, PROCESSES, THREADS_PER_PROCESS)


@pytest.mark.skipif(BACKENDS["fuse-overlayfs"].unavailable_reason() is not None, reason="no fuse-overlayfs")
def test_the_same_load_on_fuse_overlayfs(ramdir: pathlib.Path) -> None:
    run_load(ramdir, "fuse-overlayfs", *FUSE_LOAD)


def run_load(ramdir: pathlib.Path, backend: str, threads_main: int, processes: int, threads_child: int) -> None:
    """``threads_main`` threads here and ``processes`` x ``threads_child`` threads in children."""
    home = ramdir / "store"
    setup = aufs.Driver(home, backend=backend)
    setup.create("s0")
    setup.apply_diff("s0", build_tar([("dir", "etc"), ("file", "etc/os-release", b"ID=shared\n")]))
    setup.create("s1", parent="s0")
    setup.apply_diff("s1", build_tar([("dir", "app"), ("file", "app/x", b"x")]))

    children = []
    sys.stdout.flush()
    sys.stderr.flush()
    for index in range(processes):  # forked before any thread of this process starts
        held_r, held_w = os.pipe()
        release_r, release_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _child(home, backend, threads_child, index, held_w, release_r, result_w)
        for fd in (held_w, release_r, result_w):
            os.close(fd)
        children.append((pid, held_r, release_w, result_r))

    errors: list[str] = []
    held = threading.Semaphore(0)
    go = threading.Event()

    def hold(d: aufs.Driver) -> None:
        d.get("s0")
        held.release()
        go.wait()
        d.put("s0")

    shared = aufs.Driver(home, backend=backend)
    start = time.monotonic()
    threads = [threading.Thread(target=_worker, args=(home, backend, n, "m", shared, errors, hold))
               for n in range(threads_main)]
    for t in threads:
        t.start()
    try:
        for _ in threads:
            assert held.acquire(timeout=300), f"threads did not all reach the hold: {errors[:3]}"
        for _, held_r, _, _ in children:
            assert os.read(held_r, 1) == b"h"
        # every holder now holds s0: one mount, exactly one reference per thread (320 with the
        # default load, across 4 + 65 Drivers)
        target = str(Path(setup.layout.mountpoint("s0")))
        assert _mount_count(target) == 1
        table = RefTable.load(Path(setup.layout.refs_file("s0")))
        assert table.total == threads_main + processes * threads_child
        assert not setup.is_mounted("s1")
    finally:
        go.set()
        for _, _, release_w, _ in children:
            os.write(release_w, b"r")
        for t in threads:
            t.join()
    for pid, held_r, release_w, result_r in children:
        _, status = os.waitpid(pid, 0)
        report = os.read(result_r, 65536).decode()
        for fd in (held_r, release_w, result_r):
            os.close(fd)
        assert status == 0
        if report != "ok":
            errors.append(report)
    elapsed = time.monotonic() - start
    assert errors == [], "\n".join(errors[:5])
    assert mounts_below(home) == []
    assert [n for n in os.listdir(home / "state") if ".refs" in n] == []
    assert setup.layers() == ["s0", "s1"]
    assert setup.check().clean, str(setup.check())
    print(f"{backend}: {threads_main + processes * threads_child} workers, {elapsed:.1f}s")
