"""Typed wrappers of the C fast paths: layer-tar extraction and layer-directory walks.

The C extension (``aufs._native``) is imported by two modules only: :mod:`aufs._syscalls`
(the syscall wrappers) and this one, which share :func:`aufs._syscalls.oserror` for errno ->
``OSError``. What lives here is not a syscall but a loop run in C without the GIL:

* :class:`Extractor` and the ``extract_*`` helpers (``csrc/extract.c``, for :mod:`aufs.apply`):
  the entries of a libarchive read handle written below a directory fd;
* :class:`EntryWriter`, :class:`ScannedDir`, :class:`DirScanner` and :class:`FdOutput`
  (``csrc/walk.c``, for :mod:`aufs.export`): a directory read and its tar entries written in
  one call each, into an fd with no copy of file data in user space;
* :func:`walk_changes` (``csrc/walk.c``, for :mod:`aufs.changes`): the whole change list;
* :class:`DirCopier`: a lower directory's metadata copied onto implied parents.

libarchive's entry points and handles come from the caller as plain addresses
(:mod:`aufs._libarchive` binds the library), so neither this module nor the C links against it.
At import, the whiteout names the C spells are checked against :mod:`aufs.whiteouts`.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import struct
import sys
from typing import Any, Iterator, Optional, Tuple

from . import _native
from ._syscalls import oserror
from .whiteouts import (
    META_PREFIX,
    OPAQUE_NAME,
    OPAQUE_XATTRS,
    PRIVATE_XATTR_PREFIXES,
    WHITEOUT_PREFIX,
)

__all__ = [
    "X_EOF", "X_DIR", "X_SPECIAL", "X_DONE", "X_ARCHIVE", "X_UNSAFE", "X_LIMIT", "X_CORRUPT",
    "X_FLUSH", "X_WARN", "EXTRACT_API_NAMES", "utf8_locale", "Extractor", "extract_normalize", "extract_open_dir",
    "extract_remove", "extract_dir_times", "DirCopier",
    "W_OPAQUE", "W_ARCHIVE", "W_STOP", "W_MODIFY", "W_ADD", "W_DELETE", "WALK_API_NAMES",
    "ScanRecord", "DirScanner", "EntryWriter", "ScannedDir", "FdOutput", "walk_changes",
]

# The compiled module has no type information: everything from it is Any until wrapped here.
ffi: Any = _native.ffi  # type: ignore[attr-defined,unused-ignore]
lib: Any = _native.lib  # type: ignore[attr-defined,unused-ignore]


def _check_names() -> None:
    """The reserved names the C gives meaning to must be the ones aufs.whiteouts spells."""
    python = {
        lib.AUFS_NAME_WHITEOUT_PREFIX: WHITEOUT_PREFIX,
        lib.AUFS_NAME_META_PREFIX: META_PREFIX,
        lib.AUFS_NAME_OPAQUE: OPAQUE_NAME,
        lib.AUFS_NAME_XATTR_TRUSTED_OVERLAY: PRIVATE_XATTR_PREFIXES[0],
        lib.AUFS_NAME_XATTR_USER_OVERLAY: PRIVATE_XATTR_PREFIXES[1],
        lib.AUFS_NAME_XATTR_FUSE_OVERLAY: PRIVATE_XATTR_PREFIXES[2],
    }
    if len(python) != lib.AUFS_NAME_COUNT or len(PRIVATE_XATTR_PREFIXES) != 3:
        raise ImportError("aufs._native: reserved names out of step with aufs.whiteouts; rebuild")
    for which, spelled in python.items():
        c_name = lib.aufs_name(which)
        if c_name == ffi.NULL or ffi.string(c_name) != spelled.encode():
            raise ImportError(f"aufs._native spells reserved name {which} differently from "
                              f"aufs.whiteouts ({spelled!r}); rebuild")
    if set(OPAQUE_XATTRS) != {p + "opaque" for p in PRIVATE_XATTR_PREFIXES}:
        raise ImportError("aufs.whiteouts: opaque xattrs are not the C's (PREFIX + 'opaque')")


_check_names()


# --- extraction ---
# Owned by aufs.apply: the C writer of layer-tar entries (csrc/extract.c).

X_EOF = int(lib.AUFS_X_EOF)
X_DIR = int(lib.AUFS_X_DIR)
X_SPECIAL = int(lib.AUFS_X_SPECIAL)
X_DONE = int(lib.AUFS_X_DONE)
X_ARCHIVE = int(lib.AUFS_X_ARCHIVE)
X_UNSAFE = int(lib.AUFS_X_UNSAFE)
X_LIMIT = int(lib.AUFS_X_LIMIT)
X_CORRUPT = int(lib.AUFS_X_CORRUPT)
X_FLUSH = int(lib.AUFS_X_FLUSH)
X_WARN = int(lib.AUFS_X_WARN)

# directory times collected by the C writer between returns (see struct aufs_xctx)
_DIRBUF_SIZE = 1 << 20
_DIR_RECORD = struct.Struct("=qqI")
if _DIR_RECORD.size != lib.AUFS_X_DIR_RECORD_HEAD:  # pragma: no cover - a build mismatch
    raise ImportError("aufs._native: directory time records have an unexpected layout; rebuild")

EXTRACT_API_NAMES = (
    "read_next_header", "read_data_block", "entry_pathname", "entry_hardlink", "entry_symlink",
    "entry_mode", "entry_uid", "entry_gid", "entry_mtime", "entry_mtime_nsec", "entry_size",
    "entry_rdevmajor", "entry_rdevminor", "entry_xattr_reset", "entry_xattr_next",
    "entry_sparse_count", "entry_acl_reset", "entry_acl_next", "entry_sparse_reset",
    "entry_sparse_next",
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
                 max_bytes: Optional[int] = None, report_all: bool = False,
                 rootless: "bool | str" = False) -> None:
        self._api = ffi.new("struct aufs_xapi *")
        for name in EXTRACT_API_NAMES:
            setattr(self._api, name, ffi.cast("void *", api[name]))
        ctx = ffi.new("struct aufs_xctx *")
        ctx.api = self._api
        ctx.archive = ffi.cast("void *", archive)
        ctx.root_fd = root_fd
        ctx.flags = (lib.AUFS_X_FLAG_REPORT_ALL if report_all else 0) | \
            (lib.AUFS_X_FLAG_ROOTLESS if rootless else 0) | \
            (lib.AUFS_X_FLAG_USERNS if rootless == "userns" else 0)
        ctx.max_bytes = -1 if max_bytes is None else max_bytes
        ctx.parent_fd = -1
        self._dirbuf = ffi.new("char[]", _DIRBUF_SIZE)
        ctx.dirbuf = self._dirbuf
        ctx.dirbuf_size = _DIRBUF_SIZE
        self._ctx = ctx

    def next(self) -> int:
        """Write entries until one needs the caller; the ``X_*`` code, or ``-errno``."""
        return int(lib.aufs_x_next(self._ctx))

    def resume(self) -> int:
        """After ``X_WARN``, accepted: write the warned entry and go on as :meth:`next` does."""
        return int(lib.aufs_x_resume(self._ctx))

    def refuse(self) -> None:
        """After ``X_WARN``, refused: the header counts as failed (see :attr:`header_failed`)."""
        lib.aufs_x_refuse(self._ctx)

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


@contextlib.contextmanager
def utf8_locale() -> Iterator[None]:
    """The calling thread's LC_CTYPE is C.UTF-8 inside (``uselocale``; other threads keep
    theirs), so libarchive reads UTF-8 names as they are whatever the process's locale
    (LC_ALL=C, POSIX); unchanged if the C library has no C.UTF-8."""
    loc = lib.aufs_x_utf8_locale()
    if loc == ffi.NULL:
        yield
        return
    old = lib.aufs_x_use_locale(loc)
    try:
        yield
    finally:
        lib.aufs_x_use_locale(old)
        lib.aufs_x_free_locale(loc)


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
# and the change list computed in C (csrc/walk.c).

W_OPAQUE = int(lib.AUFS_W_OPAQUE)
W_ARCHIVE = int(lib.AUFS_W_ARCHIVE)

# struct aufs_wrec, as the C lays it out
_WREC = struct.Struct("=QQQQqqIIIIIIII")
if _WREC.size != ffi.sizeof("struct aufs_wrec"):  # pragma: no cover - a build mismatch
    raise ImportError("aufs._native: struct aufs_wrec has an unexpected layout; rebuild")
W_STOP = int(lib.AUFS_W_STOP)

WALK_API_NAMES = (
    "entry_clear", "entry_copy_pathname", "entry_copy_symlink", "entry_copy_hardlink",
    "entry_set_mode", "entry_set_size", "entry_set_uid", "entry_set_gid", "entry_set_mtime",
    "entry_set_rdevmajor", "entry_set_rdevminor", "entry_xattr_add_entry", "entry_acl_add_entry",
    "entry_sparse_add_entry", "entry_sparse_reset", "entry_sparse_next", "write_header",
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
            n = int(lib.aufs_w_scan(dir_fd, lib.AUFS_W_SCAN_STAT, self._buf, self._size))
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
    ``struct archive_entry *`` (reused for every entry) as addresses. ``out`` is the
    archive's output when it is an :class:`FdOutput`: file data is then read straight into
    its buffer instead of being copied there by libarchive.
    """

    def __init__(self, archive: int, entry: int, api: "dict[str, int]",
                 buffer_size: int = 1 << 20, out: "Optional[FdOutput]" = None,
                 rootless_owner: "Optional[Tuple[int, int]]" = None) -> None:
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
        if out is not None:
            ctx.out = out._out
        if rootless_owner is not None:  # read back what a rootless extraction recorded
            ctx.flags = lib.AUFS_W_ROOTLESS
            ctx.own_uid, ctx.own_gid = rootless_owner
        self._out = out  # the C holds a pointer into it
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
        return ScannedDir(recs, order, n, bool(self._flags[0] & lib.AUFS_W_SCAN_HAS_MARKER))

    def run(self, d: "ScannedDir", dir_fd: int, prefix: bytes, whiteouts: bool = True) -> int:
        """Write the entries of ``d`` from its position on, stopping at a directory or an
        inode with more than one link: 0 when all are written, :data:`W_STOP` (then
        :meth:`ScannedDir.take` gives that entry), or :data:`W_ARCHIVE`; ``OSError`` on a
        failed read. ``whiteouts`` false: leave the whiteouts out (the directory is at or
        below an opaque one of the layer, where they are redundant)."""
        if whiteouts:
            self._ctx.flags &= ~lib.AUFS_W_NO_WHITEOUTS
        else:
            self._ctx.flags |= lib.AUFS_W_NO_WHITEOUTS
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


class FdOutput:
    """An archive's output into the file descriptor ``fd`` (a file, a pipe, a socket; it
    stays the caller's), through libarchive's write callback in C.

    Open the archive unbuffered (``archive_write_set_bytes_per_block(a, 0)``) with
    :attr:`callback` as the writer and :attr:`client_data` as its data: every byte is
    gathered in a buffer of ``size`` bytes and written out when it is full, and an
    :class:`EntryWriter` given this output reads file data straight into that buffer.
    """

    def __init__(self, fd: int, size: int = 1 << 20) -> None:
        if size < 1 << 16:
            raise ValueError("an output buffer holds at least 64 KiB")
        self._buf = _alloc_raw("char[]", size)
        out = ffi.new("struct aufs_wout *")
        out.fd = fd
        out.buf = self._buf
        out.cap = size
        self._out = out
        self.callback = int(ffi.cast("uintptr_t", ffi.addressof(lib, "aufs_w_out_write")))
        """The address of the C write callback (libarchive's ``archive_write_callback``)."""
        self.client_data = int(ffi.cast("uintptr_t", out))
        """The callback's client data: this output's C state."""

    def close(self, block: int, last_block: int) -> int:
        """Pad the end as libarchive's block writer would with ``block`` bytes per block and
        ``last_block`` bytes in the last one, write out what is buffered; the bytes written.
        Raises ``OSError`` (see :attr:`error`) if the fd refuses them."""
        rc = int(lib.aufs_w_out_close(self._out, block, last_block))
        if rc < 0:
            raise oserror(rc)
        return int(self._out.total)

    @property
    def error(self) -> int:
        """The errno of the write to the fd that failed, 0 if none did."""
        return int(self._out.err)


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
