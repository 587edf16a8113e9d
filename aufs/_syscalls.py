"""Typed wrappers of the C core's syscalls: with :mod:`aufs._fastpaths`, the only importers
of ``aufs._native``.

It owns:

* the one function that turns a C ``-errno`` into ``OSError(errno, strerror, path)`` (which
  Python maps to the matching subclass: ``FileNotFoundError``, ``PermissionError``, ...),
  shared with :mod:`aufs._fastpaths`;
* thin wrappers of the mount syscalls (mount, umount, the overlay mount through the new mount
  API), the mount-point checks (statx, openat2), the mountinfo parser, ``renameat2``
  exchange / no-replace (used by the store to swap and publish directories);
* the raw kernel-feature probe (:func:`probe_features`; :mod:`aufs.kernel` caches it and
  gives it names);
* the Python mirror of ``struct aufs_mountinfo``, size-checked against the C at import.

The functions here give no meaning to results beyond errno: :mod:`aufs.mounts` decides what
"not mounted" or "busy" mean. ``mountpoint_statx`` and ``mountpoint_openat2`` are hot paths and
return the C result as is (1, 0 or ``-errno``) so callers can branch without an exception.
The extract and walk loops, which are not syscalls, are in :mod:`aufs._fastpaths`.
"""
from __future__ import annotations

import os
import struct
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

from . import _native

__all__ = [
    "StrPath",
    "oserror",
    "fspath_bytes",
    "page_size",
    "mount",
    "umount",
    "overlay_mount",
    "mountpoint_statx",
    "mountpoint_openat2",
    "MountInfoFields",
    "iter_mountinfo",
    "unescape",
    "probe_features",
    "FEATURE_BITS",
    "rename_exchange",
    "rename_noreplace",
    "NS_USER",
    "NS_MOUNT",
    "unshare",
    "setns",
]

# The compiled module has no type information: everything from it is Any until wrapped here.
ffi: Any = _native.ffi  # type: ignore[attr-defined,unused-ignore]
lib: Any = _native.lib  # type: ignore[attr-defined,unused-ignore]

StrPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


def oserror(err: int, path: Optional[StrPath] = None, path2: Optional[StrPath] = None,
            detail: str = "") -> OSError:
    """Build the ``OSError`` subclass for a positive or negative errno, naming the path(s).

    ``detail`` (e.g. the kernel's fs-context log) is appended to strerror.
    """
    err = abs(err)
    message = os.strerror(err)
    if detail:
        message = f"{message} ({detail})"
    filename = os.fsdecode(path) if path is not None else None
    if path2 is not None:
        return OSError(err, message, filename, None, os.fsdecode(path2))
    return OSError(err, message, filename)


def fspath_bytes(path: StrPath) -> bytes:
    """The path as bytes, as the kernel sees it; ``ValueError`` for an embedded NUL byte
    (C would silently cut the path there)."""
    raw = os.fsencode(path)
    if 0 in raw:
        raise ValueError(f"embedded null byte in path {raw!r}")
    return raw


def _opt_bytes(value: Optional[StrPath]) -> object:
    if value is None:
        return ffi.NULL
    return fspath_bytes(value)


def page_size() -> int:
    """The page size: the most mount data mount(2) copies (terminating NUL included)."""
    return int(lib.aufs_page_size())


def mount(source: Optional[StrPath], target: StrPath, fstype: Optional[str], flags: int = 0,
          data: Optional[Union[str, bytes]] = None) -> None:
    """mount(2). Raises ``OSError`` (``E2BIG`` if data does not fit one page: never truncated)."""
    rc = lib.aufs_mount(_opt_bytes(source), fspath_bytes(target), _opt_bytes(fstype), flags,
                        _opt_bytes(data))
    if rc < 0:
        raise oserror(rc, target)


def umount(target: StrPath, lazy: bool = False) -> None:
    """umount2(2) with ``UMOUNT_NOFOLLOW`` (and ``MNT_DETACH`` if lazy). Raises ``OSError``:
    ``EINVAL`` when target is not a mount point, ``EBUSY`` when it is in use."""
    rc = lib.aufs_umount(fspath_bytes(target), 1 if lazy else 0)
    if rc < 0:
        raise oserror(rc, target)


NS_USER: int = lib.AUFS_NS_USER
"""A user namespace."""
NS_MOUNT: int = lib.AUFS_NS_MOUNT
"""A mount namespace."""


def unshare(which: int) -> None:
    """unshare(2) of a new user (:data:`NS_USER`) and/or mount (:data:`NS_MOUNT`) namespace.
    Raises ``OSError`` (``EINVAL`` for a user namespace in a multithreaded process)."""
    rc = lib.aufs_unshare(which)
    if rc < 0:
        raise oserror(rc)


def setns(fd: int, which: int) -> None:
    """setns(2) into the namespace open as ``fd``, of kind :data:`NS_USER` or :data:`NS_MOUNT`.
    Raises ``OSError`` (``EINVAL`` joining a user namespace from a multithreaded process or
    with the wrong kind of fd, ``EPERM`` without the right in the target)."""
    rc = lib.aufs_setns(fd, which)
    if rc < 0:
        raise oserror(rc)


def overlay_mount(target: StrPath, lowerdirs: Sequence[StrPath], upperdir: Optional[StrPath],
                  workdir: Optional[StrPath], options: Sequence[str] = ()) -> None:
    """Mount overlayfs at target through fsopen/fsconfig/fsmount/move_mount.

    One ``lowerdir+`` per entry of ``lowerdirs`` (top-most first); paths of 256 bytes or more
    go by file descriptor. ``options`` are ``"name=value"`` strings or bare flag names.
    Raises ``OSError`` whose strerror carries the kernel's own explanation when it gave one.
    """
    keep = [ffi.new("char[]", fspath_bytes(p)) for p in lowerdirs]
    lowers = ffi.new("const char *[]", keep) if keep else ffi.NULL
    keep_opts = [ffi.new("char[]", fspath_bytes(o)) for o in options]
    opts = ffi.new("const char *[]", keep_opts) if keep_opts else ffi.NULL
    errbuf = ffi.new("char[]", 2048)
    rc = lib.aufs_overlay_mount(
        fspath_bytes(target), lowers, len(keep), _opt_bytes(upperdir), _opt_bytes(workdir),
        opts, len(keep_opts), errbuf, len(errbuf),
    )
    if rc < 0:
        detail = ffi.string(errbuf).decode("utf-8", "replace")
        raise oserror(rc, target, detail=detail)


# Hot path of aufs.mounts.mounted(): bytes path -> 1 (mount point), 0 (not), -errno.
# The caller must refuse NUL bytes (see fspath_bytes).
mountpoint_statx: Callable[[bytes], int] = lib.aufs_mountpoint_statx
mountpoint_openat2: Callable[[bytes], int] = lib.aufs_mountpoint_openat2

# One parsed mountinfo line, before decoding: (mount_id, parent_id, major, minor,
# root, mountpoint, options, optional, fstype, source, super_options) with bytes fields.
MountInfoFields = Tuple[int, int, int, int, bytes, bytes, bytes, bytes, bytes, bytes, bytes]

_REC = struct.Struct("@iiII%dN%dN" % (lib.AUFS_MI_NFIELDS, lib.AUFS_MI_NFIELDS))
if _REC.size != ffi.sizeof("struct aufs_mountinfo"):  # pragma: no cover - a build mismatch
    raise ImportError("aufs._native: struct aufs_mountinfo has an unexpected layout; rebuild")


def iter_mountinfo(data: bytes, origin: str = "mountinfo") -> Iterator[MountInfoFields]:
    """Parse mountinfo text with the C parser, one item per line, fields unescaped.

    The whole buffer is parsed in one C call before the first item is produced, so a
    malformed line raises ``ValueError`` (naming ``origin`` and the line number) up front.
    """
    if not data:
        return iter(())
    nlines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    recs = ffi.new("struct aufs_mountinfo[]", nlines)
    out = ffi.new("char[]", len(data) + 1)
    errpos = ffi.new("size_t *")
    count = lib.aufs_mountinfo_parse(ffi.from_buffer(data), len(data), recs, nlines,
                                     out, len(out), errpos)
    if count < 0:
        pos = errpos[0]
        lineno = data.count(b"\n", 0, pos) + 1
        raise ValueError(f"{origin}: line {lineno} is not a mountinfo line "
                         f"({os.strerror(-count)}): {data[pos:pos + 200]!r}")
    return _records(bytes(ffi.buffer(out)), bytes(ffi.buffer(recs, count * _REC.size)))


def _records(text: bytes, table: bytes) -> Iterator[MountInfoFields]:
    for (mount_id, parent_id, major, minor, o0, o1, o2, o3, o4, o5, o6,
         n0, n1, n2, n3, n4, n5, n6) in _REC.iter_unpack(table):
        yield (mount_id, parent_id, major, minor, text[o0:o0 + n0], text[o1:o1 + n1],
               text[o2:o2 + n2], text[o3:o3 + n3], text[o4:o4 + n4], text[o5:o5 + n5],
               text[o6:o6 + n6])


def unescape(data: bytes) -> bytes:
    """Turn every ``\\ooo`` octal escape (value <= 0o377) into its byte, with the C code."""
    out = ffi.new("char[]", len(data) + 1)
    n = lib.aufs_unescape(data, len(data), out, len(out))
    if n < 0:  # pragma: no cover - out is always large enough
        raise oserror(n)
    return bytes(ffi.buffer(out, n))


# KernelFeatures field name -> its bit in probe_features().
FEATURE_BITS = {
    "statx_mount_root": lib.AUFS_FEAT_STATX_MOUNT_ROOT,
    "openat2": lib.AUFS_FEAT_OPENAT2,
    "new_mount_api": lib.AUFS_FEAT_NEW_MOUNT_API,
    "overlay": lib.AUFS_FEAT_OVERLAY,
    "overlay_lowerdir_plus": lib.AUFS_FEAT_OVERLAY_LOWERDIR_PLUS,
    "overlay_layer_fd": lib.AUFS_FEAT_OVERLAY_LAYER_FD,
    "aufs": lib.AUFS_FEAT_AUFS,
}


def probe_features() -> int:
    """Ask the running kernel what it supports; a bit mask over :data:`FEATURE_BITS`."""
    return int(lib.aufs_probe_features())


def rename_exchange(old: StrPath, new: StrPath) -> None:
    """Atomically swap ``old`` and ``new`` (renameat2 ``RENAME_EXCHANGE``); both must exist."""
    rc = lib.aufs_rename_exchange(fspath_bytes(old), fspath_bytes(new))
    if rc < 0:
        raise oserror(rc, old, new)


def rename_noreplace(old: StrPath, new: StrPath) -> None:
    """Rename ``old`` to ``new`` unless ``new`` exists (``FileExistsError`` then)."""
    rc = lib.aufs_rename_noreplace(fspath_bytes(old), fspath_bytes(new))
    if rc < 0:
        raise oserror(rc, old, new)
