"""What the running kernel offers, found out in one place; the rest of aufs asks here.

* :func:`features`: the syscalls and filesystems aufs uses, probed once per process by the C
  core (:func:`aufs._syscalls.probe_features`), with ``/proc/filesystems`` as the fallback
  where the probe cannot ask;
* :func:`filesystems`: the filesystem types listed in ``/proc/filesystems`` (read each time:
  loading a module adds one);
* :func:`page_size`: the most mount data mount(2) copies (terminating NUL included), as the C
  core's own mount wrapper counts it;
* :func:`lowerdir_plus` / :func:`fsconfig_takes`: whether overlayfs can take each layer of a
  chain as its own ``lowerdir+`` parameter, or needs them all in one page of mount(2) data;
* :func:`has_cap_sys_admin`, the ``MS_*`` mount(2) flags (``<sys/mount.h>``) and
  :func:`grow_pipe` (a pipe's capacity).

Procfs paths are parameters, so tests can feed recorded files.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
import stat

from . import _syscalls

__all__ = [
    "CAP_SYS_ADMIN",
    "FSCONFIG_STRING_MAX",
    "MS_BIND",
    "MS_MOVE",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "MS_SHARED",
    "MS_SLAVE",
    "KernelFeatures",
    "features",
    "F_GETPIPE_SZ",
    "F_SETPIPE_SZ",
    "filesystems",
    "fsconfig_takes",
    "grow_pipe",
    "has_cap_sys_admin",
    "in_user_namespace",
    "release",
    "userns_overlay_reason",
    "lowerdir_plus",
    "page_size",
]

# mount(2) flags (<sys/mount.h>)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000

CAP_SYS_ADMIN = 21
"""The capability bit that allows mount(2) (<linux/capability.h>)."""

FSCONFIG_STRING_MAX = 256
"""fsconfig() copies string values up to this length: longer layer paths go by fd."""

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
"""fcntl(2) commands for a pipe's capacity (<linux/fcntl.h>)."""


@dataclasses.dataclass(frozen=True)
class KernelFeatures:
    """What the running kernel supports, as aufs uses it (see :func:`features`)."""

    statx_mount_root: bool
    """statx() reports STATX_ATTR_MOUNT_ROOT (Linux 5.8+)."""
    openat2: bool
    """openat2() with RESOLVE_NO_XDEV (Linux 5.6+)."""
    new_mount_api: bool
    """fsopen/fsconfig/fsmount/move_mount (Linux 5.2+)."""
    overlay: bool
    """overlayfs is available (built in or loaded)."""
    overlay_lowerdir_plus: bool
    """overlayfs takes one lower layer per ``lowerdir+`` parameter (Linux 6.8+)."""
    overlay_layer_fd: bool
    """overlayfs takes layers as directory file descriptors (Linux 6.13+)."""
    aufs: bool
    """the AUFS filesystem is available."""


@functools.cache
def features() -> KernelFeatures:
    """Probe the running kernel once (per process) and return what it supports."""
    bits = _syscalls.probe_features()
    found = {name: bool(bits & bit) for name, bit in _syscalls.FEATURE_BITS.items()}
    if not found["new_mount_api"]:
        # Without fsopen() the C probe cannot ask for a filesystem type; the list will do.
        known = filesystems()
        found["overlay"] = "overlay" in known
        found["aufs"] = "aufs" in known
    return KernelFeatures(**found)


def filesystems(path: str = "/proc/filesystems") -> frozenset[str]:
    """Filesystem types the running kernel knows (empty if ``path`` cannot be read)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return frozenset(line.split()[-1] for line in f if line.strip())
    except OSError:
        return frozenset()


@functools.cache
def page_size() -> int:
    """The page size: the most mount data mount(2) copies (terminating NUL included)."""
    return _syscalls.page_size()


def fsconfig_takes(path: str | bytes) -> bool:
    """True if fsconfig() can take ``path`` as a string value: shorter than
    :data:`FSCONFIG_STRING_MAX` bytes and without a backslash (overlayfs would unescape it).
    Any other path goes as an open directory (``csrc/overlay.c`` decides the same way)."""
    raw = os.fsencode(path)
    return len(raw) < FSCONFIG_STRING_MAX and b"\\" not in raw


def lowerdir_plus(strings_only: bool = True) -> bool:
    """True if overlayfs can take every layer of a chain on its own (``lowerdir+``, through
    the new mount API); else all layers go in one page of mount(2) data. ``strings_only`` is
    False when some path of the chain must go as an open directory (see
    :func:`fsconfig_takes`), which needs a newer kernel."""
    found = features()
    return found.overlay_lowerdir_plus and (strings_only or found.overlay_layer_fd)


def grow_pipe(fd: int, size: int) -> bool:
    """Let the pipe ``fd`` hold at least ``size`` bytes (``F_SETPIPE_SZ``; never shrinks it).
    False if ``fd`` is no pipe or the kernel refused (an unprivileged user's limits, above
    ``/proc/sys/fs/pipe-max-size``): a smaller pipe costs context switches, nothing else."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        if fcntl.fcntl(fd, F_GETPIPE_SZ) < size:
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
        return True
    except OSError:
        return False


def has_cap_sys_admin(status: str = "/proc/self/status") -> bool:
    """True if the calling process has CAP_SYS_ADMIN in its effective set (may mount)."""
    try:
        with open(status, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


@functools.lru_cache(maxsize=1)
def release() -> tuple[int, int]:
    """The running kernel's (major, minor) version, (0, 0) if unreadable."""
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def userns_overlay_reason(version: tuple[int, int] | None = None) -> str | None:
    """Why kernel overlayfs cannot mount in a user namespace on a kernel of ``version``
    (default: this one), or None: it needs Linux 5.11 (unprivileged overlay, ``userxattr``)."""
    if (version or release()) < (5, 11):
        return "kernel overlayfs in a user namespace needs Linux 5.11 or later (userxattr)"
    return None


def in_user_namespace(uid_map: str = "/proc/self/uid_map") -> bool:
    """True if the calling process runs in a user namespace other than the initial one (its
    uid map is not the identity of all 2**32 - 1 ids): root there cannot give files to ids
    outside the map, and kernel overlayfs there needs ``userxattr``."""
    try:
        with open(uid_map, encoding="ascii") as f:
            lines = f.read().split("\n")
    except OSError:
        return False
    return [line.split() for line in lines if line.strip()] != [["0", "0", "4294967295"]]
