"""`aufs serve containerd` as a process and `aufs.serve_containerd` as a call: the socket's
safety (mode, group, ownership, takeover), signals, the store lock, --debug, the Python API.
"""
from __future__ import annotations

import errno
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import grpc
import pytest

import aufs
from aufs import Driver

from .engines import REPO, SnapshotServer, accepts
from .helpers import Client

NOBODY = 65534


def connect_as(uid: int, gid: int, path: pathlib.Path) -> int:
    """errno of connecting to ``path`` from a child running as uid/gid (0: connected)."""
    code = (
        "import os, socket, sys\n"
        f"os.setgroups([]); os.setgid({gid}); os.setuid({uid})\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(path)!r}); print(0)\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout)


def serve(home: pathlib.Path, sock: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """Run the server to completion (for the cases where it must refuse to start)."""
    return subprocess.run([sys.executable, "-m", "aufs", "--home", str(home), "--backend", "overlay",
                           "serve", "containerd", "--socket", str(sock), *extra],
                          check=False, capture_output=True, text=True, timeout=60, cwd=str(REPO),
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_socket_is_0600_in_made_parents_and_goes_away_on_sigterm(ramdir: pathlib.Path) -> None:
    sock = ramdir / "a" / "b" / "snapshots.sock"
    server = SnapshotServer(ramdir / "store", sock, ramdir / "log").start()
    try:
        st = sock.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert connect_as(NOBODY, NOBODY, sock) == errno.EACCES  # root-equivalent: root only
        client = Client(str(sock))
        client.prepare("k")
        client.close()
    finally:
        assert server.stop() == 0
    assert not sock.exists()


def test_sigint_stops_cleanly_too(ramdir: pathlib.Path) -> None:
    sock = ramdir / "s.sock"
    server = SnapshotServer(ramdir / "store", sock, ramdir / "log").start()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGINT)
    assert server.stop() == 0
    assert not sock.exists()


def test_group_option_makes_the_socket_0660_for_that_group(ramdir: pathlib.Path) -> None:
    sock = ramdir / "s.sock"
    proc = subprocess.Popen([sys.executable, "-m", "aufs", "--home", str(ramdir / "store"), "--backend", "overlay",
                             "serve", "containerd", "--socket", str(sock), "--group", "nogroup"],
                            cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not accepts(sock):  # the server chmods before it listens
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        st = sock.lstat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == NOBODY
        assert connect_as(NOBODY, NOBODY, sock) == 0
        assert connect_as(1234, 1234, sock) == errno.EACCES
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_refuses_a_path_another_user_owns(ramdir: pathlib.Path) -> None:
    taken = ramdir / "theirs.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(taken))
    listener.close()  # a dead socket: would be stale if it were ours
    os.chown(taken, NOBODY, NOBODY)
    result = serve(ramdir / "store", taken)
    assert result.returncode == 1 and "belongs to uid 65534" in result.stderr
    assert taken.lstat().st_uid == NOBODY  # untouched

    plain = ramdir / "plain-file"
    plain.write_text("data")
    result = serve(ramdir / "store", plain)
    assert result.returncode == 1 and "not a socket" in result.stderr
    assert plain.read_text() == "data"

    theirs = ramdir / "their-dir"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    result = serve(ramdir / "store", theirs / "s.sock")
    assert result.returncode == 1 and "belongs to uid 65534" in result.stderr
    assert not (theirs / "s.sock").exists()


def test_replaces_a_stale_socket_but_not_a_live_one(ramdir: pathlib.Path) -> None:
    sock = ramdir / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    first = SnapshotServer(ramdir / "store", sock, ramdir / "log").start()  # took over the stale one
    try:
        result = serve(ramdir / "other-store", sock)
        assert result.returncode == 1 and "listening on" in result.stderr
        Client(str(sock)).prepare("still-served")
    finally:
        assert first.stop() == 0


def test_one_server_per_store(ramdir: pathlib.Path) -> None:
    first = SnapshotServer(ramdir / "store", ramdir / "one.sock", ramdir / "log").start()
    try:
        result = serve(ramdir / "store", ramdir / "two.sock")
        assert result.returncode == 5 and "another snapshotter server" in result.stderr
        assert not (ramdir / "two.sock").exists()
    finally:
        assert first.stop() == 0


def test_debug_logs_one_line_per_request(ramdir: pathlib.Path) -> None:
    log = ramdir / "log"
    server = SnapshotServer(ramdir / "store", ramdir / "s.sock", log).start()
    try:
        client = Client(str(server.socket))
        client.prepare("k1")
        client.commit("c1", "k1")
        with pytest.raises(grpc.RpcError):
            client.stat("missing")
        client.close()
    finally:
        assert server.stop() == 0
    lines = log.read_text().splitlines()
    requests = [line for line in lines if "->" in line]
    assert len(requests) == 3
    assert "Prepare key='k1'" in requests[0] and "-> OK" in requests[0]
    assert "Commit name='c1' key='k1'" in requests[1]
    assert "Stat key='missing'" in requests[2] and "NOT_FOUND" in requests[2]


def test_store_with_aufs_whiteouts_is_refused(ramdir: pathlib.Path) -> None:
    from aufs.backends import BACKENDS

    reason = BACKENDS["fuse-overlayfs"].unavailable_reason()
    if reason is not None:
        pytest.skip(f"a store with AUFS whiteouts needs fuse-overlayfs here: {reason}")
    Driver(ramdir / "store", backend="fuse-overlayfs")
    result = subprocess.run([sys.executable, "-m", "aufs", "--home", str(ramdir / "store"), "serve", "containerd",
                             "--socket", str(ramdir / "s.sock")], check=False, capture_output=True, text=True, timeout=60,
                            cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 8 and "overlay backend" in result.stderr
    assert not (ramdir / "s.sock").exists()


def test_python_api_serves_until_stopped(ramdir: pathlib.Path) -> None:
    driver = Driver(ramdir / "store", backend="overlay")
    stop = threading.Event()
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            aufs.serve_containerd(driver, ramdir / "api.sock", stop=stop, ready=lambda server: ready.set())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert ready.wait(30) and not errors, errors
        client = Client(str(ramdir / "api.sock"))
        client.prepare("from-python")
        assert [i.name for i in client.walk()] == ["from-python"]
        client.close()
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and not errors
    assert not (ramdir / "api.sock").exists()
    # the records outlive the server
    from aufs.serve.snapshotter import Snapshotter

    with Snapshotter(driver) as reopened:
        assert reopened.stat("from-python").kind == "active"
