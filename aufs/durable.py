"""Files that survive a crash whole: written under a temporary name, synced, renamed into place.

The image records and the containerd snapshot records are small files each change rewrites;
a reader (or a process that opens the store after a power cut) sees the old file or the new
one, never a torn one.
"""
from __future__ import annotations

import contextlib
import os

__all__ = ["fsync_directory", "replace_file"]


def fsync_directory(path: str) -> None:
    """Make the entries of the directory ``path`` (a rename, an unlink) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, temporary: str, *, mode: int = 0o600) -> None:
    """Put ``data`` at ``path`` durably through ``temporary`` (same directory): write, fsync,
    rename, fsync the directory. On any error the temporary is gone and ``path`` unchanged."""
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(os.path.dirname(path) or ".")
