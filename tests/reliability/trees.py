"""Snapshots of directory trees and stores, and layer tars built from a description.

Shared by the reliability tests and the long-running tools in ``tools/``: a snapshot is a plain
dict, so two can be compared with ``==`` and the first difference shown with :func:`first_diff`.
"""
from __future__ import annotations

import hashlib
import io
import os
import signal
import stat
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from typing import Any

from aufs import mounts
from aufs.whiteouts import OPAQUE_XATTRS, is_private_xattr

Tree = dict[str, tuple[Any, ...]]


def snapshot(root: str | os.PathLike[str], *, times: bool = True, skip: Iterable[str] = ()) -> Tree:
    """Every entry below ``root`` (root itself as ``"."``) -> what identifies its state.

    Kind, mode, owner, link count, size, content digest, symlink target, device number,
    xattrs, and (with ``times``) the mtime of non-directories. Directory mtimes are left out:
    mounting a union may touch them; so are the union's private xattrs (overlayfs stamps an
    upper directory with a fresh ``trusted.overlay.uuid`` at every mount), opaque flags kept.
    Entries named in ``skip`` (relative paths) are recorded but not descended into or read.
    """
    skipped = set(skip)
    root = os.fspath(root)
    out: Tree = {}

    def visit(path: str, rel: str) -> None:
        st = os.lstat(path)
        try:
            xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                  for n in os.listxattr(path, follow_symlinks=False)
                                  if n in OPAQUE_XATTRS or not is_private_xattr(n)))
        except OSError:
            xattrs = ()
        base = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs)
        if rel in skipped:
            out[rel] = ("skipped",)
            return
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir",) + base
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name), name if rel == "." else f"{rel}/{name}")
            return
        mtime = st.st_mtime_ns if times else 0
        if stat.S_ISREG(st.st_mode):
            digest = _digest(path)
            out[rel] = ("file",) + base + (st.st_nlink, st.st_size, digest, mtime)
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink",) + base + (os.readlink(path),)
        else:
            out[rel] = ("special",) + base + (st.st_rdev, st.st_nlink)

    visit(root, ".")
    return out


def _digest(path: str, limit: int = 8 << 20) -> str:
    """sha256 of the content (of its first ``limit`` bytes: a fuzzed sparse file may claim TBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while limit > 0:
            chunk = f.read(min(1 << 20, limit))
            if not chunk:
                break
            h.update(chunk)
            limit -= len(chunk)
    return h.hexdigest()


def first_diff(a: Tree, b: Tree) -> str | None:
    """A line naming the first entry where two snapshots differ, or None if equal."""
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} != {b.get(key)!r}"
    return None


def store_state(home: str | os.PathLike[str]) -> dict[str, Any]:
    """Every layer of the store at ``home`` (read from disk, no Driver) -> (layer.json, diff tree)."""
    import json

    layers_dir = os.path.join(os.fspath(home), "layers")
    state: dict[str, Any] = {}
    for name in sorted(os.listdir(layers_dir)) if os.path.isdir(layers_dir) else []:
        layer = os.path.join(layers_dir, name)
        try:
            with open(os.path.join(layer, "layer.json"), "rb") as f:
                meta = json.load(f)
        except (OSError, ValueError) as exc:
            meta = f"unreadable: {exc}"
        diff = os.path.join(layer, "diff")
        # whiteouts are created at apply time: their mtimes differ between two equal applies
        state[name] = (meta, snapshot(diff, times=False) if os.path.isdir(diff) else None)
    return state


def mounts_below(path: str | os.PathLike[str]) -> list[str]:
    """Mount points strictly below ``path`` (``path`` itself excluded), one per mount."""
    top = os.path.abspath(os.fspath(path))
    return [i.mountpoint for i in mounts.mount_table()
            if i.mountpoint != top and i.mountpoint.startswith(top.rstrip("/") + "/")]


# ----------------------------------------------------------------------------- building tars

Entry = tuple[Any, ...]


def build_tar(entries: Iterable[Entry], *, fmt: int = tarfile.PAX_FORMAT, mtime: int = 1_600_000_000) -> bytes:
    """A tar from ``(kind, name, ...)`` tuples.

    ``("dir", name[, mode])``, ``("file", name, data[, mode])``, ``("symlink", name, target)``,
    ``("hardlink", name, target)``, ``("fifo", name)``, ``("chardev", name, major, minor)``.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for entry in entries:
            kind, name = entry[0], entry[1]
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uid = info.gid = 0
            data: bytes | None = None
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = entry[2] if len(entry) > 2 else 0o755
            elif kind == "file":
                data = entry[2]
                info.size = len(data)
                info.mode = entry[3] if len(entry) > 3 else 0o644
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry[2]
                info.mode = 0o777
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = entry[2]
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                info.mode = 0o600
            elif kind == "chardev":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = entry[2], entry[3]
                info.mode = 0o600
            else:
                raise ValueError(f"unknown entry kind {kind!r}")
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=1, mtime=0)


def sample_layers() -> list[bytes]:
    """Three layer tars that build on each other: base, app (whiteout, links), app update (opaque)."""
    base = build_tar([
        ("dir", "etc"), ("file", "etc/os-release", b"ID=test\n"), ("file", "etc/passwd", b"root:x:0:0\n"),
        ("dir", "usr"), ("dir", "usr/bin"), ("file", "usr/bin/tool", b"#!/bin/sh\necho hi\n" * 50, 0o755),
        ("dir", "var"), ("dir", "var/cache"), ("file", "var/cache/a", b"a" * 5000), ("file", "var/cache/b", b"b"),
        ("symlink", "bin", "usr/bin"),
    ])
    app = build_tar([
        ("dir", "app"), ("file", "app/main.py", b"print('app')\n"), ("hardlink", "app/main-link.py", "app/main.py"),
        ("file", "etc/.wh.passwd", b""), ("dir", "etc"), ("file", "etc/app.conf", b"x=1\n"),
        ("symlink", "app/cfg", "../etc/app.conf"), ("file", "big", os.urandom(1) * 200_000),
    ])
    update = build_tar([
        ("file", "app/main.py", b"print('app v2')\n"), ("dir", "var"), ("dir", "var/cache"),
        ("file", "var/cache/.wh..wh..opq", b""), ("file", "var/cache/new", b"n"),
        ("file", "app/.wh.cfg", b""), ("dir", "app/data"), ("file", "app/data/blob", bytes(range(256)) * 40),
    ])
    return [base, app, update]


def fork_with_pipe(child: Callable[[int], object]) -> tuple[int, int]:
    """Fork; the child runs ``child(write_fd)`` (which must end in ``os._exit``), the parent gets
    ``(pid, read_fd)`` of the pipe the child reports through."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()  # nothing buffered may be written twice
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        child(write_fd)
        os._exit(3)  # the child function returned instead of exiting
    os.close(write_fd)
    return pid, read_fd


def wait_or_kill(pid: int, timeout: float, poll: float = 0.002) -> int | None:
    """Wait for the child ``pid``: its wait status, or None if it was still running after
    ``timeout`` seconds (it is then SIGKILLed and reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(poll)


def read_to_end(fd: int) -> bytes:
    """Everything a child wrote into the pipe ``fd`` (read until EOF), then close it."""
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data
