"""On-disk whiteout formats and the names a layer reserves for itself.

This module owns the two ways a layer directory records "this name is deleted" and "this
directory hides everything below it", and the rules that tell content from markers:

* ``WhiteoutFormat.AUFS`` (kernel AUFS, and the OCI tar form): a whiteout is an empty regular
  file ``.wh.NAME``; an opaque directory holds a regular file ``.wh..wh..opq``; every other
  ``.wh..wh.*`` name is AUFS metadata (``.wh..wh.plnk``, ``.wh..wh.aufs``, ...), never content.
* ``WhiteoutFormat.OVERLAY`` (kernel overlayfs): a whiteout is a character device 0/0 named
  NAME; an opaque directory carries the xattr ``trusted.overlay.opaque=y``.

The format decides what this module *writes*. Reading is deliberately tolerant, because
fuse-overlayfs (which the store runs over AUFS-format layers) mixes both: as root it writes
0/0 character-device whiteouts, marks an opaque directory with ``trusted.overlay.opaque``
*and* a ``.wh..wh..opq`` file, and leaves a stray ``.wh..opq`` device beside it; unprivileged
it uses ``user.overlay.opaque``/``user.fuseoverlayfs.opaque`` and ``.wh.NAME`` files. So in
either format a 0/0 character device and a ``.wh.NAME`` regular file are whiteouts, and every
opaque marker counts. Names starting with ``.wh.`` are reserved by the OCI image spec: such a
name is never ordinary content (a 0/0 device can therefore never be content either).

The extractor (``aufs.apply``), the store, ``aufs.export`` and ``aufs.changes`` all classify
entries through :func:`classify` / :func:`classify_entry` so they agree.
"""
from __future__ import annotations

import enum
import errno
import os
import stat
from typing import NamedTuple, Union

from .kernel import in_user_namespace

__all__ = [
    "AUFS_WHITEOUT_MODE",
    "META_PREFIX",
    "OPAQUE_NAME",
    "OPAQUE_XATTRS",
    "OVERLAY_OPAQUE_XATTR",
    "PRIVATE_XATTR_PREFIXES",
    "WHITEOUT_PREFIX",
    "Entry",
    "EntryKind",
    "WhiteoutFormat",
    "classify",
    "classify_entry",
    "is_metadata_name",
    "is_opaque_dir",
    "is_private_xattr",
    "is_reserved_name",
    "is_whiteout_stat",
    "make_opaque",
    "make_whiteout",
    "root_is_opaque",
    "whiteout_name",
    "whiteout_target",
]

WHITEOUT_PREFIX = ".wh."
"""Prefix of an AUFS/OCI whiteout: ``.wh.NAME`` deletes NAME."""

META_PREFIX = ".wh..wh."
"""Prefix of AUFS metadata names (and of the opaque marker)."""

OPAQUE_NAME = ".wh..wh..opq"
"""The AUFS/OCI opaque-directory marker file."""

OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
"""The xattr kernel overlayfs (and fuse-overlayfs as root) reads for an opaque directory."""

USER_OPAQUE_XATTR = "user.overlay.opaque"
"""What kernel overlayfs mounted with ``userxattr`` (in a user namespace) reads instead."""

OPAQUE_XATTRS = (OVERLAY_OPAQUE_XATTR, USER_OPAQUE_XATTR, "user.fuseoverlayfs.opaque")
"""Every xattr that marks a directory opaque (read in both formats; the first one is written)."""

PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")
"""xattr namespaces that belong to the union filesystem, not to the file's content.

These names and the three above are also spelled in the C (``csrc/aufs_native.h``);
:mod:`aufs._fastpaths` checks at import that both agree."""

AUFS_WHITEOUT_MODE = 0o444
"""Mode of AUFS whiteout and opaque-marker files (what the AUFS kernel module uses itself)."""

_OVERLAY_WHITEOUT_RDEV = os.makedev(0, 0)

FdOrPath = Union[int, str, "os.PathLike[str]"]


class WhiteoutFormat(enum.Enum):
    """How a layer directory stores whiteouts and opaque directories on disk."""

    AUFS = "aufs"
    OVERLAY = "overlay"


class EntryKind(enum.Enum):
    """What a directory entry of a layer means."""

    CONTENT = "content"  # a real file, directory, link, device or fifo of the layer
    WHITEOUT = "whiteout"  # deletes ``Entry.target`` from the layers below
    OPAQUE_MARKER = "opaque"  # ``.wh..wh..opq``: its directory hides everything below the layer
    METADATA = "metadata"  # AUFS bookkeeping (``.wh..wh.plnk`` ...): never content, never exported


class Entry(NamedTuple):
    """The meaning of one directory entry; ``target`` is the deleted name for a WHITEOUT."""

    kind: EntryKind
    target: str | None = None


_CONTENT = Entry(EntryKind.CONTENT)
_OPAQUE = Entry(EntryKind.OPAQUE_MARKER)
_METADATA = Entry(EntryKind.METADATA)


def whiteout_name(name: str) -> str:
    """The AUFS/OCI whiteout file name that deletes ``name``."""
    return WHITEOUT_PREFIX + name


def whiteout_target(name: str) -> str | None:
    """The name an AUFS/OCI-style whiteout ``.wh.NAME`` deletes, or None if ``name`` is none.

    ``.wh..wh..opq`` and other ``.wh..wh.*`` metadata names are not whiteouts.
    """
    if not name.startswith(WHITEOUT_PREFIX) or name.startswith(META_PREFIX):
        return None
    target = name[len(WHITEOUT_PREFIX):]
    # ".wh." alone, ".wh..", ".wh..." and names with a slash cannot delete anything sane
    if target in ("", ".", "..") or "/" in target:
        return None
    return target


def is_reserved_name(name: str) -> bool:
    """True if ``name`` starts with ``.wh.``: a whiteout, opaque marker or metadata, not content."""
    return name.startswith(WHITEOUT_PREFIX)


def is_metadata_name(name: str) -> bool:
    """True for AUFS metadata names (``.wh..wh.*`` other than the opaque marker ``.wh..wh..opq``).

    These never become content: the extractor skips them and export leaves them out.
    """
    return name.startswith(META_PREFIX) and name != OPAQUE_NAME


def is_private_xattr(name: str) -> bool:
    """True for xattrs that belong to the union filesystem (``trusted.overlay.*`` and kin).

    They describe the layer's role in a mount (opaque, redirect, origin ...), not the file, so
    export never writes them and the extractor never sets them from an archive.
    """
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def _classify_reserved(name: str, is_regular: bool) -> Entry:
    """Meaning of a name starting with ``.wh.`` (both formats agree on names)."""
    if name == OPAQUE_NAME:
        return _OPAQUE if is_regular else _METADATA
    if name.startswith(META_PREFIX):
        return _METADATA
    target = whiteout_target(name)
    if target is None or not is_regular:
        # a directory or link with a reserved name is debris of some other tool: never content
        return _METADATA
    return Entry(EntryKind.WHITEOUT, target)


def is_whiteout_stat(mode: int, rdev: int, fmt: WhiteoutFormat) -> bool:
    """True if an inode with this ``st_mode``/``st_rdev`` is a whiteout device (0/0 char device).

    True in both formats: fuse-overlayfs writes such devices into AUFS-format layers too.
    """
    return stat.S_ISCHR(mode) and rdev == _OVERLAY_WHITEOUT_RDEV


def classify(name: str, mode: int, rdev: int, fmt: WhiteoutFormat) -> Entry:
    """What the entry ``name`` with ``st_mode`` ``mode`` and ``st_rdev`` ``rdev`` means in ``fmt``.

    In both formats (see the module docstring for why): a 0/0 character device is a WHITEOUT of
    its own name, a regular file ``.wh.NAME`` is a WHITEOUT of NAME, a regular file
    ``.wh..wh..opq`` is the OPAQUE_MARKER, and any other name starting with ``.wh.`` is METADATA
    (AUFS bookkeeping, fuse-overlayfs strays such as the ``.wh..opq`` device).
    """
    if name.startswith(WHITEOUT_PREFIX):
        return _classify_reserved(name, stat.S_ISREG(mode))
    if is_whiteout_stat(mode, rdev, fmt):
        return Entry(EntryKind.WHITEOUT, name)
    return _CONTENT


def classify_entry(entry: os.DirEntry[str], fmt: WhiteoutFormat) -> Entry:
    """:func:`classify` for an ``os.scandir`` entry, calling ``lstat`` only when it must.

    Directories, regular files and symlinks are told apart from ``d_type`` alone; only a
    possible device (an overlay whiteout candidate) costs a stat.
    """
    name = entry.name
    if name.startswith(WHITEOUT_PREFIX):
        return _classify_reserved(name, entry.is_file(follow_symlinks=False))
    if (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)
            or entry.is_symlink()):
        return _CONTENT
    st = entry.stat(follow_symlinks=False)
    if is_whiteout_stat(st.st_mode, st.st_rdev, fmt):
        return Entry(EntryKind.WHITEOUT, name)
    return _CONTENT


def _lexists_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _make_marker_file(dir_fd: int, name: str) -> None:
    """Create the empty AUFS marker file ``name`` (mode 0444) in ``dir_fd``; fine if it exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, AUFS_WHITEOUT_MODE, dir_fd=dir_fd)
    except FileExistsError:
        st = _lexists_at(dir_fd, name)
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return
        raise
    try:
        os.fchmod(fd, AUFS_WHITEOUT_MODE)  # the umask must not change the on-disk format
    finally:
        os.close(fd)


def make_whiteout(dir_fd: int, name: str, fmt: WhiteoutFormat) -> None:
    """Record in the directory open as ``dir_fd`` that ``name`` is deleted, in format ``fmt``.

    AUFS: creates the empty file ``.wh.NAME`` (mode 0444). OVERLAY: creates the character
    device 0/0 ``NAME`` (mode 0). Idempotent when the same whiteout already exists; raises
    ``FileExistsError`` if something else occupies the name (removing content is the caller's
    decision) and ``ValueError`` for names that cannot be whited out (``""``, ``.``, ``..``,
    names with ``/`` or starting with ``.wh.``).
    """
    if name in ("", ".", "..") or "/" in name or name.startswith(WHITEOUT_PREFIX):
        raise ValueError(f"cannot white out the name {name!r}")
    if fmt is WhiteoutFormat.AUFS:
        _make_marker_file(dir_fd, whiteout_name(name))
        return
    try:
        os.mknod(name, stat.S_IFCHR | 0o000, _OVERLAY_WHITEOUT_RDEV, dir_fd=dir_fd)
    except FileExistsError:
        st = _lexists_at(dir_fd, name)
        if st is not None and is_whiteout_stat(st.st_mode, st.st_rdev, fmt):
            return
        raise


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def make_opaque(dir_fd: int, fmt: WhiteoutFormat) -> None:
    """Mark the directory open as ``dir_fd`` opaque (it hides everything below the layer).

    AUFS: creates the file ``.wh..wh..opq`` in it. OVERLAY: sets ``trusted.overlay.opaque=y``,
    or in a user namespace (a userns store, mounted with ``userxattr``) ``user.overlay.opaque=y``.
    Idempotent. ``dir_fd`` may be an ``O_PATH`` descriptor.
    """
    if fmt is WhiteoutFormat.AUFS:
        _make_marker_file(dir_fd, OPAQUE_NAME)
        return
    attr = USER_OPAQUE_XATTR if in_user_namespace() else OVERLAY_OPAQUE_XATTR
    try:
        os.setxattr(dir_fd, attr, b"y")
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        # O_PATH descriptors refuse fsetxattr; the magic link reaches the same inode
        os.setxattr(_fd_path(dir_fd), attr, b"y")


def _has_opaque_xattr(target: FdOrPath) -> bool:
    """True if ``target`` (an fd, or a path that is not followed) has an opaque xattr = ``y``."""
    for attr in OPAQUE_XATTRS:
        try:
            if isinstance(target, int):
                try:
                    value = os.getxattr(target, attr)
                except OSError as exc:
                    if exc.errno != errno.EBADF:
                        raise
                    # O_PATH descriptors refuse fgetxattr; the magic link must be followed
                    value = os.getxattr(_fd_path(target), attr)
            else:
                value = os.getxattr(target, attr, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                continue
            raise
        if value == b"y":
            return True
    return False


def is_opaque_dir(directory: FdOrPath, fmt: WhiteoutFormat) -> bool:
    """True if ``directory`` (a path or an fd of a directory) is marked opaque in format ``fmt``.

    It holds a regular file ``.wh..wh..opq`` or carries one of :data:`OPAQUE_XATTRS` with value
    ``y``; both formats accept both markers (fuse-overlayfs writes either into either).
    """
    if isinstance(directory, int):
        try:
            st: os.stat_result | None = os.stat(
                OPAQUE_NAME, dir_fd=directory, follow_symlinks=False
            )
        except FileNotFoundError:
            st = None
        target: FdOrPath = directory
    else:
        path = os.fspath(directory)
        try:
            st = os.lstat(os.path.join(path, OPAQUE_NAME))
        except (FileNotFoundError, NotADirectoryError):
            st = None
        target = path
    if st is not None and stat.S_ISREG(st.st_mode):
        return True
    return _has_opaque_xattr(target)


def root_is_opaque(layer_dir: FdOrPath, fmt: WhiteoutFormat) -> bool:
    """True if the layer's root directory is opaque: the layer hides every layer below it."""
    return is_opaque_dir(layer_dir, fmt)
