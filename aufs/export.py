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
  permissions including setuid/setgid/sticky; xattrs (``security.capability`` too) in a
  fixed order (handed to libarchive sorted by name; it writes the last one handed first),
  as ``SCHILY.xattr.*`` records (what GNU tar and Docker read and write), POSIX ACLs also
  as ``SCHILY.acl.*`` text (what GNU tar, bsdtar and star restore); names as UTF-8 when
  they are, else their raw bytes with ``hdrcharset=BINARY``; a regular file of 1 MiB or
  more with holes as a GNU sparse 1.0 entry (its data only, holes from SEEK_DATA/SEEK_HOLE,
  so the bytes can follow the filesystem's hole granularity); a file
  whose inode was already written (``st_nlink > 1``) is a hardlink to the first name in walk
  order (which is tar order). The archive is padded to 10240 bytes like ``tar -c``.
* **Robustness**: the walk is iterative (no recursion limit); an entry removed between
  readdir and stat is skipped; any other failure raises, leaving ``out`` incomplete.

Same layer -> same bytes. GNU tar and bsdtar read the result. No tar code is written here:
headers and data go through libarchive (bound by :mod:`aufs._libarchive`). The cost of
a layer of small files is per entry, so the per-entry work is C (``csrc/walk.c``, through
:class:`aufs._fastpaths.EntryWriter`): one call reads a directory (``getdents64`` +
``fstatat``), classifies and sorts it, and one call writes its entries (xattrs, header and
data through libarchive's functions, passed to the C by address) until it meets a
subdirectory or an inode with several links. Python runs per directory: the descent, the
directory fds and the inode map.

Into a file descriptor, libarchive writes unbuffered into a C callback
(:class:`aufs._fastpaths.FdOutput`) that gathers its headers in a 256 KiB buffer; file data is
read straight into that buffer and handed to libarchive in place, so it is copied once in (read)
and once out (write), as GNU tar does. The end is padded as libarchive's 1 MiB block writer
pads it, so every kind of output gets the same bytes.
"""
from __future__ import annotations

import ctypes
import errno
import io
import os
import stat
from typing import IO, Optional, Union

from . import _fastpaths, kernel
from ._libarchive import ARCHIVE_OK, Libarchive, load
from .errors import ArchiveError, NoSpace, PathTooLong
from .whiteouts import (
    AUFS_WHITEOUT_MODE,
    OPAQUE_NAME,
    WhiteoutFormat,
    is_opaque_dir,
)

__all__ = ["write_diff"]

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]

_RECORD_SIZE = 10240  # what `tar -c` pads the archive to
# libarchive's block size when it buffers (a file object without an fd); the end of the
# archive is padded as this block size makes libarchive pad it, whatever the output
_BLOCK_SIZE = 1 << 20
# an fd output's buffer: what one write hands the kernel. A pipe is grown to hold several,
# so the reader drains one while the next is filled
_OUT_BUFFER = 1 << 18
_PIPE_SIZE = 1 << 20

_AE_IFREG = 0o100000

_MARKER_MODE = _AE_IFREG | AUFS_WHITEOUT_MODE


class _Walker:
    """One export run: the archive handle, the entry writer and the inode map.

    Python's part is per directory, not per entry: the C writes every entry of a directory
    in one call until it meets a subdirectory (to descend into, depth first) or an inode with
    several links (the inode map lives here); see :meth:`aufs._fastpaths.EntryWriter.run`.
    """

    def __init__(self, la: Libarchive, archive: int, output: _Output,
                 rootless_owner: tuple[int, int] | None = None) -> None:
        self.lib = la
        self.archive = archive
        self.output = output
        self.entry = la.entry_new()
        if not self.entry:
            raise MemoryError("archive_entry_new failed")
        self.writer = _fastpaths.EntryWriter(archive, self.entry,
                                             la.addresses(_fastpaths.WALK_API_NAMES),
                                             _BLOCK_SIZE, output.fd_output, rootless_owner)
        self.first_name: dict[tuple[int, int], bytes] = {}

    def close(self) -> None:
        self.lib.entry_free(self.entry)

    def _failed(self, rc: int, name: bytes) -> None:
        if rc == _fastpaths.W_ARCHIVE:
            raise self.output.failure(self.lib, self.archive, f"writing {name!r}")

    def marker(self, name: bytes) -> None:
        """An OCI whiteout or opaque marker: empty regular file with normalised metadata."""
        self._failed(self.writer.write(-1, -1, None, name, None, _MARKER_MODE, 0, 0, 0, 0, 0),
                     name)

    def walk(self, root_fd: int, root_opaque: bool) -> None:
        """Write every entry below the directory open as ``root_fd``.

        Iterative (depth is bounded by PATH_MAX only) and relative to directory fds opened
        with ``O_NOFOLLOW`` one component at a time, so an entry swapped for a symlink while
        the walk runs (a mounted layer) can never lead it outside the layer. At most
        ``_MAX_DIR_FDS`` directory fds stay open; deeper ones are reopened the same way.
        """
        if root_opaque:
            self.marker(_OPAQUE_BYTES)
        stack = [_Dir(self.writer.scan(root_fd), root_fd, b"", b"", root_opaque)]
        try:
            self._walk(stack)
        finally:
            for frame in stack[1:]:
                if frame.fd is not None:
                    os.close(frame.fd)

    def _walk(self, stack: list[_Dir]) -> None:
        writer = self.writer
        write, run = writer.write, writer.run
        first_name = self.first_name
        while stack:
            frame = stack[-1]
            dir_fd = frame.fd
            if dir_fd is None:
                dir_fd = _dir_fd(stack)
            # at or below an opaque directory of the layer a whiteout is redundant (a layer an
            # older aufs stored may hold some): the marker says it all
            rc = run(frame.entries, dir_fd, frame.prefix, not frame.opaque)
            if rc == 0:  # all of this directory is written
                stack.pop()
                if stack and frame.fd is not None:  # never the root: the caller owns it
                    os.close(frame.fd)
                continue
            if rc != _fastpaths.W_STOP:
                self._failed(rc, frame.prefix + frame.entries.name_at(int(frame.entries.pos[0])))
            name, mode, uid, gid, mtime, _, size, rdev, nlink, ino, dev = frame.entries.take()
            # mtime in whole seconds, as Docker writes layers (a sub-second part costs a pax
            # record): the scan's seconds are already the floor
            tar_name = frame.prefix + name
            if not stat.S_ISDIR(mode):  # an inode with several links
                inode = (dev, ino)
                first = first_name.get(inode)
                if first is not None:  # the inode's data and xattrs went with its first name
                    # dir_fd: a rootless store reads the inode's recorded owner through it
                    self._failed(write(dir_fd, -1, name, tar_name, first, mode, uid, gid, mtime,
                                       0, 0), tar_name)
                    continue
                first_name[inode] = tar_name
                self._failed(write(dir_fd, -1, name, tar_name, None, mode, uid, gid, mtime,
                                   size, rdev), tar_name)
                continue
            tar_name += b"/"
            fd = os.open(name, _O_DIR, dir_fd=dir_fd)
            try:
                rc = write(dir_fd, fd, name, tar_name, None, mode, uid, gid, mtime, 0, 0)
                self._failed(rc, tar_name)
                children = writer.scan(fd)
            except BaseException:
                os.close(fd)
                raise
            opaque = rc == _fastpaths.W_OPAQUE or children.has_marker
            stack.append(_Dir(children, fd, name, tar_name, opaque or frame.opaque))
            if opaque:
                self.marker(tar_name + _OPAQUE_BYTES)
            spare = len(stack) - 1 - _MAX_DIR_FDS
            if spare > 0 and stack[spare].fd is not None:
                os.close(stack[spare].fd)  # type: ignore[arg-type]
                stack[spare].fd = None


class _Dir:
    """A directory being written: its entries, an fd on it (None while closed to stay under
    ``_MAX_DIR_FDS``), its name in its parent, its tar name (with the slash), and whether it
    is at or below an opaque directory of the layer."""

    __slots__ = ("entries", "fd", "name", "prefix", "opaque")

    def __init__(self, entries: _fastpaths.ScannedDir, fd: int | None, name: bytes,
                 prefix: bytes, opaque: bool = False) -> None:
        self.entries = entries
        self.fd = fd
        self.name = name
        self.prefix = prefix
        self.opaque = opaque


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
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


_OPAQUE_BYTES = os.fsencode(OPAQUE_NAME)


def _archive_failure(la: Libarchive, archive: int, what: str) -> Exception:
    """The exception for a failed libarchive write call (ENOSPC -> NoSpace, errno -> OSError)."""
    return _failure(la.errno(archive), f"{what}: {la.message(archive)}",
                    f"libarchive failed {what}: {la.message(archive)}")


def _failure(code: int, message: str, fallback: str, path: Optional[str] = None) -> Exception:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left while {message}")
    if code > 0:
        return OSError(code, f"{os.strerror(code)} ({message})", path)
    return ArchiveError(fallback)


def _stream_fd(out: IO[bytes]) -> Optional[int]:
    """The fd under a plain binary file object (``open(..., "wb")``, ``sys.stdout.buffer``, a
    subprocess pipe), flushed so the fd is where the object's next byte goes; None for
    anything else (a wrapper such as ``GzipFile`` exposes an fd it must not be bypassed on,
    and a non-blocking fd would fail with EAGAIN)."""
    raw = getattr(out, "raw", out) if isinstance(out, (io.BufferedWriter, io.BufferedRandom)) else out
    if type(raw) is not io.FileIO or raw.closed:
        return None
    fd = raw.fileno()
    if not os.get_blocking(fd):
        return None
    out.flush()
    return fd


class _Output:
    """Where the archive goes. An fd (ours for a path, or a plain file object's): libarchive
    writes unbuffered into a C callback that gathers the bytes and writes the fd directly
    (:class:`aufs._fastpaths.FdOutput`, no copy of file data in user space). Any other file
    object: libarchive buffers blocks and a ctypes callback writes them to it."""

    def __init__(self, la: Libarchive, archive: int, out: PathOrFile) -> None:
        self.fd_output: _fastpaths.FdOutput | None = None
        self.callback: object | None = None  # must outlive archive_write_free
        self.written = 0
        self.error: BaseException | None = None
        self._own_fd: int | None = None
        self._name: str | None = None
        self._fileobj: IO[bytes] | None = None
        if isinstance(out, (str, os.PathLike)):
            self._name = os.fspath(out)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            fd: int | None = os.open(self._name, flags, 0o644)
            self._own_fd = fd
        else:
            self._fileobj = out
            fd = _stream_fd(out)
        if fd is not None:
            # a 64 KiB pipe takes each write in rounds of sleeping and waking; with the reader
            # on the other core those rounds made an export swing between 1.1x and 1.45x of
            # `tar -c` (BENCHMARKS.md): a larger one lets it drain a write while the next fills
            kernel.grow_pipe(fd, _PIPE_SIZE)
            self.fd_output = _fastpaths.FdOutput(fd, _OUT_BUFFER)
            la.write_set_bytes_per_block(archive, 0)
            rc = la.write_open(archive, self.fd_output.client_data, None,
                               self.fd_output.callback, None)
        else:
            la.write_set_bytes_per_block(archive, _BLOCK_SIZE)
            la.write_set_bytes_in_last_block(archive, _RECORD_SIZE)
            self.callback = _WRITE_CALLBACK(self._on_write)
            rc = la.write_open(archive, None, None, self.callback, None)
        if rc != ARCHIVE_OK:
            raise _archive_failure(la, archive, "opening the output")

    def failure(self, la: Libarchive, archive: int, what: str) -> Exception:
        """The exception for a failed libarchive call: the output's own error if it failed."""
        if self.fd_output is not None and self.fd_output.error:
            code = self.fd_output.error
            return _failure(code, f"{what}: writing the archive", "", self._name)
        return _archive_failure(la, archive, what)

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
        """Write out the end of the archive; the number of bytes written."""
        if self.fd_output is not None:
            try:
                written = self.fd_output.close(_BLOCK_SIZE, _RECORD_SIZE)
            except OSError as exc:
                raise _failure(exc.errno or 0, "writing the end of the archive", "",
                               self._name) from exc
            if self._fileobj is not None and self._fileobj.seekable():
                self._fileobj.seek(0, os.SEEK_CUR)  # the object learns where the fd now is
            return written
        assert self._fileobj is not None
        flush = getattr(self._fileobj, "flush", None)
        if flush is not None:
            flush()
        return self.written

    def close(self) -> None:
        if self._own_fd is not None:
            os.close(self._own_fd)
            self._own_fd = None


# libarchive's archive_write_callback
_WRITE_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_size_t)


def write_diff(layer_dir: str | os.PathLike[str], out: PathOrFile, fmt: WhiteoutFormat,
               rootless_owner: tuple[int, int] | None = None) -> int:
    """Write the layer directory ``layer_dir`` (format ``fmt``) as a pax layer tar to ``out``.

    ``out`` is a path (created or truncated) or a writable binary file object (written
    sequentially from its current position; a pipe is fine). A path, and a plain file object
    over a blocking fd (``open(..., "wb")``, ``sys.stdout.buffer``, a subprocess pipe; flushed
    first, its position updated after), are written through the fd with no copy of file data
    in user space; a pipe is grown to 1 MiB. Other file objects get the same bytes through
    ``write()``. Returns the number of bytes written. The bytes depend only on the layer's
    content (see the module docstring). ``rootless_owner`` (uid, gid): the layer is a rootless
    store's (:mod:`aufs.rootless`) whose files those ids own; its recorded owners, modes,
    types and xattrs are written, and unrecorded entries of that owner as root's.
    Raises ``NoSpace`` if the output filesystem fills up, ``OSError`` for a failed read or
    write, ``FileNotFoundError`` if ``layer_dir`` does not exist.
    """
    if isinstance(out, io.TextIOBase):
        raise TypeError(f"binary file expected as the diff's target, not a text-mode "
                        f"{type(out).__name__} (open it with 'wb')")
    root = os.fspath(layer_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "layer directory not found", root)
    # names go out as UTF-8 when they are valid UTF-8, else raw with hdrcharset=BINARY,
    # whatever the process's locale (LC_ALL=C would make every non-ASCII name binary): the
    # bytes stay the layer's own, and the same layer gives the same tar everywhere
    with _fastpaths.utf8_locale():
        return _write_diff(root, out, fmt, rootless_owner)


def _write_diff(root: str, out: PathOrFile, fmt: WhiteoutFormat,
                rootless_owner: tuple[int, int] | None) -> int:
    la = load()
    archive = la.write_new()
    if not archive:
        raise MemoryError("archive_write_new failed")
    output: _Output | None = None
    walker: _Walker | None = None
    try:
        if la.write_set_format_pax(archive) != ARCHIVE_OK:
            raise _archive_failure(la, archive, "selecting the pax format")
        if la.write_set_options(archive, b"pax:xattrheader=SCHILY") != ARCHIVE_OK:
            raise _archive_failure(la, archive, "selecting SCHILY xattr records")
        output = _Output(la, archive, out)
        walker = _Walker(la, archive, output, rootless_owner)
        try:
            root_fd = os.open(root, _O_DIR)
            try:
                walker.walk(root_fd, is_opaque_dir(root_fd, fmt))
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG or isinstance(exc, PathTooLong):
                    raise
                raise PathTooLong.of(exc.filename, "cannot write the layer's diff") from exc
            finally:
                os.close(root_fd)
            if la.write_close(archive) != ARCHIVE_OK:
                raise output.failure(la, archive, "closing the archive")
        except Exception as exc:
            if output.error is not None:  # the file object's own error explains the failure
                raise output.error from exc
            raise
        return output.finish()
    finally:
        if walker is not None:
            walker.close()
        la.write_free(archive)
        if output is not None:
            output.close()
