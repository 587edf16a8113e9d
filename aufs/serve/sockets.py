"""The unix sockets the servers listen on: root-equivalent, so claimed only when safe.

One place decides whether a socket path may be used (both servers call it): the directory
must belong to this user or root and, unless sticky like /tmp, be writable by nobody else (or
another user could swap the socket); the path itself must be absent, or a socket of ours that
no server answers on (a killed server's, which is removed). Anything else raises
:class:`SocketRefused` and is left untouched.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
from typing import TYPE_CHECKING

from ..errors import AufsError, BackendUnavailable

if TYPE_CHECKING:
    from ..store import Driver

__all__ = ["SocketRefused", "claim_socket_path"]


class SocketRefused(AufsError, PermissionError):
    """The socket path cannot be used safely: another user's, not a socket, in a directory
    others may write, or a live server's."""


def claim_socket_path(path: str, *, make_parents: bool = False) -> None:
    """Make ``path`` ready for ``bind``, or raise :class:`SocketRefused` saying why not.

    ``make_parents`` creates missing directories (0755); otherwise a missing directory is
    refused. A stale socket of this user's is removed; nothing else is ever changed.
    """
    directory = os.path.dirname(path) or "."
    if make_parents:
        os.makedirs(directory, 0o755, exist_ok=True)
    me = os.geteuid()
    try:
        dir_st = os.stat(directory)
    except FileNotFoundError:
        raise SocketRefused(f"cannot serve on {path}: the directory {directory} does not exist", path=path) from None
    if dir_st.st_uid not in (me, 0):
        raise SocketRefused(f"cannot serve on {path}: {directory} belongs to uid {dir_st.st_uid}, "
                            "who could replace the socket", path=path)
    if dir_st.st_mode & 0o022 and not dir_st.st_mode & stat.S_ISVTX:
        raise SocketRefused(f"cannot serve on {path}: {directory} may be written by other users "
                            f"(mode {oct(dir_st.st_mode & 0o7777)}); use a directory only root can write", path=path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_uid != me:
        raise SocketRefused(f"cannot serve on {path}: it belongs to uid {st.st_uid}, not to this user", path=path)
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketRefused(f"cannot serve on {path}: it exists and is not a socket", path=path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
    else:
        raise SocketRefused(f"cannot serve on {path}: another server is listening on it", path=path)
    finally:
        probe.close()
    os.unlink(path)  # stale: left by a server that was killed


def require_servable(driver: "Driver", engine: str) -> None:
    """Refuse a store an engine cannot use: a userns store's layers belong to ids of its own user
    namespace and its mounts live there, where the engine does not run."""
    if driver.rootless_kind == "userns":
        raise BackendUnavailable(f"{engine} cannot use the userns store {driver.home}: its files belong to ids "
                                 "of the store's user namespace and its mounts live there; serve a root store")
