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
  xattrs as ``SCHILY.xattr.*`` records only (what GNU tar and Docker read and write); permissions including setuid/setgid/sticky; xattrs (``security.capability`` too)
  sorted by name; a file whose inode was already written (``st_nlink > 1``) is a hardlink to
  the first name in walk order. The archive is padded to 10240 bytes like ``tar -c``.

Same layer -> same bytes. GNU tar and bsdtar read the result. No tar code is written here:
headers and data go through libarchive (the library python-libarchive-c loads), called via
ctypes with one call per data block of up to 1 MiB so large files stream without Python work
per tar block.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import IO, Callable, Dict, List, Optional, Tuple, Union

import libarchive.ffi as _laffi

from .errors import ArchiveError, NoSpace
from .whiteouts import (
    AUFS_WHITEOUT_MODE,
    OPAQUE_NAME,
    OPAQUE_XATTRS,
    EntryKind,
    WhiteoutFormat,
    classify_entry,
    is_private_xattr,
    whiteout_name,
)

__all__ = ["write_diff"]

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]

_RECORD_SIZE = 10240  # what `tar -c` pads the archive to
_BLOCK_SIZE = 1 << 20  # writes to the output and reads from files, in bytes

_AE_IFREG = 0o100000
_AE_IFDIR = 0o040000
_AE_IFLNK = 0o120000

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
        vp, cp, i, ll, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_size_t
        time_t = _laffi.c_time_t

        def fn(name: str, argtypes: List[type], restype: Optional[type]) -> Callable[..., int]:
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
            "write_open", [vp, vp, _laffi.OPEN_CALLBACK, _laffi.WRITE_CALLBACK, _laffi.CLOSE_CALLBACK], i
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
        self.entry_set_filetype = fn("entry_set_filetype", [vp, ctypes.c_uint], None)
        self.entry_set_perm = fn("entry_set_perm", [vp, ctypes.c_uint], None)
        self.entry_set_size = fn("entry_set_size", [vp, ll], None)
        self.entry_set_uid = fn("entry_set_uid", [vp, ll], None)
        self.entry_set_gid = fn("entry_set_gid", [vp, ll], None)
        self.entry_set_mtime = fn("entry_set_mtime", [vp, time_t, ctypes.c_long], None)
        self.entry_set_rdevmajor = fn("entry_set_rdevmajor", [vp, ctypes.c_uint], None)
        self.entry_set_rdevminor = fn("entry_set_rdevminor", [vp, ctypes.c_uint], None)
        self.entry_xattr_add_entry = fn("entry_xattr_add_entry", [vp, cp, vp, sz], None)


_lib_instance: Optional[_Lib] = None


def _lib() -> _Lib:
    global _lib_instance
    if _lib_instance is None:
        _lib_instance = _Lib()
    return _lib_instance


def _read_xattrs(path: str) -> List[Tuple[bytes, bytes]]:
    """The entry's own xattrs (not the union filesystem's), sorted by name, not following links."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    if not names:
        return []
    out = []
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed while we looked
                continue
            raise
        out.append((os.fsencode(name), value))
    return out


class _Walker:
    """One export run: the archive handle, the entry object, the inode map and a data buffer."""

    def __init__(self, archive: int, fmt: WhiteoutFormat) -> None:
        self.lib = _lib()
        self.archive = archive
        self.fmt = fmt
        self.entry = self.lib.entry_new()
        if not self.entry:
            raise MemoryError("archive_entry_new failed")
        self.first_name: Dict[Tuple[int, int], bytes] = {}
        self.buffer = bytearray(_BLOCK_SIZE)
        self.cbuffer = (ctypes.c_char * _BLOCK_SIZE).from_buffer(self.buffer)

    def close(self) -> None:
        self.lib.entry_free(self.entry)

    # --- libarchive calls, with return codes turned into exceptions -------------------------

    def _check(self, rc: int, what: str) -> None:
        if rc == _ARCHIVE_OK:
            return
        if rc == _ARCHIVE_WARN:
            # pax stores a name that is not valid in the locale's charset as binary: harmless
            return
        raise _archive_failure(self.lib, self.archive, what)

    def _write_header(self, what: bytes) -> None:
        self._check(self.lib.write_header(self.archive, self.entry), f"writing the header of {what!r}")

    def _finish(self, what: bytes) -> None:
        self._check(self.lib.write_finish_entry(self.archive), f"finishing {what!r}")

    def _start(self, name: bytes, filetype: int, perm: int, uid: int, gid: int, mtime_ns: int) -> None:
        lib, e = self.lib, self.entry
        lib.entry_clear(e)
        lib.entry_copy_pathname(e, name)
        lib.entry_set_filetype(e, filetype)
        lib.entry_set_perm(e, perm)
        lib.entry_set_uid(e, uid)
        lib.entry_set_gid(e, gid)
        # whole seconds, as Docker writes layers: sub-second mtimes would cost a pax header
        # per entry and are not kept by most layer tools anyway
        lib.entry_set_mtime(e, mtime_ns // 1_000_000_000, 0)

    # --- entries ---------------------------------------------------------------------------

    def marker(self, name: bytes) -> None:
        """An OCI whiteout or opaque marker: empty regular file with normalised metadata."""
        self._start(name, _AE_IFREG, AUFS_WHITEOUT_MODE, 0, 0, 0)
        self.lib.entry_set_size(self.entry, 0)
        self._write_header(name)
        self._finish(name)

    def content(self, name: bytes, path: str, st: os.stat_result, xattrs: List[Tuple[bytes, bytes]]) -> None:
        """A real entry of the layer; regular files stream their data."""
        lib, e = self.lib, self.entry
        mode = st.st_mode
        self._start(name, stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_mtime_ns)
        is_reg = stat.S_ISREG(mode)
        if st.st_nlink > 1 and not stat.S_ISDIR(mode):
            inode = (st.st_dev, st.st_ino)
            first = self.first_name.get(inode)
            if first is not None:  # the inode's data and xattrs went with its first name
                lib.entry_copy_hardlink(e, first)
                lib.entry_set_size(e, 0)
                self._write_header(name)
                self._finish(name)
                return
            self.first_name[inode] = name
        for key, value in xattrs:
            lib.entry_xattr_add_entry(e, key, value, len(value))
        if is_reg:
            lib.entry_set_size(e, st.st_size)
        else:
            lib.entry_set_size(e, 0)
            if stat.S_ISLNK(mode):
                lib.entry_copy_symlink(e, os.fsencode(os.readlink(path)))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                lib.entry_set_rdevmajor(e, os.major(st.st_rdev))
                lib.entry_set_rdevminor(e, os.minor(st.st_rdev))
        self._write_header(name)
        if is_reg and st.st_size:
            self._stream(path, st.st_size, name)
        self._finish(name)

    def _stream(self, path: str, size: int, name: bytes) -> None:
        """Copy exactly ``size`` bytes of the file (libarchive pads if it shrank meanwhile)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            lib, archive, buf, cbuf = self.lib, self.archive, self.buffer, self.cbuffer
            left = size
            while left > 0:
                n = os.readv(fd, [memoryview(buf)[: min(left, _BLOCK_SIZE)]])
                if n == 0:
                    break
                if lib.write_data(archive, cbuf, n) < 0:
                    raise _archive_failure(lib, archive, f"writing the data of {name!r}")
                left -= n
        finally:
            os.close(fd)

    def walk(self, dir_path: str, prefix: bytes) -> None:
        """Write the entries below ``dir_path`` whose tar names start with ``prefix``."""
        items: List[Tuple[bytes, "os.DirEntry[str]", bool]] = []
        with os.scandir(dir_path) as it:
            for entry in it:
                kind, target = classify_entry(entry, self.fmt)
                if kind is EntryKind.CONTENT:
                    items.append((os.fsencode(entry.name), entry, False))
                elif kind is EntryKind.WHITEOUT:
                    assert target is not None
                    items.append((os.fsencode(whiteout_name(target)), entry, True))
                # opaque markers are written with their directory; metadata never
        items.sort(key=lambda item: item[0])
        previous = None
        for name, entry, is_whiteout in items:
            if name == previous:  # `.wh.X` file beside an X device: one whiteout is enough
                continue
            previous = name
            tar_name = prefix + name
            if is_whiteout:
                self.marker(tar_name)
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISSOCK(st.st_mode):
                continue  # sockets cannot be archived (tar skips them too)
            path = entry.path
            xattrs = _read_xattrs(path)
            if stat.S_ISDIR(st.st_mode):
                opaque = _opaque(path, xattrs)
                xattrs = [(k, v) for k, v in xattrs if not is_private_xattr(os.fsdecode(k))]
                self.content(tar_name + b"/", path, st, xattrs)
                if opaque:
                    self.marker(tar_name + b"/" + _OPAQUE_BYTES)
                self.walk(path, tar_name + b"/")
            else:
                xattrs = [(k, v) for k, v in xattrs if not is_private_xattr(os.fsdecode(k))]
                self.content(tar_name, path, st, xattrs)


_OPAQUE_BYTES = os.fsencode(OPAQUE_NAME)
_OPAQUE_XATTR_BYTES = frozenset(os.fsencode(x) for x in OPAQUE_XATTRS)


def _opaque(path: str, xattrs: List[Tuple[bytes, bytes]]) -> bool:
    """Whether the directory at ``path`` (with these xattrs) is opaque, in either marker form."""
    for key, value in xattrs:
        if key in _OPAQUE_XATTR_BYTES and value == b"y":
            return True
    try:
        return stat.S_ISREG(os.lstat(os.path.join(path, OPAQUE_NAME)).st_mode)
    except FileNotFoundError:
        return False


def _archive_failure(lib: _Lib, archive: int, what: str) -> Exception:
    """The exception for a failed libarchive write call (ENOSPC -> NoSpace, errno -> OSError)."""
    code = lib.errno(archive)
    raw = lib.error_string(archive)
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
        self.fd: Optional[int] = None
        self.callback: Optional[object] = None  # must outlive archive_write_free
        self.written = 0
        self.error: Optional[BaseException] = None
        self._fileobj: Optional[IO[bytes]] = None
        if isinstance(out, (str, os.PathLike)):
            self.fd = os.open(os.fspath(out), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            if lib.write_open_fd(archive, self.fd) != _ARCHIVE_OK:
                raise _archive_failure(lib, archive, "opening the output")
            return
        self._fileobj = out
        self.callback = _laffi.WRITE_CALLBACK(self._on_write)
        if lib.write_open(archive, None, _laffi.NO_OPEN_CB, self.callback, _laffi.NO_CLOSE_CB) != _ARCHIVE_OK:
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
        except BaseException as exc:  # libarchive cannot carry a Python exception through C
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


def write_diff(layer_dir: Union[str, "os.PathLike[str]"], out: PathOrFile, fmt: WhiteoutFormat) -> int:
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
    output: Optional[_Output] = None
    walker: Optional[_Walker] = None
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
            if _opaque(root, _read_xattrs(root)):
                walker.marker(_OPAQUE_BYTES)
            walker.walk(root, b"")
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
