"""Writing a layer directory out as a deterministic pax layer tar (``Driver.diff``).

This module owns the tar form of a layer's own changes. A layer's diff directory already
holds exactly its own changes, so :func:`write_diff` walks it and writes every entry:

* **Order**: depth first, the entries of each directory sorted by their tar name as bytes,
  a directory before its content; the root directory itself is not written (as in every
  Docker/OCI layer). An opaque directory's ``DIR/.wh..wh..opq`` comes right after ``DIR``
  (for an opaque root it is the first entry).
* **Whiteouts** in OCI form whatever the on-disk format: an empty regular file ``.wh.NAME``.
  Whiteout and opaque-marker entries are normalised (mode 0444, uid/gid 0, mtime 0), so an
  AUFS-format and an overlay-format layer with the same meaning give the same bytes.
* **Never written**: AUFS metadata (``.wh..wh.*``), fuse-overlayfs strays, sockets, and the
  union filesystem's own xattrs (``trusted.overlay.*`` and kin, see
  :func:`aufs.whiteouts.is_private_xattr`).
* **Headers**: libarchive's pax writer; numeric uid/gid only (no user or group names, so the
  bytes do not depend on the host's passwd/group files); mtime in whole seconds (as Docker
  writes layers: a sub-second mtime would cost a pax header per entry); no atime or ctime;
  permissions including setuid/setgid/sticky; xattrs (``security.capability`` too) sorted by
  name, as ``SCHILY.xattr.*`` records only (what GNU tar and Docker read and write); a file
  whose inode was already written (``st_nlink > 1``) is a hardlink to the first name in walk
  order (which is tar order). The archive is padded to 10240 bytes like ``tar -c``.
* **Robustness**: the walk is iterative (no recursion limit); an entry removed between
  readdir and stat is skipped; any other failure raises, leaving ``out`` incomplete.

Same layer -> same bytes. GNU tar and bsdtar read the result. No tar code is written here:
headers and data go through libarchive (the library python-libarchive-c loads), called via
ctypes with one call per data block of up to 1 MiB so large files stream without Python work
per tar block.
"""
from __future__ import annotations

import ctypes
import errno
import io
import os
import stat
from collections.abc import Iterator
from typing import IO, Any, Callable, Optional, Union, cast

import libarchive.ffi as _laffi  # type: ignore[import-untyped]

from .errors import ArchiveError, NoSpace
from .whiteouts import (
    AUFS_WHITEOUT_MODE,
    OPAQUE_NAME,
    OPAQUE_XATTRS,
    WHITEOUT_PREFIX,
    EntryKind,
    WhiteoutFormat,
    classify,
    is_opaque_dir,
    is_private_xattr,
)

__all__ = ["write_diff"]

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]

_RECORD_SIZE = 10240  # what `tar -c` pads the archive to
_BLOCK_SIZE = 1 << 20  # writes to the output and reads from files, in bytes

_AE_IFREG = 0o100000

_ARCHIVE_OK = 0
_ARCHIVE_WARN = -20


class _Lib:
    """ctypes prototypes for the libarchive calls made per entry and per block.

    A private ``CDLL`` handle on the same library python-libarchive-c loaded: its function
    objects are ours, so setting prototypes here never changes python-libarchive-c's, and
    return codes are checked here (libarchive-c would only log warnings).
    """

    def __init__(self) -> None:
        lib = ctypes.CDLL(_laffi.libarchive_path)
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        ll, sz = ctypes.c_longlong, ctypes.c_size_t
        time_t = _laffi.c_time_t

        def fn(name: str, argtypes: list[type], restype: type | None) -> Callable[..., int]:
            f = getattr(lib, "archive_" + name)
            f.argtypes = argtypes
            f.restype = restype
            return f  # type: ignore[no-any-return]

        self.write_new = fn("write_new", [], vp)
        self.write_set_format_pax = fn("write_set_format_pax", [vp], i)
        self.write_set_options = fn("write_set_options", [vp, cp], i)
        self.write_set_bytes_per_block = fn("write_set_bytes_per_block", [vp, i], i)
        self.write_set_bytes_in_last_block = fn("write_set_bytes_in_last_block", [vp, i], i)
        self.write_open_fd = fn("write_open_fd", [vp, i], i)
        self.write_open = fn(
            "write_open",
            [vp, vp, _laffi.OPEN_CALLBACK, _laffi.WRITE_CALLBACK, _laffi.CLOSE_CALLBACK],
            i,
        )
        self.write_header = fn("write_header", [vp, vp], i)
        self.write_data = fn("write_data", [vp, vp, sz], ctypes.c_ssize_t)
        self.write_finish_entry = fn("write_finish_entry", [vp], i)
        self.write_close = fn("write_close", [vp], i)
        self.write_free = fn("write_free", [vp], i)
        self.filter_bytes = fn("filter_bytes", [vp, i], ll)
        self.errno = fn("errno", [vp], i)
        self.error_string = fn("error_string", [vp], cp)
        self.entry_new = fn("entry_new", [], vp)
        self.entry_clear = fn("entry_clear", [vp], vp)
        self.entry_free = fn("entry_free", [vp], None)
        self.entry_copy_pathname = fn("entry_copy_pathname", [vp, cp], None)
        self.entry_copy_symlink = fn("entry_copy_symlink", [vp, cp], None)
        self.entry_copy_hardlink = fn("entry_copy_hardlink", [vp, cp], None)
        self.entry_set_mode = fn("entry_set_mode", [vp, ctypes.c_uint], None)
        self.entry_set_size = fn("entry_set_size", [vp, ll], None)
        self.entry_set_uid = fn("entry_set_uid", [vp, ll], None)
        self.entry_set_gid = fn("entry_set_gid", [vp, ll], None)
        self.entry_set_mtime = fn("entry_set_mtime", [vp, time_t, ctypes.c_long], None)
        self.entry_set_rdevmajor = fn("entry_set_rdevmajor", [vp, ctypes.c_uint], None)
        self.entry_set_rdevminor = fn("entry_set_rdevminor", [vp, ctypes.c_uint], None)
        self.entry_xattr_add_entry = fn("entry_xattr_add_entry", [vp, cp, vp, sz], None)


_lib_instance: _Lib | None = None


def _lib() -> _Lib:
    global _lib_instance
    if _lib_instance is None:
        _lib_instance = _Lib()
    return _lib_instance


# (tar name, name in its directory, lstat; None for a whiteout)
_Item = tuple[bytes, str, Optional[os.stat_result]]


class _Walker:
    """One export run: the archive handle, the entry object, the inode map and a data buffer.

    The per-entry path is deliberately flat (local names, few calls): for trees of small files
    the cost is Python and ctypes overhead per entry, not data.
    """

    def __init__(self, archive: int, fmt: WhiteoutFormat) -> None:
        self.lib = _lib()
        self.archive = archive
        self.fmt = fmt
        self.entry = self.lib.entry_new()
        if not self.entry:
            raise MemoryError("archive_entry_new failed")
        self.first_name: dict[tuple[int, int], bytes] = {}
        self.buffer = bytearray(_BLOCK_SIZE)
        self.view = memoryview(self.buffer)
        self.cbuffer = (ctypes.c_char * _BLOCK_SIZE).from_buffer(self.buffer)

    def close(self) -> None:
        self.view.release()
        self.lib.entry_free(self.entry)

    def _header(self, name: bytes) -> None:
        rc = self.lib.write_header(self.archive, self.entry)
        # ARCHIVE_WARN: pax stored a name that is not valid in the locale's charset as binary
        if rc != _ARCHIVE_OK and rc != _ARCHIVE_WARN:
            raise _archive_failure(self.lib, self.archive, f"writing the header of {name!r}")

    def marker(self, name: bytes) -> None:
        """An OCI whiteout or opaque marker: empty regular file with normalised metadata."""
        lib, e = self.lib, self.entry
        lib.entry_clear(e)
        lib.entry_copy_pathname(e, name)
        lib.entry_set_mode(e, _AE_IFREG | AUFS_WHITEOUT_MODE)
        lib.entry_set_size(e, 0)
        lib.entry_set_mtime(e, 0, 0)
        self._header(name)

    def _stream(self, fd: int, size: int, name: bytes) -> None:
        """Copy exactly ``size`` bytes of the open file (libarchive pads if it shrank meanwhile)."""
        lib, archive, view, cbuf = self.lib, self.archive, self.view, self.cbuffer
        left = size
        while left > 0:
            n = _read_into(fd, view[:left] if left < _BLOCK_SIZE else view)
            if n == 0:
                break
            if lib.write_data(archive, cbuf, n) < 0:
                raise _archive_failure(lib, archive, f"writing the data of {name!r}")
            left -= n

    def _scan(self, dir_fd: int, prefix: bytes) -> tuple[list[_Item], bool]:
        """The entries to write for one directory, sorted, and whether it holds ``.wh..wh..opq``.

        Whiteouts are turned into their OCI names here (so they sort by those names in both
        formats); opaque markers, metadata and sockets are left out.
        """
        items: list[_Item] = []
        has_marker = False
        with os.scandir(dir_fd) as it:
            for entry in it:
                name = entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since readdir (a mounted layer): nothing to write
                mode = st.st_mode
                if name[:4] == WHITEOUT_PREFIX or (stat.S_ISCHR(mode) and st.st_rdev == 0):
                    kind, target = classify(name, mode, st.st_rdev, self.fmt)
                    if kind is EntryKind.WHITEOUT:
                        assert target is not None
                        tar_name = prefix + _WH_PREFIX + os.fsencode(target)
                        items.append((tar_name, name, None))
                    elif kind is EntryKind.OPAQUE_MARKER:
                        has_marker = True
                    continue
                if stat.S_ISSOCK(mode):
                    continue  # sockets cannot be archived (tar skips them too)
                items.append((prefix + os.fsencode(name), name, st))
        items.sort(key=_first)
        return items, has_marker

    def walk(self, root_fd: int, root_opaque: bool) -> None:
        """Write every entry below the directory open as ``root_fd``.

        Iterative (depth is bounded by PATH_MAX only) and relative to directory fds opened
        with ``O_NOFOLLOW`` one component at a time, so an entry swapped for a symlink while
        the walk runs (a mounted layer) can never lead it outside the layer. At most
        ``_MAX_DIR_FDS`` directory fds stay open; deeper ones are reopened the same way.
        """
        if root_opaque:
            self.marker(_OPAQUE_BYTES)
        items, _ = self._scan(root_fd, b"")
        stack = [_Dir(iter(items), root_fd, "")]
        try:
            self._walk(stack)
        finally:
            for frame in stack[1:]:
                if frame.fd is not None:
                    os.close(frame.fd)

    def _walk(self, stack: list[_Dir]) -> None:
        lib, e, archive = self.lib, self.entry, self.archive
        write_header = lib.write_header
        previous = None
        while stack:
            item = next(stack[-1].items, None)
            if item is None:
                frame = stack.pop()
                if stack and frame.fd is not None:  # never the root: the caller owns it
                    os.close(frame.fd)
                continue
            tar_name, name, info = item
            if tar_name == previous:  # `.wh.X` file beside an X device: one whiteout is enough
                continue
            previous = tar_name
            if info is None:
                self.marker(tar_name)
                continue
            st = info
            mode = st.st_mode
            is_dir = stat.S_ISDIR(mode)
            if is_dir:
                tar_name += b"/"
            lib.entry_clear(e)
            lib.entry_copy_pathname(e, tar_name)
            lib.entry_set_mode(e, mode)
            if st.st_uid:
                lib.entry_set_uid(e, st.st_uid)
            if st.st_gid:
                lib.entry_set_gid(e, st.st_gid)
            # whole seconds, as Docker writes layers (a sub-second part costs a pax record)
            lib.entry_set_mtime(e, st.st_mtime_ns // 1_000_000_000, 0)
            if st.st_nlink > 1 and not is_dir:
                inode = (st.st_dev, st.st_ino)
                first = self.first_name.get(inode)
                if first is not None:  # the inode's data and xattrs went with its first name
                    lib.entry_copy_hardlink(e, first)
                    lib.entry_set_size(e, 0)
                    self._header(tar_name)
                    continue
                self.first_name[inode] = tar_name
            dir_fd = stack[-1].fd
            if dir_fd is None:
                dir_fd = _dir_fd(stack)
            if stat.S_ISREG(mode):
                # O_NONBLOCK: a file swapped for a fifo meanwhile must not hang the export
                fd = os.open(name, _O_FILE, dir_fd=dir_fd)
                try:
                    keys = _list_xattrs(fd)
                    if keys:  # most files have none
                        self._add_xattrs(fd, keys)
                    size = st.st_size
                    lib.entry_set_size(e, size)
                    rc = write_header(archive, e)
                    # ARCHIVE_WARN: a name not valid in the locale's charset, stored as binary
                    if rc != _ARCHIVE_OK and rc != _ARCHIVE_WARN:
                        raise _archive_failure(lib, archive, f"writing the header of {tar_name!r}")
                    if size:
                        self._stream(fd, size, tar_name)
                finally:
                    os.close(fd)
            elif is_dir:
                fd = os.open(name, _O_DIR, dir_fd=dir_fd)
                try:
                    opaque = self._add_xattrs(fd)
                    lib.entry_set_size(e, 0)
                    self._header(tar_name)
                    children, has_marker = self._scan(fd, tar_name)
                except BaseException:
                    os.close(fd)
                    raise
                stack.append(_Dir(iter(children), fd, name))
                if opaque or has_marker:
                    self.marker(tar_name + _OPAQUE_BYTES)
                spare = len(stack) - 1 - _MAX_DIR_FDS
                if spare > 0 and stack[spare].fd is not None:
                    os.close(stack[spare].fd)  # type: ignore[arg-type]
                    stack[spare].fd = None
            else:
                # no fd can be opened on these: their xattrs are read through the dir fd
                self._add_xattrs(f"/proc/self/fd/{dir_fd}/{name}")
                lib.entry_set_size(e, 0)
                if stat.S_ISLNK(mode):
                    lib.entry_copy_symlink(e, os.fsencode(os.readlink(name, dir_fd=dir_fd)))
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    lib.entry_set_rdevmajor(e, os.major(st.st_rdev))
                    lib.entry_set_rdevminor(e, os.minor(st.st_rdev))
                self._header(tar_name)

    def _add_xattrs(self, target: int | str, keys: list[str] | None = None) -> bool:
        """Put the entry's own xattrs on the archive entry; True if an opaque xattr is set.

        ``target`` is an fd, or a path whose last component is not followed; ``keys`` its
        xattr names if already listed.
        """
        opaque = False
        xattrs: list[tuple[bytes, bytes]] = []
        for key in _list_xattrs(target) if keys is None else keys:
            try:
                if isinstance(target, int):
                    value = os.getxattr(target, key)
                else:
                    value = os.getxattr(target, key, follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.ENODATA:  # removed while we looked
                    continue
                raise
            if is_private_xattr(key):
                opaque = opaque or (key in OPAQUE_XATTRS and value == b"y")
                continue
            xattrs.append((os.fsencode(key), value))
        # libarchive writes xattrs in the order they were added: sort for determinism
        xattrs.sort()
        for key_b, value in xattrs:
            self.lib.entry_xattr_add_entry(self.entry, key_b, value, len(value))
        return opaque


class _Dir:
    """A directory being written: its remaining entries, an fd on it (None while closed to
    stay under ``_MAX_DIR_FDS``) and its name in its parent."""

    __slots__ = ("fd", "items", "name")

    def __init__(self, items: Iterator[_Item], fd: int | None, name: str) -> None:
        self.items = items
        self.fd = fd
        self.name = name


def _dir_fd(stack: list[_Dir]) -> int:
    """An fd on the directory at the top of ``stack``, reopening closed ones from the nearest
    open ancestor, one ``O_NOFOLLOW`` component at a time."""
    top = stack[-1]
    if top.fd is not None:
        return top.fd
    i = len(stack) - 1
    while stack[i].fd is None:
        i -= 1
    fd = stack[i].fd
    assert fd is not None
    for j in range(i + 1, len(stack)):
        opened = os.open(stack[j].name, _O_DIR, dir_fd=fd)
        if j - 1 > i:
            os.close(fd)  # an intermediate directory we opened only to get here
        fd = opened
    top.fd = fd
    return fd


_MAX_DIR_FDS = 128
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


_WH_PREFIX = os.fsencode(WHITEOUT_PREFIX)
_OPAQUE_BYTES = os.fsencode(OPAQUE_NAME)


def _readv_into(fd: int, view: memoryview) -> int:
    return os.readv(fd, [view])


def _fileio_into(fd: int, view: memoryview) -> int:
    # PyPy 3.9 has no os.readv; FileIO.readinto reads into the buffer just the same
    with io.FileIO(fd, "rb", closefd=False) as f:
        return f.readinto(view) or 0


_read_into = _readv_into if hasattr(os, "readv") else _fileio_into


def _first(item: tuple[bytes, Any, Any]) -> bytes:
    return item[0]


def _list_xattrs(target: int | str) -> list[str]:
    try:
        if isinstance(target, int):
            return os.listxattr(target)
        return os.listxattr(target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


def _archive_failure(lib: _Lib, archive: int, what: str) -> Exception:
    """The exception for a failed libarchive write call (ENOSPC -> NoSpace, errno -> OSError)."""
    code = lib.errno(archive)
    raw = cast(Optional[bytes], lib.error_string(archive))
    message = raw.decode("utf-8", "replace") if raw else "unknown libarchive error"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left while {what}: {message}")
    if code > 0:
        return OSError(code, f"{what}: {message}")
    return ArchiveError(f"libarchive failed {what}: {message}")


class _Output:
    """Where the archive goes: our own fd for a path (libarchive writes it directly), or a
    ctypes write callback into a file object. Counts the bytes written either way."""

    def __init__(self, lib: _Lib, archive: int, out: PathOrFile) -> None:
        self.fd: int | None = None
        self.callback: object | None = None  # must outlive archive_write_free
        self.written = 0
        self.error: BaseException | None = None
        self._fileobj: IO[bytes] | None = None
        if isinstance(out, (str, os.PathLike)):
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            self.fd = os.open(os.fspath(out), flags, 0o644)
            if lib.write_open_fd(archive, self.fd) != _ARCHIVE_OK:
                raise _archive_failure(lib, archive, "opening the output")
            return
        self._fileobj = out
        self.callback = _laffi.WRITE_CALLBACK(self._on_write)
        rc = lib.write_open(archive, None, _laffi.NO_OPEN_CB, self.callback, _laffi.NO_CLOSE_CB)
        if rc != _ARCHIVE_OK:
            raise _archive_failure(lib, archive, "opening the output")

    def _on_write(self, _archive: int, _ctx: int, buffer: int, length: int) -> int:
        assert self._fileobj is not None
        try:
            data = memoryview(ctypes.string_at(buffer, length))
            done = 0
            while done < length:
                n = self._fileobj.write(data[done:])
                done = length if n is None else done + n
            self.written += length
            return length
        except BaseException as exc:  # noqa: BLE001 -- C cannot carry it: kept, raised after
            self.error = exc
            return -1

    def finish(self) -> int:
        """Flush and return the number of bytes written."""
        if self.fd is not None:
            return os.lseek(self.fd, 0, os.SEEK_CUR)
        assert self._fileobj is not None
        flush = getattr(self._fileobj, "flush", None)
        if flush is not None:
            flush()
        return self.written

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def write_diff(layer_dir: str | os.PathLike[str], out: PathOrFile, fmt: WhiteoutFormat) -> int:
    """Write the layer directory ``layer_dir`` (format ``fmt``) as a pax layer tar to ``out``.

    ``out`` is a path (created or truncated) or a writable binary file object (written
    sequentially from its current position; a pipe is fine). Returns the number of bytes
    written. The bytes depend only on the layer's content (see the module docstring).
    Raises ``NoSpace`` if the output filesystem fills up, ``OSError`` for a failed read or
    write, ``FileNotFoundError`` if ``layer_dir`` does not exist.
    """
    root = os.fspath(layer_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "layer directory not found", root)
    lib = _lib()
    archive = lib.write_new()
    if not archive:
        raise MemoryError("archive_write_new failed")
    output: _Output | None = None
    walker: _Walker | None = None
    try:
        if lib.write_set_format_pax(archive) != _ARCHIVE_OK:
            raise _archive_failure(lib, archive, "selecting the pax format")
        if lib.write_set_options(archive, b"pax:xattrheader=SCHILY") != _ARCHIVE_OK:
            raise _archive_failure(lib, archive, "selecting SCHILY xattr records")
        lib.write_set_bytes_per_block(archive, _BLOCK_SIZE)
        lib.write_set_bytes_in_last_block(archive, _RECORD_SIZE)
        output = _Output(lib, archive, out)
        walker = _Walker(archive, fmt)
        try:
            root_fd = os.open(root, _O_DIR)
            try:
                walker.walk(root_fd, is_opaque_dir(root_fd, fmt))
            finally:
                os.close(root_fd)
            if lib.write_close(archive) != _ARCHIVE_OK:
                raise _archive_failure(lib, archive, "closing the archive")
        except Exception as exc:
            if output.error is not None:  # the file object's own error explains the failure
                raise output.error from exc
            raise
        return output.finish()
    finally:
        if walker is not None:
            walker.close()
        lib.write_free(archive)
        if output is not None:
            output.close()
