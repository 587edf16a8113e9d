"""Many threads on one Driver, and two processes on one store: no double mounts, no unmount
under another holder, no lost layers."""
from __future__ import annotations

from pathlib import Path
import os
import pathlib
import random
import subprocess
import sys
import textwrap
import threading

import aufs
from aufs import mounts
from aufs.store import Driver

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def _mount_count(path: pathlib.Path) -> int:
    return sum(1 for i in mounts.mount_table() if i.mountpoint == str(path))


def test_many_threads_get_put_create_remove(driver: Driver) -> None:
    driver.create("base")
    driver.create("shared", parent="base")
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            barrier.wait()
            for i in range(15):
                path = driver.get("shared")
                # while we hold a reference the mount must stay, whatever the others do
                with open(f"{path}/t{n}-{i}", "w") as f:
                    f.write("x")
                mine = f"w{n}-{i}"
                driver.create(mine, parent="shared" if rng.random() < 0.5 else "base")
                with driver.mount(mine) as p:
                    assert os.path.isdir(p)
                assert os.path.exists(f"{path}/t{n}-{i}")
                driver.put("shared")
                driver.remove(mine)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert driver.layers() == ["base", "shared"]
    assert not driver.is_mounted("shared")
    assert [i for i in mounts.submounts(driver.home)] == []
    assert len([n for n in os.listdir(Path(driver.diff_dir("shared"))) if n.startswith("t")]) == 8 * 15


def test_concurrent_creates_of_one_id_yield_one_layer(driver: Driver) -> None:
    results: list[str] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        barrier.wait()
        try:
            driver.create("contested")
            results.append("created")
        except aufs.LayerExists:
            results.append("exists")

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["created"] + ["exists"] * 5
    assert driver.layers() == ["contested"]


def test_two_processes_on_one_store(driver: Driver, home: pathlib.Path) -> None:
    driver.create("base")
    driver.create("shared", parent="base")
    code = """
        import os, sys
        from aufs.store import Driver
        d = Driver(sys.argv[1], backend=sys.argv[2])
        tag = sys.argv[3]
        for i in range(25):
            p = d.get("shared")
            open(os.path.join(p, tag + str(i)), "w").write(tag)
            d.create(tag + str(i), parent="shared")
            with d.mount(tag + str(i)) as q:
                assert os.path.exists(os.path.join(q, tag + str(i)))
            d.remove(tag + str(i))
            d.put("shared")
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(home), driver.backend, tag], env=env)
        for tag in ("p", "q")
    ]
    # meanwhile this process holds the shared mount part of the time: it must never vanish under us
    for _ in range(10):
        with driver.mount("shared") as path:
            assert _mount_count(Path(driver.layout.mountpoint("shared"))) == 1
            assert os.path.isdir(path)
    assert [p.wait() for p in procs] == [0, 0]
    assert driver.layers() == ["base", "shared"]
    assert not driver.is_mounted("shared")
    names = os.listdir(Path(driver.diff_dir("shared")))
    assert sorted(names) == sorted([f"p{i}" for i in range(25)] + [f"q{i}" for i in range(25)])
    assert mounts.submounts(home) == []
