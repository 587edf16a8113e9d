"""Extract a layer tar into a directory, treating every archive as hostile.

This module owns :func:`apply_tar`, the one way a layer tar enters the store. The division of
labour:

* :mod:`aufs.compression` detects the compression and decompresses, checking CRCs and lengths
  (in a feeder thread that writes into a pipe, so decompression and extraction overlap);
* libarchive parses the tar, and only the tar formats (ustar, pax, GNU, v7): never zip, rar, 7z,
  and never one of its external-program filters. Its warnings are failures;
* our C (``csrc/extract.c`` through :class:`aufs._fastpaths.Extractor`) writes each entry below
  a held directory fd, resolving every parent with ``openat2(RESOLVE_IN_ROOT)`` and never
  following the last component, so no entry can reach outside the target directory: not with
  ``..`` or absolute names, not through a symlink or hard link planted earlier, not from
  another thread (there is no ``chdir``);
* this module gives the reserved names their meaning (OCI layer.md and Docker's behaviour):
  ``.wh.NAME`` deletes NAME and records a whiteout in the store's format, ``.wh..wh..opq``
  marks its directory opaque (entries of the same layer survive it wherever they stand in the
  tar), other ``.wh..wh.*`` names never become content, and hard links into AUFS's
  ``.wh..wh.plnk/`` pseudo-link directory resolve to the real file. Directory mtimes are set
  last, after all their content.

Symlink targets are data and are stored as they are, also one that climbs above the layer
root (``usr/lib/x -> ../../../opt/y``, ``up -> ..``): in a root filesystem ``/..`` is ``/``,
and nothing here follows a link except inside the target (``RESOLVE_IN_ROOT``), so an entry
written through such a link lands inside the layer, as with containerd, umoci and GNU tar.
Hard-link targets must name something inside the layer.

Tar bombs: file data is written sparse (holes of sparse entries stay holes, so a "1 TB" sparse
entry costs only its data), an entry whose declared size exceeds the free space of the target's
filesystem is refused before a byte is written, and ``max_bytes`` caps the total content.

Existing non-directory inodes are never modified in place: an entry that replaces one unlinks it
and creates a new inode, so the store may stage an apply into a hard-linked clone of a layer.

Implied parents (``srv/`` and ``srv/data/`` for an entry ``srv/data/a`` in a tar that does not
list them) are created 0755 root:root, and :func:`apply_tar` returns them. In a union mount the
upper directory's metadata wins, so a layer applied onto a parent chain must give them what the
chain shows at the same path, as the kernel's copy-up does when a tool extracts into a mount:
:func:`copy_up_dirs` (or ``template_dir=``) copies the lower directory's owner, mode (setuid,
setgid and sticky bits too) and xattrs, never the union's private ones. Where the chain has no
directory (nothing, a non-directory, a whiteout, or a path through a symlink) they stay 0755
root:root. Directories the tar lists keep the tar's metadata.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Union

from . import _fastpaths, kernel
from ._libarchive import Libarchive, load as _libarchive
from .compression import MAGIC_LEN, Compression, DecompressingReader, detect_compression
from .errors import ArchiveError, NoSpace, UnsafeArchive
from .whiteouts import (
    META_PREFIX,
    OPAQUE_NAME,
    WHITEOUT_PREFIX,
    EntryKind,
    WhiteoutFormat,
    classify,
    is_opaque_dir,
    make_opaque,
    make_whiteout,
    whiteout_target,
)

__all__ = ["LayerSource", "apply_tar", "copy_up_dirs"]

LayerSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]
"""A layer: a path, the bytes themselves, or a readable binary file object (a pipe too)."""

_PLNK = b".wh..wh.plnk"
_OPQ = OPAQUE_NAME.encode()
_WH = WHITEOUT_PREFIX.encode()
_META = META_PREFIX.encode()

# libarchive reads the tar from an fd in blocks of this size
_READ_BLOCK = 1 << 20
# a pipe this large lets the feeder thread run ahead of the extractor
_PIPE_SIZE = 1 << 20

# errors that say the archive's content cannot be laid out, not that the host failed
# (EPERM and EACCES are the host refusing, e.g. an unprivileged user giving a file to root:
# OSError, CLI exit 10; the C turns a hard link to a directory into EISDIR)
_LAYOUT_ERRNOS = {
    errno.ENOTDIR, errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG, errno.EINVAL,
    errno.EMLINK, errno.ELOOP, errno.ENOTEMPTY, errno.EFBIG, errno.ERANGE,
    errno.E2BIG,
}


class _Feeder:
    """Decompresses in a thread into a pipe whose read end libarchive reads.

    The pipe is drained to the end on success, so every checksum of the stream has been
    verified before :func:`apply_tar` returns.
    """

    def __init__(self, reader: DecompressingReader) -> None:
        self._reader = reader
        self.read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        kernel.grow_pipe(self._write_fd, _PIPE_SIZE)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="aufs-apply-feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._reader.iter_chunks():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._write_fd, view):]
        except BrokenPipeError:
            pass  # the extractor stopped reading: it reports why
        except BaseException as exc:  # noqa: BLE001 - handed to the extracting thread
            self.error = exc
        finally:
            os.close(self._write_fd)

    def finish(self) -> None:
        """Read the stream to its end (so every checksum is verified), then raise its error."""
        while os.read(self.read_fd, _PIPE_SIZE):
            pass
        error = self.stop()
        if error is not None:
            raise error

    def stop(self) -> BaseException | None:
        """Stop early; the feeder's error, if it had one."""
        if self.read_fd >= 0:
            os.close(self.read_fd)  # a blocked writer gets EPIPE
            self.read_fd = -1
            # a source that blocks forever must not hang the caller: the thread is a daemon
            self._thread.join(10.0)
        return self.error


def _open_source(source: LayerSource) -> tuple[int, DecompressingReader | None, BinaryIO | None]:
    """A plain tar file's own fd (else -1), or a decompressing reader, and a file to close.

    (-1, None, None) means an empty input: an empty layer.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        reader = DecompressingReader(io.BytesIO(bytes(source)))
        return -1, (None if reader.empty else reader), None
    if isinstance(source, (str, os.PathLike)):
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(errno.EISDIR, "a layer tar is a file, not a directory",
                                        os.fsdecode(source))
            head = os.pread(fd, MAGIC_LEN, 0)
        except OSError:
            os.close(fd)
            raise
        if not head:
            os.close(fd)
            return -1, None, None
        if detect_compression(head) is Compression.NONE:
            return fd, None, None  # libarchive reads the file itself: no Python per block
        f = os.fdopen(fd, "rb", buffering=0)
        try:
            return -1, DecompressingReader(f), f
        except BaseException:
            f.close()
            raise
    if not hasattr(source, "read"):
        raise TypeError(f"a layer is a path, bytes or a readable binary file, not {type(source).__name__}")
    if isinstance(source, io.TextIOBase):
        raise TypeError(f"binary file expected as a layer tar source, not a text-mode "
                        f"{type(source).__name__} (open it with 'rb')")
    reader = DecompressingReader(source)
    return -1, (None if reader.empty else reader), None


class _Run:
    """The policy half of one extraction: reserved names, directory times, error mapping."""

    def __init__(self, ex: _fastpaths.Extractor, root_fd: int, fmt: WhiteoutFormat, track: bool,
                 archive_error: Callable[[], ArchiveError]) -> None:
        self.ex = ex
        # libarchive's failure (reading an entry's data), as the error to raise
        self.archive_error = archive_error
        self.root_fd = root_fd
        self.fmt = fmt
        self.dir_times: dict[bytes, tuple[int, int]] = {}
        # directories the writer created for entries whose parents the tar does not list,
        # in creation order (a dict: ordered, and a later explicit entry removes one)
        self.implied: dict[bytes, None] = {}
        # paths this apply wrote, kept only when the target had content before (opaque
        # directories then remove what is not the layer's own)
        self.unpacked: set[bytes] | None = set() if track else None
        self.staging: bytes | None = None
        # opaque directories this apply marked, and the whiteouts it wrote (parent, name):
        # a whiteout below an opaque directory of the same layer is redundant, and kept, the
        # union would show it as a broken entry (an opaque directory is read as it is)
        self.opaque: set[bytes] = set()
        self.whiteouts: list[tuple[bytes, bytes]] = []
        self._opaque_on_disk: dict[bytes, bool] = {}

    # -- bookkeeping ------------------------------------------------------------------------

    def note(self, path: bytes) -> None:
        if self.unpacked is None:
            return
        while path and path not in self.unpacked:
            self.unpacked.add(path)
            path = path.rpartition(b"/")[0]

    def check(self, code: int, path: bytes) -> None:
        """Raise for an error code of the C writer; directories get their time noted."""
        if code == _fastpaths.X_DIR:  # the C writer's buffer of directory times is full
            self.take_dir_times()
            self.implied.pop(path, None)
            self.dir_times[path] = self.ex.mtime
            self.note(path)
        elif code in (0, _fastpaths.X_DONE):
            self.note(path)
        elif code < 0:
            raise _os_error(-code, path)
        elif code == _fastpaths.X_UNSAFE:
            raise _unsafe(self.ex)
        elif code == _fastpaths.X_ARCHIVE:  # e.g. a pseudo-link's data cut short
            raise self.archive_error()
        elif code == _fastpaths.X_LIMIT:
            raise ArchiveError(f"layer content exceeds the limit of bytes allowed, at entry {_show(path)}",
                               path=os.fsdecode(path))
        elif code == _fastpaths.X_CORRUPT:
            raise ArchiveError(f"corrupt archive entry {_show(path)}: a header field or its data "
                               "block is impossible", path=os.fsdecode(path))
        else:
            raise AssertionError(f"unexpected extractor code {code}")

    def take_dir_times(self) -> None:
        """Collect the C writer's records (call before anything that may create directories:
        the writer needs room in its buffer)."""
        for path, mtime in self.ex.take_dir_times():
            # a directory given twice: the last one counts; an implied one is a new inode,
            # which an earlier entry's time does not describe
            self.dir_times.pop(path, None)
            if mtime is None:
                self.implied[path] = None
            else:
                self.implied.pop(path, None)
                self.dir_times[path] = mtime

    def implied_dirs(self) -> list[bytes]:
        """The implied directories created, parents first, without the pseudo-link staging."""
        staging = self.staging
        if staging is None:
            return list(self.implied)
        return [p for p in self.implied if p != staging and not p.startswith(staging + b"/")]

    # -- reserved names -----------------------------------------------------------------------

    def special(self) -> None:
        """Handle an entry with a ``.wh.`` component (nothing of it is written yet)."""
        ex = self.ex
        path, link = ex.path, ex.link
        parts = path.split(b"/")
        name = parts[-1]
        if parts[0] == _PLNK and len(parts) > 1:
            # AUFS pseudo-link: the real file, linked to by name elsewhere in the tar
            if not any(p.startswith(_WH) for p in parts[1:]) and stat.S_ISREG(ex.mode) and not link:
                real = self._staged(b"/".join(parts[1:]), create=True)
                self.take_dir_times()
                self.check(ex.write(path=real), path)
            return
        if any(p.startswith(_WH) for p in parts[:-1]):
            return  # inside AUFS metadata or a whiteout-named directory: never content
        is_file = stat.S_ISREG(ex.mode) or bool(link)
        if name == _OPQ:
            if is_file:
                self._opaque(b"/".join(parts[:-1]))
            return
        if name.startswith(_WH):
            target = whiteout_target(os.fsdecode(name))
            if target is None and not name.startswith(_META):
                # `.wh.`, `.wh..`, `.wh...`: a whiteout of nothing, of `.` or of `..` is no
                # layer any tool wrote on purpose; refuse it rather than guess
                raise ArchiveError(f"archive entry {_show(path)} is a malformed whiteout: "
                                   f"{_show(name)} names no entry that can be deleted",
                                   path=os.fsdecode(path))
            if target is not None and is_file:
                self._whiteout(b"/".join(parts[:-1]), os.fsencode(target))
            return
        # an ordinary name hard-linked to a reserved one
        lparts = link.split(b"/")
        if lparts[0] == _PLNK and len(lparts) > 1 and self.staging is not None:
            real = self._staged(b"/".join(lparts[1:]))
            self.take_dir_times()
            self.check(ex.write(link=real), path)
            return
        raise ArchiveError(f"archive entry {_show(path)} is a hard link to the reserved name {_show(link)}",
                           path=os.fsdecode(path))

    def _staged(self, rest: bytes, create: bool = False) -> bytes:
        if self.staging is None:
            if not create:
                raise AssertionError("no pseudo-link staging directory")
            self.staging = self._staging_name()
        return self.staging + b"/" + rest

    def _staging_name(self) -> bytes:
        """A free ``.wh..wh.XXXX`` name in the root (XXXX hex): never content, no tar entry
        can write there, and exactly as long as ``.wh..wh.plnk``, so a pseudo-link staged
        under it has the length of its name in the archive: whatever fits there fits here."""
        for _ in range(1000):
            name = _META + uuid.uuid4().hex[:len(_PLNK) - len(_META)].encode()
            try:
                os.lstat(name, dir_fd=self.root_fd)
            except FileNotFoundError:
                return name
        raise ArchiveError("no free name for the pseudo-link staging directory")

    def _parent_fd(self, parent: bytes) -> int | None:
        """An O_PATH fd of the directory ``parent`` (created if implied), None if it is no directory."""
        self.ex.forget_parent()  # we are about to change the tree behind the C writer's cache
        self.take_dir_times()
        try:
            return self.ex.make_dir(parent)
        except (NotADirectoryError, FileNotFoundError, FileExistsError):
            # e.g. umoci 0.4.7 layers turn usr/share/man into a file and list usr/share/man/.wh.de
            return None
        except OSError as exc:
            raise _os_error(exc.errno or errno.EIO, parent) from exc

    def _under_opaque(self, parent: bytes) -> bool:
        """True if ``parent`` or a directory above it is opaque in this layer."""
        path = parent
        while True:
            if path in self.opaque:
                return True
            if self.unpacked is not None:  # applied onto content: it may be opaque already
                known = self._opaque_on_disk.get(path)
                if known is None:
                    try:
                        fd = _fastpaths.extract_open_dir(self.root_fd, path)
                    except OSError:
                        known = False
                    else:
                        try:
                            known = is_opaque_dir(fd, self.fmt)
                        finally:
                            os.close(fd)
                    self._opaque_on_disk[path] = known
                if known:
                    return True
            if not path:
                return False
            path = path.rpartition(b"/")[0]

    def _whiteout(self, parent: bytes, target: bytes) -> None:
        dir_fd = self._parent_fd(parent)
        if dir_fd is None:
            return
        try:
            _fastpaths.extract_remove(dir_fd, target)
            if self._under_opaque(parent):
                return  # the opaque directory hides the lower entry already
            try:
                make_whiteout(dir_fd, os.fsdecode(target), self.fmt)
            except FileExistsError:
                # an AUFS marker name occupied by something else: the whiteout wins
                _fastpaths.extract_remove(dir_fd, _WH + target)
                make_whiteout(dir_fd, os.fsdecode(target), self.fmt)
        except OSError as exc:
            raise _os_error(exc.errno or errno.EIO, _join(parent, target)) from exc
        finally:
            os.close(dir_fd)
        self.whiteouts.append((parent, target))
        self.note(_join(parent, _WH + target if self.fmt is WhiteoutFormat.AUFS else target))

    def _drop_whiteouts_below(self, parent: bytes) -> None:
        """Remove the whiteouts this apply wrote at or below the opaque directory ``parent``
        (the tar listed them before its marker)."""
        prefix = parent + b"/"
        kept: list[tuple[bytes, bytes]] = []
        for where, target in self.whiteouts:
            if parent and where != parent and not where.startswith(prefix):
                kept.append((where, target))
                continue
            try:
                dir_fd = _fastpaths.extract_open_dir(self.root_fd, where)
            except OSError:
                continue  # replaced by a later entry: nothing of it is left
            try:
                _remove_whiteout(dir_fd, target, self.fmt)
            except OSError as exc:
                raise _os_error(exc.errno or errno.EIO, _join(where, target)) from exc
            finally:
                os.close(dir_fd)
        self.whiteouts = kept

    def _opaque(self, parent: bytes) -> None:
        dir_fd = self._parent_fd(parent)
        if dir_fd is None:
            return
        try:
            if self.unpacked is not None:
                self._remove_foreign(dir_fd, parent)
            make_opaque(dir_fd, self.fmt)
        except OSError as exc:
            raise _os_error(exc.errno or errno.EIO, parent) from exc
        finally:
            os.close(dir_fd)
        self.opaque.add(parent)
        self._drop_whiteouts_below(parent)
        if self.fmt is WhiteoutFormat.AUFS:
            self.note(_join(parent, _OPQ))

    def _remove_foreign(self, dir_fd: int, parent: bytes) -> None:
        """Remove what the directory held before this apply (the layer's own entries stay)."""
        assert self.unpacked is not None
        list_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            names = os.listdir(list_fd)
        finally:
            os.close(list_fd)
        for name in map(os.fsencode, names):
            if self.staging is not None and not parent and name == self.staging:
                continue
            if _join(parent, name) not in self.unpacked:
                _fastpaths.extract_remove(dir_fd, name)

    # -- the end ------------------------------------------------------------------------------

    def finish(self) -> None:
        self.ex.forget_parent()
        self.take_dir_times()
        if self.staging is not None:
            try:
                _fastpaths.extract_remove(self.root_fd, self.staging)
            except OSError as exc:
                raise _os_error(exc.errno or errno.EIO, self.staging) from exc
        # last: creating and removing entries above changed these directories' times
        for path, (sec, nsec) in self.dir_times.items():
            try:
                _fastpaths.extract_dir_times(self.root_fd, path, sec, nsec)
            except OSError as exc:
                raise _os_error(exc.errno or errno.EIO, path) from exc


def _remove_whiteout(dir_fd: int, target: bytes, fmt: WhiteoutFormat) -> None:
    """Remove the whiteout of ``target`` in ``dir_fd`` if it is still one (a later entry of
    the same name may have replaced it)."""
    name = _WH + target if fmt is WhiteoutFormat.AUFS else target
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if classify(os.fsdecode(name), st.st_mode, st.st_rdev, fmt).kind is EntryKind.WHITEOUT:
        os.unlink(name, dir_fd=dir_fd)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _show(path: bytes) -> str:
    return repr(os.fsdecode(path))


def _unsafe(ex: _fastpaths.Extractor) -> UnsafeArchive:
    path = os.fsdecode(ex.path)
    if ex.is_hardlink:
        return UnsafeArchive(f"archive entry {path!r} is a hard link to {os.fsdecode(ex.link)!r}, "
                             "outside the layer directory", path=path)
    return UnsafeArchive(f"archive entry {path!r} would be written outside the layer directory",
                         path=path)


def _os_error(err: int, path: bytes) -> Exception:
    where = os.fsdecode(path) or "."
    cause = OSError(err, os.strerror(err), where)
    if err in (errno.ENOSPC, errno.EDQUOT):
        exc: Exception = NoSpace(f"no space left while extracting {where!r}: free space or raise "
                                 "the quota of the store's filesystem", path=where)
    elif err == errno.EXDEV:
        exc = UnsafeArchive(f"archive entry {where!r} would be resolved outside the layer directory",
                            path=where)
    elif err in _LAYOUT_ERRNOS:
        exc = ArchiveError(f"cannot extract archive entry {where!r}: {os.strerror(err)}", path=where)
    else:
        return cause
    exc.__cause__ = cause
    return exc


def _extract(la: Libarchive, archive: int, root_fd: int, fmt: WhiteoutFormat,
             max_bytes: int | None, track: bool, rootless: bool | str = False) -> list[bytes]:
    ex = _fastpaths.Extractor(archive, la.addresses(_fastpaths.EXTRACT_API_NAMES), root_fd,
                              max_bytes=max_bytes, report_all=track, rootless=rootless)

    def archive_error() -> ArchiveError:
        status = {-10: "retry", -20: "warning", -25: "failed", -30: "fatal"}.get(
            ex.archive_status, str(ex.archive_status))
        # name the entry that failed: libarchive refused either the next header (whose name
        # it may have read) or the data of the entry being written
        path: bytes | None
        if ex.header_failed:
            number, path = ex.entries + 1, ex.raw_link or None
            if path is not None:
                where = f" at entry {number} {_show(path)}"
            elif ex.entries:
                where = f" at entry {number}, the header after entry {_show(ex.path)}"
            else:
                where = " at its first entry"
        else:
            path = ex.path
            where = f" at entry {ex.entries} {_show(path)}"
        return ArchiveError(f"invalid layer tar{where}: {la.message(archive)} (libarchive {status})",
                            path=None if path is None else os.fsdecode(path))

    run = _Run(ex, root_fd, fmt, track, archive_error)
    try:
        while True:
            code = ex.next()
            while code == _fastpaths.X_WARN:
                if not _harmless_warning(la.message(archive)):
                    ex.refuse()
                    raise archive_error()
                code = ex.resume()
            if code == _fastpaths.X_EOF:
                break
            if code == _fastpaths.X_FLUSH:
                run.take_dir_times()
                continue
            if code == _fastpaths.X_ARCHIVE:
                raise archive_error()
            if code == _fastpaths.X_SPECIAL:
                run.special()
                continue
            if code == _fastpaths.X_LIMIT and max_bytes is None:
                raise AssertionError("limit reported without a limit")
            run.check(code, ex.path)
        run.finish()
        return run.implied_dirs()
    finally:
        ex.close()


# libarchive's header warnings that lose nothing aufs keeps (every other one refuses the layer,
# as data may be lost or corrupted):
_HARMLESS_WARNINGS = (
    # a pax path/linkpath that is not UTF-8 and has no hdrcharset=BINARY (Go's archive/tar, so
    # Docker, umoci, skopeo, buildah): with the UTF-8 locale of the read the raw bytes are
    # kept as they are, which is what GNU tar and Go extract
    "Pathname can't be converted from UTF-8 ",
    "Linkname can't be converted from UTF-8 ",
    # owner names are not used: the numeric ids are
    "Uname can't be converted ",
    "Gname can't be converted ",
    # a pax record without a valid length, e.g. a second pax header in a row (Go's
    # pax-multi-hdrs.tar); libarchive skips the rest of that pax header, as Go and GNU tar do
    "Ignoring malformed pax extended attribute",
)


def _harmless_warning(message: str) -> bool:
    return message.startswith(_HARMLESS_WARNINGS)


def _read_archive(la: Libarchive, in_fd: int, root_fd: int, fmt: WhiteoutFormat,
                  max_bytes: int | None, track: bool, rootless: bool | str = False) -> list[bytes]:
    archive = int(la.read_new() or 0)
    if not archive:
        raise MemoryError("archive_read_new failed")
    try:
        # tar only (ustar, pax, GNU, v7), no filter: the input is already decompressed
        if la.read_support_format_tar(archive) != 0:
            raise ArchiveError(f"libarchive cannot read tar: {la.message(archive)}")
        if la.read_open_fd(archive, in_fd, _READ_BLOCK) != 0:
            raise ArchiveError(f"not a layer tar: {la.message(archive)}")
        with _fastpaths.utf8_locale():
            return _extract(la, archive, root_fd, fmt, max_bytes, track, rootless)
    finally:
        la.read_free(archive)


def apply_tar(target_dir: str | os.PathLike[str], source: LayerSource, fmt: WhiteoutFormat,
              *, max_bytes: int | None = None,
              template_dir: str | os.PathLike[str] | None = None,
              rootless: bool | str = False) -> list[str]:
    """Extract the layer tar ``source`` into the directory ``target_dir``, whiteouts in ``fmt``.

    ``source`` is a path, the bytes, or a readable binary file object (read as a stream, never
    all into memory); plain, gzip, zstd, bzip2 or xz, detected from the content. ``max_bytes``
    caps the total bytes of file content written.

    Returns the implied directories this call created (parents the tar's entries need but the
    tar does not list, relative paths, parents first), 0755 root:root. With ``template_dir``
    (a directory showing the union of the layer's parent chain) they get what that directory
    shows at the same path first: see :func:`copy_up_dirs`.

    Nothing outside ``target_dir`` is ever created, modified or deleted. On error
    ``target_dir`` may be left half-extracted (the store extracts into a staging directory it
    discards). Raises :class:`aufs.UnsafeArchive` for an entry that would escape (naming it),
    :class:`aufs.ArchiveError` for a corrupt, truncated or non-tar input (from the cause), and
    :class:`aufs.NoSpace` when the filesystem runs out of space or quota.

    ``rootless``: write as a rootless store does (:mod:`aufs.rootless`): ``True`` (or
    ``"override_stat"``): nothing chowned, no device made, owners, modes, types and privileged
    xattrs recorded in user.* xattrs; ``"userns"`` (a process in a userns store's namespace,
    :mod:`aufs.userns`): owners and modes set and fifos and whiteouts made for real where the
    namespace maps the ids, only what it cannot hold (unmapped ids, devices, privileged xattrs)
    recorded.
    """
    implied = _apply(target_dir, source, fmt, max_bytes, rootless)
    if template_dir is not None and implied:
        copy_up_dirs(target_dir, implied, template_dir)
    return [os.fsdecode(path) for path in implied]


def copy_up_dirs(target_dir: str | os.PathLike[str], paths: Iterable[str | bytes],
                 template_dir: str | os.PathLike[str]) -> int:
    """Give each directory ``paths`` names below ``target_dir`` the owner, mode and xattrs of
    the directory at the same path below ``template_dir``, as an overlay copy-up would.

    ``template_dir`` shows the union of the layer's parent chain. Paths are resolved inside each
    root, and the template side never through a symlink (in a union, the upper directory hides
    a lower symlink and all below it). A path the template does not show as a directory, or
    that is no longer a directory below ``target_dir``, is left as it is. The union's private
    xattrs (``trusted.overlay.*``, ``user.overlay.*``, ``user.fuseoverlayfs.*``) are never
    copied. Returns how many directories were changed; raises ``OSError`` naming the path.
    """
    copier = _fastpaths.DirCopier()
    root_fd = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        template_fd = os.open(template_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return sum(copier.copy_up(root_fd, os.fsencode(path), template_fd) for path in paths)
        finally:
            os.close(template_fd)
    finally:
        os.close(root_fd)


def _content_stats(entries: Iterable[os.DirEntry[str]]) -> Iterator[os.stat_result]:
    """The stats of the entries that are content: not whiteouts or markers, whose times are the
    extraction's own (a whiteout is made when it is met, in either format)."""
    for entry in entries:
        if entry.name.startswith(".wh."):
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            continue
        yield st


def stamp_implied_dirs(target_dir: str | os.PathLike[str], paths: Iterable[str | bytes]) -> None:
    """Give each implied directory (created for an entry, not listed by the tar) the newest
    modification time of the entries directly in it (whiteouts aside), deepest first.

    An extraction would otherwise leave the clock's time there, so two imports of one image (a
    root store and a rootless one, or the same store twice) would export different bytes; the
    newest entry's time is when the directory last changed in the image's own history, and it
    is the same every time. A directory with no entries keeps its time.
    """
    root_fd = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path in sorted((os.fsencode(p) for p in paths), key=lambda p: p.count(b"/"), reverse=True):
            try:
                where = _fastpaths.extract_open_dir(root_fd, path)  # O_PATH, inside the root
            except OSError:
                continue  # replaced by a later entry, or removed: nothing to stamp
            try:
                fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=where)
            except OSError:
                os.close(where)
                continue
            try:
                with os.scandir(fd) as it:
                    newest = max((st.st_mtime_ns for st in _content_stats(it)), default=None)
                if newest is not None:
                    os.utime(fd, ns=(newest, newest))
            finally:
                os.close(fd)
                os.close(where)
    finally:
        os.close(root_fd)


def _apply(target_dir: str | os.PathLike[str], source: LayerSource, fmt: WhiteoutFormat,
           max_bytes: int | None, rootless: bool | str = False) -> list[bytes]:
    la = _libarchive()
    root_fd = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    plain_fd, feeder, owned = -1, None, None
    try:
        track = bool(os.listdir(root_fd))  # onto existing content: opaque dirs must know ours
        plain_fd, reader, owned = _open_source(source)
        if plain_fd < 0 and reader is None:
            return []  # an empty input is an empty layer, as for Docker
        if reader is not None:
            feeder = _Feeder(reader)
        try:
            implied = _read_archive(la, plain_fd if feeder is None else feeder.read_fd, root_fd,
                                    fmt, max_bytes, track, rootless)
        except BaseException:
            if feeder is not None:
                # a failure of the source or the decompressor closes the pipe early, so
                # libarchive sees a truncated tar: the feeder's error is the real one
                feed_error, feeder = feeder.stop(), None
                if feed_error is not None:
                    raise feed_error
            raise
        if feeder is not None:
            running: _Feeder = feeder
            feeder = None
            running.finish()
        return implied
    finally:
        if feeder is not None:
            feeder.stop()
        if plain_fd >= 0:
            os.close(plain_fd)
        if owned is not None:
            owned.close()
        os.close(root_fd)
