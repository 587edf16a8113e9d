"""Shared setup of the long-running reliability tools: a private mount namespace and a tmpfs.

The tools reuse the harnesses of tests/reliability (crash injection, fuzzing, load), so they
put the project root on ``sys.path``; run them as ``python3 tools/NAME.py`` from anywhere.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pathlib
import sys
import tempfile
import uuid
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000


def private_namespace() -> None:
    """Move this process into a private mount namespace (as ``unshare -m --propagation private``)."""
    try:
        if os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt"):
            return  # already in one
    except OSError:
        pass  # cannot tell: a namespace of our own costs nothing
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot enter a private mount namespace: {os.strerror(err)}")


@contextlib.contextmanager
def ram_dir(size: str = "2g") -> Iterator[pathlib.Path]:
    """A fresh tmpfs (removed afterwards), in the private namespace."""
    from aufs import mounts

    private_namespace()
    path = pathlib.Path(tempfile.gettempdir()) / f"aufs-reliability-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    mounts.mount("tmpfs", path, "tmpfs", data=f"size={size},mode=0755")
    try:
        yield path
    finally:
        mounts.unmount(path, lazy=True)
        path.rmdir()
