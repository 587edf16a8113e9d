"""File locks that exclude both other processes and other threads of this process.

Each acquisition opens the lock file afresh and takes ``flock(LOCK_EX)`` on that open file
description, so two threads of one process exclude each other exactly as two processes do
(POSIX record locks would not: they belong to the process). The lock dies with its holder, so
a killed process never leaves a store locked.

A lock file may be unlinked by a holder (when its layer is removed). A waiter that then gets
the lock on the unlinked inode notices that the path now names another inode (or none) and
tries again, so two holders can never believe they hold "the" lock at once.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Union

from .errors import StoreLocked

__all__ = ["hold", "unlink_held"]

PathArg = Union[str, "os.PathLike[str]"]


def _acquire(path: str, timeout: float | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if deadline is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                _acquire_until(fd, path, deadline)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # the file was unlinked (or replaced) while we waited: take the new one


def _acquire_until(fd: int, path: str, deadline: float) -> None:
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StoreLocked(f"timed out waiting for the lock {path}", path=path) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


@contextlib.contextmanager
def hold(path: PathArg, *, timeout: float | None = None) -> Iterator[int]:
    """Hold the exclusive lock ``path`` (created if missing) for the ``with`` block.

    Yields the lock's file descriptor (for :func:`unlink_held`), or -1 without locking when
    the lock file's filesystem is read-only (nothing there can change). Blocks until the lock is free,
    or raises :class:`aufs.StoreLocked` after ``timeout`` seconds if one is given.
    """
    try:
        fd = _acquire(os.fspath(path), timeout)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        # a read-only filesystem: nobody can change what the lock guards, so readers need none
        yield -1
        return
    try:
        yield fd
    finally:
        os.close(fd)


def unlink_held(path: PathArg, fd: int) -> None:
    """Delete the lock file ``path`` while holding it as ``fd`` (waiters will retry on a new file)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return
    mine = os.fstat(fd)
    if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
        os.unlink(path)
