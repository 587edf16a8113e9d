"""Typed wrappers of the C core: the only module that imports ``aufs._native``.

It owns:

* the one function that turns a C ``-errno`` into ``OSError(errno, strerror, path)`` (which
  Python maps to the matching subclass: ``FileNotFoundError``, ``PermissionError``, ...);
* thin wrappers of every C function, taking ``str``/``bytes``/``PathLike`` paths;
* the raw kernel-feature probe (:func:`probe_features`; :func:`aufs.mounts.kernel_features`
  caches it and gives it names);
* ``renameat2`` exchange / no-replace, used by the store to swap and publish directories.

The functions here give no meaning to results beyond errno: :mod:`aufs.mounts` decides what
"not mounted" or "busy" mean. ``mountpoint_statx`` and ``mountpoint_openat2`` are hot paths and
return the C result as is (1, 0 or ``-errno``) so callers can branch without an exception.
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


# --- extraction ---
# Owned by aufs.apply: the C writer of layer-tar entries (csrc/extract.c). The archive handle
# and libarchive's entry points come from the caller as plain addresses, so neither this module
# nor the C links against libarchive.

import errno as _errno  # noqa: E402

X_EOF = int(lib.AUFS_X_EOF)
X_DIR = int(lib.AUFS_X_DIR)
X_SPECIAL = int(lib.AUFS_X_SPECIAL)
X_DONE = int(lib.AUFS_X_DONE)
X_ARCHIVE = int(lib.AUFS_X_ARCHIVE)
X_UNSAFE = int(lib.AUFS_X_UNSAFE)
X_LIMIT = int(lib.AUFS_X_LIMIT)
X_CORRUPT = int(lib.AUFS_X_CORRUPT)
X_FLUSH = int(lib.AUFS_X_FLUSH)

# directory times collected by the C writer between returns (see struct aufs_xctx)
_DIRBUF_SIZE = 1 << 20
_DIR_RECORD = struct.Struct("=qqI")

EXTRACT_API_NAMES = (
    "read_next_header", "read_data_block", "entry_pathname", "entry_hardlink", "entry_symlink",
    "entry_mode", "entry_uid", "entry_gid", "entry_mtime", "entry_mtime_nsec", "entry_size",
    "entry_rdevmajor", "entry_rdevminor", "entry_xattr_reset", "entry_xattr_next",
    "entry_sparse_count",
)
"""The libarchive functions (without the ``archive_`` prefix) :class:`Extractor` needs."""


# the size of the C writer's name buffers (struct aufs_xctx path/link), NUL included
_X_NAME_BUFFER = int(lib.AUFS_X_PATH_MAX)


class Extractor:
    """Writes the entries of an open libarchive read handle below the directory ``root_fd``.

    ``api`` maps each name of :data:`EXTRACT_API_NAMES` to the address of that libarchive
    function; ``archive`` is the ``struct archive *`` address. :meth:`next` runs without the
    GIL until something needs the caller (see the ``X_*`` codes). The root fd stays the
    caller's; :meth:`close` releases the cached parent directory.
    """

    def __init__(self, archive: int, api: "dict[str, int]", root_fd: int, *,
                 max_bytes: Optional[int] = None, report_all: bool = False) -> None:
        self._api = ffi.new("struct aufs_xapi *")
        for name in EXTRACT_API_NAMES:
            setattr(self._api, name, ffi.cast("void *", api[name]))
        ctx = ffi.new("struct aufs_xctx *")
        ctx.api = self._api
        ctx.archive = ffi.cast("void *", archive)
        ctx.root_fd = root_fd
        ctx.flags = lib.AUFS_X_REPORT_ALL if report_all else 0
        ctx.max_bytes = -1 if max_bytes is None else max_bytes
        ctx.parent_fd = -1
        self._dirbuf = ffi.new("char[]", _DIRBUF_SIZE)
        ctx.dirbuf = self._dirbuf
        ctx.dirbuf_size = _DIRBUF_SIZE
        self._ctx = ctx

    def next(self) -> int:
        """Write entries until one needs the caller; the ``X_*`` code, or ``-errno``."""
        return int(lib.aufs_x_next(self._ctx))

    def write(self, path: Optional[bytes] = None, link: Optional[bytes] = None) -> int:
        """Write the current entry (at ``path``/hard-linked to ``link`` if given): 0, ``X_*`` or ``-errno``.

        A name that does not fit the C buffer with its NUL gives ``-ENAMETOOLONG`` and nothing
        is stored (cffi would store 4,096 bytes without a NUL and raise IndexError past that).
        """
        for name in (path, link):
            if name is not None and len(name) >= _X_NAME_BUFFER:
                return -_errno.ENAMETOOLONG
        if path is not None:
            self._ctx.path = path
        if link is not None:
            self._ctx.link = link
        return int(lib.aufs_x_write(self._ctx))

    def take_dir_times(self) -> "list[tuple[bytes, Optional[Tuple[int, int]]]]":
        """What the writer recorded since the last call, in archive order: each directory
        written with its ``(sec, nsec)`` mtime, and each implied directory it created (a
        missing parent of an entry) with None, parents before their children."""
        used = int(self._ctx.dirbuf_used)
        data = bytes(ffi.buffer(self._dirbuf, used))
        self._ctx.dirbuf_used = 0
        out: "list[tuple[bytes, Optional[Tuple[int, int]]]]" = []
        pos = 0
        while pos < used:
            sec, nsec, length = _DIR_RECORD.unpack_from(data, pos)
            start = pos + _DIR_RECORD.size
            path = data[start:start + length]
            if nsec >= 0:
                out.append((path, (sec, nsec)))
            else:  # implied: every component after the first ``sec`` bytes was created
                end = path.find(b"/", sec)
                while end >= 0:
                    out.append((path[:end], None))
                    end = path.find(b"/", end + 1)
                out.append((path, None))
            pos += (_DIR_RECORD.size + length + 7) & ~7
        return out

    def make_dir(self, path: bytes) -> int:
        """An ``O_PATH`` fd of the directory ``path`` below the root, creating missing ones
        0755 and recording them for :meth:`take_dir_times` (empty it first: it needs room)."""
        fd = int(lib.aufs_x_make_dir(self._ctx, path))
        if fd < 0:
            raise oserror(fd, path)
        return fd

    def forget_parent(self) -> None:
        """Drop the cached parent directory (call before changing the tree behind its back)."""
        lib.aufs_x_forget_parent(self._ctx)

    def close(self) -> None:
        lib.aufs_x_forget_parent(self._ctx)

    @property
    def path(self) -> bytes:
        """The current entry's normalised path (raw name after ``X_UNSAFE``)."""
        return bytes(ffi.string(self._ctx.path))

    @property
    def link(self) -> bytes:
        """The current entry's normalised hard-link target, ``b""`` if it is no hard link."""
        return bytes(ffi.string(self._ctx.link)) if self._ctx.is_hardlink else b""

    @property
    def header_failed(self) -> bool:
        """After ``X_ARCHIVE``: True if libarchive refused the next header (then :attr:`path`
        is the last entry written and :attr:`raw_link` the refused entry's name, if it had
        one), False if it failed inside the current entry's data."""
        return bool(self._ctx.entry == ffi.NULL)

    @property
    def raw_link(self) -> bytes:
        """The link buffer as is (a refused symlink's target after ``X_UNSAFE``)."""
        return bytes(ffi.string(self._ctx.link))

    @property
    def mode(self) -> int:
        return int(self._ctx.mode)

    @property
    def is_hardlink(self) -> bool:
        return bool(self._ctx.is_hardlink)

    @property
    def mtime(self) -> Tuple[int, int]:
        return int(self._ctx.mtime_sec), int(self._ctx.mtime_nsec)

    @property
    def size(self) -> int:
        return int(self._ctx.size)

    @property
    def archive_status(self) -> int:
        """libarchive's return code behind the last ``X_ARCHIVE``."""
        return int(self._ctx.archive_status)

    @property
    def bytes_written(self) -> int:
        return int(self._ctx.bytes)

    @property
    def entries(self) -> int:
        return int(self._ctx.entries)


def extract_normalize(name: bytes) -> Optional[bytes]:
    """A tar member name made relative and free of ``.``/``..``; None if it climbs out."""
    buf = ffi.new("char[]", 4096)
    n = lib.aufs_x_normalize(name, buf, 4096)
    if n == -_errno.EXDEV:  # ".." above the root
        return None
    if n < 0:
        raise oserror(n, name)
    return bytes(ffi.string(buf))


def extract_open_dir(root_fd: int, path: bytes, create: bool = False) -> int:
    """An ``O_PATH`` fd of ``path`` resolved inside ``root_fd``, creating missing dirs 0755 if asked."""
    fd = int(lib.aufs_x_open_dir(root_fd, path, 1 if create else 0))
    if fd < 0:
        raise oserror(fd, path)
    return fd


def extract_remove(dir_fd: int, name: bytes) -> bool:
    """Remove ``name`` in ``dir_fd`` (a whole tree for a directory), never following it.

    False if there was nothing to remove.
    """
    r = int(lib.aufs_x_remove(dir_fd, name))
    if r == -_errno.ENOENT:
        return False
    if r < 0:
        raise oserror(r, name)
    return True


class DirCopier:
    """Copies a lower directory's owner, mode and xattrs onto implied directories (a copy-up);
    holds the scratch buffers, so one copier per thread."""

    # the kernel's limits for an xattr list and for one value (XATTR_LIST_MAX, XATTR_SIZE_MAX)
    _NAMES = 1 << 16
    _VALUE = 1 << 16

    def __init__(self) -> None:
        self._names = ffi.new("char[]", self._NAMES)
        self._value = ffi.new("char[]", self._VALUE)

    def copy_up(self, root_fd: int, path: bytes, template_fd: int) -> bool:
        """Give ``path`` below ``root_fd`` the metadata of ``path`` below ``template_fd``.

        False, changing nothing, when the template has no directory there (missing, a
        non-directory, or reached through a symlink) or ``path`` is no longer a directory.
        """
        r = int(lib.aufs_x_copy_up_dir(root_fd, path, template_fd, self._names, self._NAMES,
                                       self._value, self._VALUE))
        if r < 0:
            raise oserror(r, path)
        return r == 1


def extract_dir_times(root_fd: int, path: bytes, sec: int, nsec: int) -> None:
    """Set a directory's times below ``root_fd``; no-op if ``path`` is no longer a directory."""
    r = int(lib.aufs_x_dir_times(root_fd, path, sec, nsec))
    if r < 0 and r not in (-_errno.ENOENT, -_errno.ENOTDIR):  # replaced or removed since
        raise oserror(r, path)


# --- walk ---
# Owned by aufs.export and aufs.changes: directory scans, tar entries written in one call each,
# and the change list computed in C (csrc/walk.c). libarchive entry points come from the caller
# as plain addresses, like the extraction section's.

import errno as _errno  # noqa: E402,F811
import sys  # noqa: E402

W_OPAQUE = int(lib.AUFS_W_OPAQUE)
W_ARCHIVE = int(lib.AUFS_W_ARCHIVE)

_WREC = struct.Struct("=QQQQqqIIIIIIII")
W_STOP = int(lib.AUFS_W_STOP)

WALK_API_NAMES = (
    "entry_clear", "entry_copy_pathname", "entry_copy_symlink", "entry_copy_hardlink",
    "entry_set_mode", "entry_set_size", "entry_set_uid", "entry_set_gid", "entry_set_mtime",
    "entry_set_rdevmajor", "entry_set_rdevminor", "entry_xattr_add_entry", "write_header",
    "write_data",
)
"""The libarchive functions (without the ``archive_`` prefix) :class:`EntryWriter` needs."""

# (name, mode, uid, gid, mtime_sec, mtime_nsec, size, rdev, nlink, ino, dev)
ScanRecord = Tuple[bytes, int, int, int, int, int, int, int, int, int, int]


class DirScanner:
    """Reads whole directories (``getdents64`` + ``fstatat``, never following symlinks) into a
    buffer it owns; one scanner per thread."""

    def __init__(self, size: int = 1 << 18) -> None:
        self._size = size
        self._buf = ffi.new("char[]", size)

    def scan(self, dir_fd: int) -> "list[ScanRecord]":
        """Every entry of the directory open as ``dir_fd`` but ``.``/``..``, with its lstat
        fields; entries removed between readdir and lstat are left out. Order: readdir's."""
        while True:
            n = int(lib.aufs_w_scan(dir_fd, lib.AUFS_W_STAT, self._buf, self._size))
            if n != -_errno.ENOBUFS:
                break
            self._size *= 4
            self._buf = ffi.new("char[]", self._size)
        if n < 0:
            raise oserror(n, f"/proc/self/fd/{dir_fd}")
        data = ffi.buffer(self._buf, n)[:]
        out = []
        unpack = _WREC.unpack_from
        head = _WREC.size
        pos = 0
        while pos < n:
            ino, dev, size, rdev, sec, nsec, mode, uid, gid, nlink, namelen, reclen, _, _ = \
                unpack(data, pos)
            start = pos + head
            out.append((data[start:start + namelen], mode, uid, gid, sec, nsec, size, rdev,
                        nlink, ino, dev))
            pos += reclen
        return out


class EntryWriter:
    """Writes tar entries into an open libarchive write handle, one C call per entry.

    ``api`` maps each name of :data:`WALK_API_NAMES` to the address of that libarchive
    function; ``archive`` and ``entry`` are the ``struct archive *`` and a
    ``struct archive_entry *`` (reused for every entry) as addresses.
    """

    def __init__(self, archive: int, entry: int, api: "dict[str, int]",
                 buffer_size: int = 1 << 20) -> None:
        self._api = ffi.new("struct aufs_wapi *")
        for name in WALK_API_NAMES:
            setattr(self._api, name, ffi.cast("void *", api[name]))
        self._buf = ffi.new("char[]", buffer_size)
        ctx = ffi.new("struct aufs_wctx *")
        ctx.api = self._api
        ctx.archive = ffi.cast("void *", archive)
        ctx.entry = ffi.cast("void *", entry)
        ctx.buf = self._buf
        ctx.buflen = buffer_size
        self._name = ffi.new("char[]", _NAME_MAX)
        ctx.name = self._name
        ctx.namelen = _NAME_MAX
        self._ctx = ctx
        self._write = lib.aufs_w_entry
        self._null = ffi.NULL
        self._scratch_size = 1 << 18
        self._scratch = _alloc_raw("char[]", self._scratch_size)
        self._scratch_order = _alloc_raw("uint32_t[]", self._scratch_size // _WREC.size)
        self._flags = ffi.new("int *")
        self._used = ffi.new("size_t *")

    def scan(self, dir_fd: int) -> "ScannedDir":
        """The entries of the directory open as ``dir_fd`` to write, in tar order (sorted by
        tar name as bytes, a whiteout device under its OCI name); opaque markers, metadata
        and sockets are left out."""
        while True:
            n = int(lib.aufs_w_scan_sorted(dir_fd, self._scratch, self._scratch_size,
                                           self._scratch_order, self._scratch_size // _WREC.size,
                                           self._flags, self._used))
            if n != -_errno.ENOBUFS:
                break
            self._scratch_size *= 4
            self._scratch = _alloc_raw("char[]", self._scratch_size)
            self._scratch_order = _alloc_raw("uint32_t[]", self._scratch_size // _WREC.size)
        if n < 0:
            raise oserror(n, f"/proc/self/fd/{dir_fd}")
        # the records stay with the directory while its subdirectories are written
        end = int(self._used[0])
        recs = _alloc_raw("char[]", max(end, 1))
        ffi.memmove(recs, self._scratch, end)
        order = _alloc_raw("uint32_t[]", max(n, 1))
        ffi.memmove(order, self._scratch_order, 4 * n)
        return ScannedDir(recs, order, n, bool(self._flags[0] & lib.AUFS_W_MARKER))

    def run(self, d: "ScannedDir", dir_fd: int, prefix: bytes) -> int:
        """Write the entries of ``d`` from its position on, stopping at a directory or an
        inode with more than one link: 0 when all are written, :data:`W_STOP` (then
        :meth:`ScannedDir.take` gives that entry), or :data:`W_ARCHIVE`; ``OSError`` on a
        failed read."""
        rc = int(lib.aufs_w_run(self._ctx, dir_fd, d.recs, d.order, d.n, d.pos, prefix,
                                len(prefix)))
        if rc < 0:
            raise oserror(rc, prefix + d.name_at(int(d.pos[0])))
        return rc

    def write(self, dir_fd: int, fd: int, name: Optional[bytes], tar_name: bytes,
              hardlink: Optional[bytes], mode: int, uid: int, gid: int, mtime: int,
              size: int, rdev: int) -> int:
        """Write one entry: a marker when ``name`` is None (no inode), a hard link when
        ``hardlink`` is given, else the inode ``name`` in ``dir_fd`` (a directory's xattrs
        are read from ``fd``). Returns 0, :data:`W_OPAQUE` for a directory with an opaque
        xattr, or :data:`W_ARCHIVE` (see :attr:`archive_status`); ``OSError`` on failure."""
        null = self._null
        rc = self._write(self._ctx, dir_fd, fd, null if name is None else name, tar_name,
                         null if hardlink is None else hardlink, mode, uid, gid, mtime, size,
                         rdev)
        if rc < 0:
            raise oserror(rc, tar_name)
        return int(rc)

    @property
    def archive_status(self) -> int:
        """libarchive's return code behind the last :data:`W_ARCHIVE`."""
        return int(self._ctx.archive_status)


_NAME_MAX = 1 << 16  # longest tar name the C writes (deep layers go past PATH_MAX)


class ScannedDir:
    """One directory's entries in tar order (see :meth:`EntryWriter.scan`) and how far
    :meth:`EntryWriter.run` got."""

    __slots__ = ("recs", "order", "n", "pos", "has_marker")

    def __init__(self, recs: Any, order: Any, n: int, has_marker: bool) -> None:
        self.recs = recs
        self.order = order
        self.n = n
        self.pos = ffi.new("size_t *")
        self.has_marker = has_marker
        """The directory holds a regular ``.wh..wh..opq``."""

    def name_at(self, i: int) -> bytes:
        if i >= self.n:
            return b""
        return bytes(ffi.string(self.recs + int(self.order[i]) + _WREC.size))

    def take(self) -> ScanRecord:
        """The entry :meth:`EntryWriter.run` stopped at; the next run starts after it."""
        i = int(self.pos[0])
        off = int(self.order[i])
        (ino, dev, size, rdev, sec, nsec, mode, uid, gid, nlink, namelen, _, _, _) = \
            _WREC.unpack_from(ffi.buffer(self.recs + off, _WREC.size))
        name = ffi.buffer(self.recs + off + _WREC.size, namelen)[:]
        self.pos[0] = i + 1
        return (name, mode, uid, gid, sec, nsec, size, rdev, nlink, ino, dev)


W_MODIFY = int(lib.AUFS_W_MODIFY)
W_ADD = int(lib.AUFS_W_ADD)
W_DELETE = int(lib.AUFS_W_DELETE)

# output buffers are filled by C before they are read: no need to clear them
_alloc_raw = ffi.new_allocator(should_clear_after_alloc=False)


def walk_changes(layer_fd: int, lower_fd: Optional[int],
                 expected: int = 1 << 20) -> "Tuple[list[str], bytes]":
    """The change list of the layer directory ``layer_fd`` against the lower view
    ``lower_fd`` (None: nothing below), unsorted: absolute paths (decoded like
    ``os.fsdecode``) and one kind byte each (:data:`W_MODIFY`, :data:`W_ADD`,
    :data:`W_DELETE`). ``expected`` sizes the first buffers (only the pages
    touched are committed; they grow as needed, at the cost of another walk)."""
    count = max(expected, 1024)
    used = ffi.new("size_t *")
    while True:
        paths = _alloc_raw("char[]", count * 64)
        kinds = _alloc_raw("unsigned char[]", count)
        n = int(lib.aufs_w_changes(layer_fd, -1 if lower_fd is None else lower_fd,
                                   paths, count * 64, used, kinds, count))
        if n != -_errno.ENOBUFS:
            break
        count *= 4
    if n < 0:
        raise oserror(n, f"/proc/self/fd/{layer_fd}")
    if n == 0:
        return [], b""
    # every path ends in a NUL: drop the last one so split gives exactly n paths
    text = ffi.buffer(paths, used[0] - 1)[:].decode(_FS_ENCODING, _FS_ERRORS)
    return text.split("\0"), ffi.buffer(kinds, n)[:]


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
