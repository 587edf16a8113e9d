"""Fixtures for the rootless tests: the unprivileged ``test_user`` with /dev/fuse as stock Debian ships it.

This machine's /dev/fuse may be 0600 (root only). Debian makes it 0666, so ordinary users can
mount FUSE filesystems: :func:`user_fuse` shows such a device at /dev/fuse for this test's
private mount namespace only (a 0666 node on a tmpfs of our own, bound over the device), and
takes it away again afterwards. The host's device is never changed.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from ..users import User

FUSE = "/dev/fuse"


@pytest.fixture
def user_fuse() -> Iterator[None]:
    """/dev/fuse readable and writable by everyone, in this test's mount namespace."""
    yield from _fuse_device(0o666)


@pytest.fixture
def root_only_fuse() -> Iterator[None]:
    """/dev/fuse for root only (0600), as some distributions ship it, in this test's namespace."""
    yield from _fuse_device(0o600)


def _fuse_device(mode: int) -> Iterator[None]:
    if not os.path.exists(FUSE):
        pytest.skip("/dev/fuse is missing on this machine")
    st = os.stat(FUSE)
    holder = tempfile.mkdtemp(prefix="aufs-fuse-dev-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=64k", "tmpfs", holder], check=True)
    try:
        node = os.path.join(holder, "fuse")
        os.mknod(node, mode | (st.st_mode & 0o170000), st.st_rdev)
        os.chmod(node, mode)
        subprocess.run(["mount", "--bind", node, FUSE], check=True)
        try:
            yield
        finally:
            # lazily: a daemon a failed test left may still hold the device open
            subprocess.run(["umount", "-l", FUSE], check=True)
    finally:
        subprocess.run(["umount", "-l", holder], check=True)
        os.rmdir(holder)


@pytest.fixture
def user_dir(ramdir: pathlib.Path, test_user: User) -> pathlib.Path:
    """A directory on the test tmpfs that ``test_user`` owns (their store goes below it)."""
    os.chmod(ramdir, 0o755)
    path = ramdir / "user"
    path.mkdir()
    os.chown(path, test_user.uid, test_user.gid)
    return path


def user_processes(user: User, name: str) -> list[str]:
    """``user``'s live processes called ``name`` (``PID STAT``), e.g. leftover daemons.

    Zombies do not count: a daemon whose parent (a CLI run) exited before it is reaped by init,
    a moment later; it holds nothing any more.
    """
    proc = subprocess.run(["ps", "-u", str(user.uid), "-o", "pid=,stat=,comm="], capture_output=True, text=True)
    return [f"{pid} {state}" for pid, state, comm in (line.split(None, 2) for line in proc.stdout.splitlines())
            if comm.strip() == name and not state.startswith("Z")]


def user_popen(user: User, code: str, *args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    """Start the Python ``code`` as ``user`` in a session of its own (so a test can Ctrl-C it
    with ``os.killpg``, as a terminal would), stdout piped."""
    if not user._python:
        pytest.skip(f"no Python interpreter that user {user.name} may run with aufs importable")
    env = user.env({"PYTHONPATH": user._pythonpath, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    argv = ["runuser", "-u", user.name, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
            *user._python, "-c", code, *args]
    return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
