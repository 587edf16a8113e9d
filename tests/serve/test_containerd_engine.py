"""Real containerd on the store: `aufs serve containerd` as its proxy snapshotter, driven with ctr.

Each test starts its own containerd (private config: root, state and sockets under the test's
tmpfs directory, the CRI plugin off) and its own snapshotter server, inside the session's
private mount namespace; the finalizers stop both. The image is built here from Debian's
static busybox (tests/serve/images.py) and packed by skopeo (OCI archive, docker-archive).
"""
from __future__ import annotations

import io
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator

import pytest

from aufs import Driver

from . import images
from .engines import PLUGIN, REPO, Containerd, SnapshotServer

for _tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "skopeo"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} is not installed (scripts/bootstrap installs containerd, runc and skopeo)",
                    allow_module_level=True)

IMAGE = "docker.io/aufs/busybox:oci"


class Rig:
    """One containerd, one snapshotter server, one store, one imported image."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        self.home = base / "store"
        self.socket = base / "run" / "aufs" / "snapshots.sock"
        self.server = SnapshotServer(self.home, self.socket, base / "aufs-serve.log")
        self.containerd = Containerd(base / "containerd", self.socket)

    def ctr(self, *args: str, **kwargs: object) -> str:
        return str(self.containerd.ctr(*args, **kwargs).stdout)  # type: ignore[arg-type]

    def import_image(self, archive: pathlib.Path) -> str:
        return self.ctr("images", "import", "--snapshotter", PLUGIN, str(archive))

    def run(self, container: str, *argv: str, rm: bool = True) -> str:
        flags = ["--rm"] if rm else []
        return self.ctr("run", *flags, "--snapshotter", PLUGIN, IMAGE, container, *argv)

    def snapshots(self) -> dict[str, str]:
        """key -> kind, as `ctr snapshots ls` shows them."""
        lines = self.ctr("snapshots", "--snapshotter", PLUGIN, "ls").splitlines()[1:]
        return {line.split()[0]: line.split()[-1] for line in lines}

    def wait_until_served(self, timeout: float = 60.0) -> None:
        """Wait for containerd to reach the snapshotter again after it died: containerd's gRPC
        client fails calls fast ("unavailable") until its reconnect backoff (1 s, growing) ends."""
        deadline = time.monotonic() + timeout
        while True:
            listed = self.containerd.ctr("snapshots", "--snapshotter", PLUGIN, "ls", check=False)
            if listed.returncode == 0:
                return
            assert "unavailable" in listed.stderr, listed.stderr
            assert time.monotonic() < deadline, f"containerd did not reconnect in {timeout}s: {listed.stderr}"
            time.sleep(0.1)

    def layers(self) -> list[str]:
        """The store's layers, read by a separate Driver (as `aufs ls` would)."""
        return sorted(Driver(self.home, backend="overlay").layers())


@pytest.fixture
def rig(ramdir: pathlib.Path) -> Iterator[Rig]:
    (ramdir / "containerd").mkdir()
    r = Rig(ramdir)
    r.server.start()
    r.containerd.start()
    try:
        yield r
    finally:
        try:
            r.containerd.stop()
        finally:
            r.server.stop()
            Driver(r.home, backend="overlay").cleanup()


@pytest.fixture
def oci_archive(ramdir: pathlib.Path) -> pathlib.Path:
    work = ramdir / "image"
    work.mkdir()
    return images.oci_archive(work, IMAGE)


def test_import_oci_archive_and_run_prints_a_file_of_the_image(rig: Rig, oci_archive: pathlib.Path) -> None:
    assert "unpacking" in rig.import_image(oci_archive)
    assert rig.run("reader", "/bin/cat", "/etc/greeting") == images.GREETING.decode()
    listing = rig.run("lister", "/bin/ls", "/etc").split()
    assert "base-only" in listing and "obsolete" not in listing  # the top layer's whiteout holds
    kinds = rig.snapshots()
    assert sorted(kinds.values()) == ["Committed", "Committed"]
    # the committed layers are ordinary layers of the store: check finds nothing to repair.
    # containerd removes a `run --rm` container's snapshot from the store in its garbage
    # collection, after `ctr run` returns (its own list drops it at once): wait for that
    driver = Driver(rig.home, backend="overlay")
    deadline = time.monotonic() + 60
    while len(driver.layers()) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(driver.layers()) == 2, driver.layers()
    report = driver.check()
    assert report.clean, report
    (top,) = [i for i in driver.layers() if driver.parent(i) is not None]
    assert {(c.path, c.kind.name) for c in driver.changes(top)} >= {("/etc/obsolete", "DELETE")}
    cli = subprocess.run([sys.executable, "-m", "aufs", "--home", str(rig.home), "changes", top],
                         capture_output=True, text=True, check=True, cwd=str(REPO))
    assert "D /etc/obsolete" in cli.stdout and "A /etc/greeting" in cli.stdout
    # `aufs check --repair` never breaks containerd's view: it finds nothing, containers still run
    assert Driver(rig.home, backend="overlay").check(repair=True).clean
    assert rig.run("after-check", "/bin/cat", "/etc/greeting") == images.GREETING.decode()


def test_import_docker_archive_made_by_skopeo(rig: Rig, ramdir: pathlib.Path) -> None:
    work = ramdir / "image"
    work.mkdir()
    name = "docker.io/aufs/busybox:docker"
    rig.import_image(images.docker_archive(work, name))
    out = rig.ctr("run", "--rm", "--snapshotter", PLUGIN, name, "reader", "/bin/cat", "/etc/greeting")
    assert out == images.GREETING.decode()


def test_container_writes_and_deletes_then_snapshot_commands(rig: Rig, oci_archive: pathlib.Path) -> None:
    rig.import_image(oci_archive)
    rig.run("writer", "/bin/sh", "-c", "echo fresh > /etc/new-file && rm /etc/base-only", rm=False)
    assert rig.snapshots()["writer"] == "Active"

    diff = rig.containerd.ctr("snapshots", "--snapshotter", PLUGIN, "diff", "--media-type",
                              "application/vnd.oci.image.layer.v1.tar", "writer", text=False).stdout
    with tarfile.open(fileobj=io.BytesIO(diff)) as tar:
        names = set(tar.getnames())
        new_file = tar.extractfile("etc/new-file")
        assert new_file is not None and new_file.read() == b"fresh\n"
    assert "etc/.wh.base-only" in names

    usage = rig.ctr("snapshots", "--snapshotter", PLUGIN, "usage", "-b", "writer").splitlines()[1].split()
    assert usage[0] == "writer" and int(usage[1]) > 0 and int(usage[2]) >= 3  # root, etc, the file (+ whiteout)

    rig.ctr("snapshots", "--snapshotter", PLUGIN, "label", "writer", "aufs.test/owner=pytest")
    info = rig.ctr("snapshots", "--snapshotter", PLUGIN, "info", "writer")
    assert '"aufs.test/owner": "pytest"' in info and '"Kind": "Active"' in info


def test_server_restarted_in_the_middle(rig: Rig, oci_archive: pathlib.Path) -> None:
    rig.import_image(oci_archive)
    rig.ctr("containers", "create", "--snapshotter", PLUGIN, IMAGE, "early", "/bin/cat", "/etc/greeting")
    before = rig.snapshots()
    assert rig.server.stop() == 0
    assert not rig.socket.exists()
    rig.server.start()
    assert rig.snapshots() == before
    assert rig.run("after", "/bin/cat", "/etc/greeting") == images.GREETING.decode()
    started = rig.ctr("tasks", "start", "early")  # a container made before the restart runs too
    assert started == images.GREETING.decode()


def test_containerd_restarted_finds_every_snapshot(rig: Rig, oci_archive: pathlib.Path) -> None:
    rig.import_image(oci_archive)
    rig.ctr("containers", "create", "--snapshotter", PLUGIN, IMAGE, "made-before", "/bin/cat", "/etc/greeting")
    before = rig.snapshots()
    rig.containerd.restart()
    assert rig.snapshots() == before
    assert rig.ctr("tasks", "start", "made-before") == images.GREETING.decode()
    assert rig.run("made-after", "/bin/cat", "/etc/greeting") == images.GREETING.decode()


def test_killed_server_restarted_loses_nothing(rig: Rig, oci_archive: pathlib.Path) -> None:
    rig.import_image(oci_archive)
    rig.run("keeper", "/bin/sh", "-c", "echo kept > /kept", rm=False)
    before = rig.snapshots()
    layers = rig.layers()
    rig.server.kill()
    assert rig.socket.is_socket()  # SIGKILL left the socket file; the next server replaces it
    rig.server.start()
    rig.wait_until_served()
    assert rig.snapshots() == before and rig.layers() == layers
    diff = rig.containerd.ctr("snapshots", "--snapshotter", PLUGIN, "diff", "--media-type",
                              "application/vnd.oci.image.layer.v1.tar", "keeper", text=False).stdout
    with tarfile.open(fileobj=io.BytesIO(diff)) as tar:
        kept = tar.extractfile("kept")
        assert kept is not None and kept.read() == b"kept\n"
    assert rig.run("after", "/bin/cat", "/etc/greeting") == images.GREETING.decode()


def test_two_containers_at_once(rig: Rig, oci_archive: pathlib.Path) -> None:
    rig.import_image(oci_archive)
    for name in ("one", "two"):
        rig.ctr("run", "-d", "--snapshotter", PLUGIN, IMAGE, name,
                "/bin/sh", "-c", f"echo {name} > /tmp/who && exec sleep 600")
    for name in ("one", "two"):
        for _ in range(200):  # the shell writes /tmp/who right after it starts
            out = rig.containerd.ctr("tasks", "exec", "--exec-id", f"cat-{name}", name, "/bin/cat", "/tmp/who",
                                     check=False)
            if out.returncode == 0:
                break
        assert out.stdout == f"{name}\n"
    tasks = rig.ctr("tasks", "ls")
    assert tasks.count("RUNNING") == 2
    # containerd's own mounts of the active snapshots are nothing `check --repair` touches
    assert Driver(rig.home, backend="overlay").check(repair=True).clean
    assert rig.ctr("tasks", "exec", "--exec-id", "again", "one", "/bin/cat", "/tmp/who") == "one\n"
    assert sum(kind == "Active" for kind in rig.snapshots().values()) == 2
    rig.containerd.remove_everything()
    assert sum(kind == "Active" for kind in rig.snapshots().values()) == 0


def test_garbage_collection_leaves_the_store_empty(rig: Rig, oci_archive: pathlib.Path) -> None:
    rig.import_image(oci_archive)
    rig.run("c1", "/bin/true", rm=False)
    assert len(rig.layers()) == 3
    rig.ctr("containers", "delete", "c1")
    rig.ctr("images", "rm", "--sync", IMAGE)
    assert rig.snapshots() == {}
    assert rig.layers() == []
    assert list((rig.home / "snapshotter" / "snapshots").iterdir()) == []
