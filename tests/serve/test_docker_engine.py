"""A real dockerd (Debian's docker.io, 20.10) keeping its images and containers in the store.

One dockerd and one ``aufs serve docker`` for the module (see ``docker_engine.Engine``), in
the session's private mount namespace; the tests run in file order, the last one emptying the
store through dockerd. Every test removes the containers it started, so no mount outlives it.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import aufs
from aufs.mounts import submounts

from .docker_engine import (
    IMAGE,
    Engine,
    build_busybox_image,
    inspect,
    missing_tools,
    private_run_dirs,
)

_MISSING = missing_tools()
if _MISSING:
    print(f"tests/serve/test_docker_engine.py skipped: {_MISSING}")
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

RUN = ("run", "--network", "none")
# busybox as pid 1 ignores SIGTERM; this loop leaves within a second of `docker stop`
LOOP = 'trap "exit 0" TERM; while true; do sleep 1; done'


@pytest.fixture(scope="module")
def image_archive(ram_root: pathlib.Path) -> pathlib.Path:
    work = ram_root / "docker-image"
    work.mkdir()
    return build_busybox_image(work)


@pytest.fixture(scope="module")
def engine(ram_root: pathlib.Path, image_archive: pathlib.Path) -> Iterator[Engine]:
    with private_run_dirs():
        eng = Engine(ram_root / "docker-engine")
        try:
            eng.start()
            yield eng
        except BaseException:
            print(eng.logs())
            raise
        finally:
            eng.close()
    assert not submounts(str(ram_root / "docker-engine"))


@pytest.fixture(scope="module")
def store(engine: Engine) -> aufs.Driver:
    """The store as any other user of it sees it (a holder of its own)."""
    return aufs.Driver(engine.store_home)


@pytest.fixture(scope="module")
def loaded(engine: Engine, image_archive: pathlib.Path) -> str:
    out = engine.docker("load", "-i", str(image_archive)).stdout
    assert IMAGE in out
    return IMAGE


def _rm(engine: Engine, *names: str) -> None:
    engine.docker("rm", "-f", *names, check=False)


def _store_mounts(store: aufs.Driver) -> list[str]:
    return [m.mountpoint for m in submounts(os.path.realpath(store.home)) if m.mountpoint != os.path.realpath(store.home)]


def test_dockerd_runs_on_the_plugin(engine: Engine) -> None:
    info = engine.docker("info", "--format", "{{json .}}").stdout
    assert f'"Driver":"{engine.storage_driver}"' in info
    assert "Backend" in info  # our Status pairs, shown by docker info


def test_load_puts_image_layers_in_the_store(engine: Engine, store: aufs.Driver, loaded: str) -> None:
    layers = store.layers()
    assert len(layers) == 2  # the image's two layers, under dockerd's cache ids
    graph = inspect(engine, loaded)["GraphDriver"]  # GetMetadata of the image's top layer
    assert graph["Name"] == engine.storage_driver
    (top,) = [layer for layer in layers if store.diff_dir(layer) == graph["Data"]["DiffDir"]]
    assert pathlib.Path(store.diff_dir(top), "etc/second").read_text() == "layer two\n"
    assert store.parent(top) in layers
    # the store's own tools see them without disturbing dockerd
    ls = subprocess.run([sys.executable, "-m", "aufs", "--home", str(store.home), "--json", "ls"],
                        capture_output=True, text=True, check=True).stdout
    assert top in ls
    check = subprocess.run([sys.executable, "-m", "aufs", "--home", str(store.home), "check"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_run_cat(engine: Engine, store: aufs.Driver, loaded: str) -> None:
    out = engine.docker(*RUN, "--rm", loaded, "cat", "/etc/hello", "/etc/second").stdout
    assert out == "hello from the aufs store\nlayer two\n"
    assert _store_mounts(store) == []  # --rm: Put and Remove of the container's layers


def test_unsupported_options_reach_the_user(engine: Engine, store: aufs.Driver, loaded: str) -> None:
    layers = store.layers()
    run = engine.docker(*RUN, "--rm", "--storage-opt", "size=1G", loaded, "true", check=False)
    assert run.returncode != 0 and "storage options are not supported" in run.stderr
    assert store.layers() == layers  # dockerd's half-made container left nothing behind


def test_diff_commit_run_save_import(engine: Engine, store: aufs.Driver, loaded: str,
                                     ram_root: pathlib.Path) -> None:
    try:
        engine.docker(*RUN, "--name", "writer", loaded, "sh", "-c",
                      "echo written > /tmp/new && rm /etc/gone && mkdir /data && echo x > /data/y")
        # DiffSize of the container's layer: the bytes of /tmp/new and /data/y
        assert engine.docker("ps", "-a", "-s", "--filter", "name=writer", "--format", "{{.Size}}").stdout.startswith("10B")
        changes = set(engine.docker("diff", "writer").stdout.splitlines())
        assert {"A /tmp/new", "D /etc/gone", "A /data", "A /data/y", "C /etc", "C /tmp"} <= changes
        engine.docker("commit", "writer", "aufs-test/committed:1")
        out = engine.docker(*RUN, "--rm", "aufs-test/committed:1", "sh", "-c",
                            "cat /tmp/new /data/y; test -e /etc/gone || echo deleted").stdout
        assert out == "written\nx\ndeleted\n"

        saved = ram_root / "committed.tar"
        engine.docker("save", "-o", str(saved), "aufs-test/committed:1")
        fresh = aufs.Driver(ram_root / "reimported")
        try:
            ids = aufs.import_image(fresh, saved)  # verifies every digest and diffID
            assert len(ids) == 3
            with fresh.mount(ids[-1]) as root:
                assert pathlib.Path(root, "tmp/new").read_text() == "written\n"
                assert not os.path.lexists(pathlib.Path(root, "etc/gone"))
                assert pathlib.Path(root, "etc/hello").read_text() == "hello from the aufs store\n"
        finally:
            fresh.cleanup()
    finally:
        _rm(engine, "writer")
    assert _store_mounts(store) == []


def test_build_two_steps(engine: Engine, loaded: str, ram_root: pathlib.Path) -> None:
    context = ram_root / "build-context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {loaded}\n"
        "RUN echo one > /one\n"
        "RUN cat /one /etc/second > /two && rm /etc/gone\n")
    engine.docker("build", "--network", "none", "-t", "aufs-test/built:1", str(context))
    out = engine.docker(*RUN, "--rm", "aufs-test/built:1", "sh", "-c", "cat /two; ls /etc").stdout
    assert out.startswith("one\nlayer two\n") and "gone" not in out
    history = engine.docker("history", "-q", "aufs-test/built:1").stdout.split()
    assert len(history) >= 3


def test_three_containers_at_once(engine: Engine, store: aufs.Driver, loaded: str) -> None:
    names = [f"trio{i}" for i in range(3)]
    try:
        for name in names:
            engine.docker(*RUN, "-d", "--name", name, loaded, "sh", "-c", f"echo {name} > /me; {LOOP}")
        for name in names:
            deadline = time.monotonic() + 30
            while engine.docker("exec", name, "cat", "/me", check=False).stdout != f"{name}\n":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            engine.docker("exec", name, "sh", "-c", "echo mine > /tmp/private")
        diff_dirs = [inspect(engine, n)["GraphDriver"]["Data"]["DiffDir"] for n in names]
        assert len(set(diff_dirs)) == 3
        for name, diff_dir in zip(names, diff_dirs):  # each container's writes land in its own layer
            assert pathlib.Path(diff_dir, "me").read_text() == f"{name}\n"
            assert engine.docker("exec", name, "cat", "/me").stdout == f"{name}\n"
        assert len(_store_mounts(store)) == 3
        # the store's own checker sees dockerd's mounts as wanted, and changes nothing
        check = subprocess.run([sys.executable, "-m", "aufs", "--home", str(store.home), "check", "--repair"],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert len(_store_mounts(store)) == 3
        for name in names:
            assert engine.docker("exec", name, "cat", "/tmp/private").stdout == "mine\n"
    finally:
        _rm(engine, *names)
    assert _store_mounts(store) == []


def test_dockerd_restart_with_running_and_stopped_containers(engine: Engine, store: aufs.Driver,
                                                              loaded: str) -> None:
    try:
        engine.docker(*RUN, "-d", "--restart", "always", "--name", "runner", loaded,
                      "sh", "-c", f"date >> /tmp/starts; {LOOP}")
        engine.docker(*RUN, "--name", "stopped", loaded, "sh", "-c", "echo kept > /tmp/kept")
        before = store.layers()
        engine.stop_dockerd()
        # dockerd stopped its containers and gave every mount back
        assert _store_mounts(store) == []
        engine.start_dockerd()
        assert store.layers() == before
        deadline = time.monotonic() + 60
        while inspect(engine, "runner")["State"]["Running"] is not True:
            assert time.monotonic() < deadline, engine.logs()
            time.sleep(0.2)
        assert len(engine.docker("exec", "runner", "cat", "/tmp/starts").stdout.splitlines()) == 2
        assert "A /tmp/kept" in engine.docker("diff", "stopped").stdout
        engine.docker("start", "-a", "stopped")  # runs again on its own layer after the restart
        assert "kept" in engine.docker("cp", "stopped:/tmp/kept", "-").stdout
    finally:
        _rm(engine, "runner", "stopped")
    assert _store_mounts(store) == []


def test_killed_plugin_restarted_loses_nothing(engine: Engine, store: aufs.Driver, loaded: str) -> None:
    try:
        engine.docker(*RUN, "-d", "--name", "survivor", loaded, "sh", "-c", f"echo alive > /tmp/a; {LOOP}")
        root_dir = inspect(engine, "survivor")["GraphDriver"]["Data"]["DiffDir"]
        layer = root_dir.split("/")[-2]
        layers = store.layers()
        assert engine.stop_plugin(kill=True) == -9
        # the container keeps its root while no server answers
        (root,) = [m for m in _store_mounts(store) if m.endswith("/" + layer)]
        assert pathlib.Path(root, "tmp/a").read_text() == "alive\n"
        engine.start_plugin()
        assert engine.docker("exec", "survivor", "cat", "/tmp/a").stdout == "alive\n"
        assert store.layers() == layers
        assert store.is_mounted(layer)
        engine.docker("stop", "survivor")
        # the Put reached the new server, which unmounted what the killed one mounted
        assert not store.is_mounted(layer)
        engine.docker("start", "survivor")
        assert engine.docker("exec", "survivor", "cat", "/tmp/a").stdout == "alive\n"
        engine.docker("rm", "-f", "survivor")
        assert not store.exists(layer)
        assert engine.docker(*RUN, "--rm", loaded, "cat", "/etc/second").stdout == "layer two\n"
    finally:
        _rm(engine, "survivor")
    assert _store_mounts(store) == []


def test_rm_and_rmi_leave_the_store_empty(engine: Engine, store: aufs.Driver, loaded: str) -> None:
    containers = engine.docker("ps", "-aq").stdout.split()
    if containers:
        engine.docker("rm", "-f", *containers)
    images = engine.images()
    assert images
    engine.docker("rmi", "-f", *images)
    engine.docker("builder", "prune", "-f", check=False)
    assert engine.images() == []
    assert store.layers() == []
    assert _store_mounts(store) == []
