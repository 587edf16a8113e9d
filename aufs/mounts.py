"""Mount primitives: is it mounted, mount, unmount, the mount table, overlay mounts.

This module owns what mounts *mean* for aufs, on top of the raw syscalls in
:mod:`aufs._syscalls`:

* :func:`mounted` answers from the kernel (``statx`` ``STATX_ATTR_MOUNT_ROOT``, then
  ``openat2`` ``RESOLVE_NO_XDEV``, then the mount table), right where ``os.path.ismount`` is
  wrong (a directory bind-mounted onto itself, a bind of a subdirectory, a bind-mounted file).
* :func:`mount` never lets the kernel truncate mount data; :func:`unmount` never follows a
  symlink, tells "not mounted" apart from failure and retries a busy mount point.
* :func:`mount_overlay` mounts overlayfs with one ``lowerdir+`` per layer through the new
  mount API, so a layer chain is not limited by the one-page data limit of mount(2).
* :func:`mount_table` / :func:`submounts` read ``/proc/self/mountinfo`` (or any recorded file)
  with the C parser. :func:`parse_mountinfo` is its pure-Python twin, used as a test oracle.
* :func:`kernel_features` (from :mod:`aufs.kernel`, which knows the kernel's facts) says,
  once per process, what the running kernel supports.

Paths may be ``str``, ``bytes`` or path-like; text fields of :class:`MountInfo` are ``str``
decoded with ``os.fsdecode`` (undecodable bytes survive as surrogates).
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from . import _syscalls, kernel
from ._syscalls import StrPath
from .errors import MountDataTooLong, MountError
from .plan import Mount, mount_data, overlay_mount, parse_overlay_options

# the mount(2) flags, for mount(flags=...), are aufs.kernel's (also reachable from here)
from .kernel import MS_BIND as MS_BIND
from .kernel import MS_MOVE as MS_MOVE
from .kernel import MS_NODEV as MS_NODEV
from .kernel import MS_NOEXEC as MS_NOEXEC
from .kernel import MS_NOSUID as MS_NOSUID
from .kernel import MS_PRIVATE as MS_PRIVATE
from .kernel import MS_RDONLY as MS_RDONLY
from .kernel import MS_REC as MS_REC
from .kernel import MS_REMOUNT as MS_REMOUNT
from .kernel import MS_SHARED as MS_SHARED
from .kernel import MS_SLAVE as MS_SLAVE

__all__ = [
    "MOUNTINFO",
    "MOUNT_CHECK_METHODS",
    "KernelFeatures",
    "MountInfo",
    "escape_octal",
    "kernel_features",
    "mount",
    "mount_described",
    "mount_overlay",
    "mount_table",
    "mounted",
    "mounted_via",
    "parse_mountinfo",
    "parse_mountinfo_line",
    "submounts",
    "unescape_octal",
    "unmount",
]

MOUNTINFO = "/proc/self/mountinfo"

# The ways mounted_via() can answer, in the order mounted() tries them.
MOUNT_CHECK_METHODS = ("statx", "openat2", "mountinfo")


class MountInfo(NamedTuple):
    """One line of ``/proc/PID/mountinfo`` (see proc(5)), text fields unescaped."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    """The directory of the filesystem that is mounted here ("/" unless a bind of a subdir)."""
    mountpoint: str
    options: str
    """Per-mount options, comma-separated ("rw,relatime")."""
    optional_fields: tuple[str, ...]
    """Tags such as "shared:1" or "master:2"; empty when there are none."""
    fstype: str
    source: str
    super_options: str
    """Per-superblock options, comma-separated (for overlay: lowerdir=..., upperdir=...)."""

    @property
    def dev(self) -> int:
        """``st_dev`` of the mounted filesystem (``os.makedev(major, minor)``)."""
        return os.makedev(self.major, self.minor)


KernelFeatures = kernel.KernelFeatures
kernel_features = kernel.features  # what the running kernel supports, probed once


# --------------------------------------------------------------------------- mounted()

# errno values that mean "there is nothing at this path", so it is not a mount point.
_ABSENT = frozenset((errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG))
# errno values that mean "this method cannot answer on this kernel".
_UNSUPPORTED = frozenset((errno.EOPNOTSUPP, errno.ENOSYS))


def mounted(path: StrPath) -> bool:
    """True iff ``path`` is a mount point (the root of a mount).

    The last component is not followed: a symlink is never a mount point, even one pointing
    at a mount point. A path that does not exist gives False; ``"/"`` gives True. A trailing
    slash names the directory the path resolves to. Raises ``OSError`` only for real errors
    (e.g. ``PermissionError`` on a parent directory).
    """
    # Hot path (the store asks this for every mount): one statx() and as little Python as
    # possible around it.
    if type(path) is str and _FS_IS_UTF8:
        try:
            raw = path.encode()
        except UnicodeEncodeError:  # lone surrogates: undecodable bytes from os.fsdecode
            raw = os.fsencode(path)
    elif type(path) is bytes:
        raw = path
    else:
        raw = os.fsencode(path)
    if 0 in raw:
        raise ValueError(f"embedded null byte in path {raw!r}")
    rc = _statx(raw)
    if rc >= 0:
        return rc == 1
    return _mounted_fallback(raw, rc)


_statx = _syscalls.mountpoint_statx
# With a UTF-8 filesystem encoding, str.encode() (strict) equals os.fsencode() whenever it
# succeeds, and is three times faster.
_FS_IS_UTF8 = sys.getfilesystemencoding().lower().replace("-", "") == "utf8" \
    and sys.getfilesystemencodeerrors() == "surrogateescape"


def _mounted_fallback(raw: bytes, rc: int) -> bool:
    if -rc in _ABSENT:
        return False
    if -rc not in _UNSUPPORTED:
        raise _syscalls.oserror(rc, raw)
    rc = _syscalls.mountpoint_openat2(raw)
    if rc >= 0:
        return rc == 1
    if -rc in _ABSENT:
        return False
    if -rc not in _UNSUPPORTED:
        raise _syscalls.oserror(rc, raw)
    return _mounted_in_table(raw, MOUNTINFO)


def mounted_via(path: StrPath, method: str, *, mountinfo: StrPath = MOUNTINFO) -> bool:
    """:func:`mounted` by one given method (one of :data:`MOUNT_CHECK_METHODS`).

    For tests and diagnostics: each method must give the same answer. Raises ``OSError``
    with ``EOPNOTSUPP``/``ENOSYS`` if the kernel cannot answer by that method.
    """
    raw = _syscalls.fspath_bytes(path)
    if method == "mountinfo":
        return _mounted_in_table(raw, mountinfo)
    if method == "statx":
        rc = _syscalls.mountpoint_statx(raw)
    elif method == "openat2":
        rc = _syscalls.mountpoint_openat2(raw)
    else:
        raise ValueError(f"unknown mount check method {method!r}; use one of {MOUNT_CHECK_METHODS}")
    if rc >= 0:
        return rc == 1
    if -rc in _ABSENT:
        return False
    raise _syscalls.oserror(rc, raw)


def _mounted_in_table(raw: bytes, mountinfo: StrPath) -> bool:
    """Last resort: walk the path, parent resolved but last component not, through the mount
    tree of the mount table, as the kernel's path walk crosses mounts; True iff the walk
    steps onto a mount at the last component."""
    try:
        st = os.lstat(raw)
    except OSError as err:
        if err.errno in _ABSENT:
            return False
        raise
    head, tail = os.path.split(raw)
    if tail in (b"", b".", b".."):
        target = os.path.realpath(raw)
    elif stat.S_ISLNK(st.st_mode):
        return False
    else:
        target = os.path.join(os.path.realpath(head or b"."), tail)
    return _visible_mount_at(os.fsdecode(target), list(mount_table(mountinfo)))


def _visible_mount_at(target: str, table: list[MountInfo]) -> bool:
    """Is the absolute, resolved ``target`` the mount point of the mount visible there?

    Follows mounts from the namespace root one path component at a time; at each step the
    mount on top is the last one mounted on the current mount at that path (a mount stacked on
    another at the same place has the covered one as its parent). A mount point hidden under a
    later mount is therefore not reported.
    """
    ids = {info.mount_id for info in table}
    children: dict[tuple[int, str], MountInfo] = {}
    roots = []
    for info in table:
        if info.parent_id not in ids or info.parent_id == info.mount_id:
            roots.append(info)
        else:
            children[(info.parent_id, info.mountpoint)] = info  # later wins: it is on top
    roots = [info for info in roots if info.mountpoint == "/"] or roots
    if not roots:
        return False
    current = roots[-1]
    prefixes = ["/"]
    if target != "/":
        parts = target.strip("/").split("/")
        prefixes += ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    moved_at_last = False
    for prefix in prefixes:
        moved_at_last = False
        while (current.mount_id, prefix) in children:
            current = children[(current.mount_id, prefix)]
            moved_at_last = True
    return moved_at_last or (target == "/" and current.mountpoint == "/")


# --------------------------------------------------------------------------- mount/unmount


def _mount_error(message: str, path: StrPath, cause: OSError) -> MountError:
    """A MountError that also carries the cause's errno and strerror."""
    err = MountError(message, path=os.fsdecode(path))
    err.errno = cause.errno
    err.strerror = cause.strerror
    return err


def mount(source: StrPath | None, target: StrPath, fstype: str | None, flags: int = 0,
          data: str = "") -> None:
    """mount(2) ``source`` on ``target``: a filesystem of type ``fstype``, or a bind/remount/
    propagation change given by ``flags`` (``MS_*`` values as in ``<sys/mount.h>``).

    Raises :class:`MountDataTooLong` (a ``ValueError``) if ``data`` would not fit in one page
    (the kernel would silently drop the rest), and :class:`MountError` (``errno`` set,
    ``__cause__`` the ``OSError``) if the kernel refuses.
    """
    data_bytes = data.encode() if isinstance(data, str) else bytes(data)
    limit = kernel.page_size()
    if len(data_bytes) >= limit:
        raise MountDataTooLong(
            f"mount data for {os.fsdecode(target)!r} is {len(data_bytes)} bytes; mount(2) takes "
            f"at most {limit - 1} and would silently truncate the rest (use mount_overlay, "
            f"which passes each layer separately)",
            path=os.fsdecode(target),
        )
    try:
        _syscalls.mount(source, target, fstype, flags, data_bytes or None)
    except OSError as err:
        shown = repr(os.fsdecode(source)) if source is not None else "(no source)"
        what = f"{fstype} {shown}" if fstype else shown
        raise _mount_error(f"cannot mount {what} on {os.fsdecode(target)!r} "
                           f"(flags {flags:#x}): {err.strerror}", target, err) from err


_BUSY_FIRST_DELAY = 0.01
_BUSY_MAX_DELAY = 0.5


def unmount(target: StrPath, *, lazy: bool = False, busy_retries: int = 5) -> bool:
    """Unmount ``target`` (umount2 with ``UMOUNT_NOFOLLOW``: a symlink there is not followed).

    Returns True if something was unmounted, False if ``target`` was not a mount point (or does
    not exist). ``lazy`` detaches now and lets the kernel finish when the last user goes
    (``MNT_DETACH``). A busy mount point (``EBUSY``) is retried ``busy_retries`` times with
    exponential backoff (10 ms doubling, at most 0.5 s), then :class:`MountError` is raised
    with ``errno`` EBUSY; other failures raise :class:`MountError` at once.
    """
    delay = _BUSY_FIRST_DELAY
    attempt = 0
    while True:
        try:
            _syscalls.umount(target, lazy)
            return True
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.ENOENT):
                return False
            if err.errno == errno.EBUSY and attempt < busy_retries:
                attempt += 1
                time.sleep(delay)
                delay = min(delay * 2, _BUSY_MAX_DELAY)
                continue
            hint = " (still in use: close files and processes under it, or use lazy=True)" \
                if err.errno == errno.EBUSY else ""
            raise _mount_error(f"cannot unmount {os.fsdecode(target)!r}: {err.strerror}{hint}",
                               target, err) from err


# --------------------------------------------------------------------------- mount table


def mount_table(mountinfo: StrPath = MOUNTINFO) -> Iterator[MountInfo]:
    """The mounts listed in a mountinfo file, in its order (parents before children).

    ``mountinfo`` defaults to this process's ``/proc/self/mountinfo``; any recorded file works.
    The file is read at once, so the table is a consistent snapshot. Raises ``ValueError`` for
    a malformed line.
    """
    with open(mountinfo, "rb") as f:
        data = f.read()
    origin = os.fsdecode(mountinfo)
    for fields in _syscalls.iter_mountinfo(data, origin):
        yield _record(fields)


def _record(fields: _syscalls.MountInfoFields) -> MountInfo:
    # Called once per mount line (10,000s of times for a big table): decode inline, and build
    # the tuple directly rather than through the NamedTuple's Python-level __new__.
    mount_id, parent_id, major, minor, root, point, opts, optional, fstype, source, sopts = fields
    enc, err = _FS_ENCODING, _FS_ERRORS
    return _new_tuple(MountInfo, (
        mount_id, parent_id, major, minor, root.decode(enc, err), point.decode(enc, err),
        opts.decode(enc, err), tuple(optional.decode(enc, err).split(" ")) if optional else (),
        fstype.decode(enc, err), source.decode(enc, err), sopts.decode(enc, err),
    ))


_new_tuple = tuple.__new__
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def submounts(path: StrPath, mountinfo: StrPath = MOUNTINFO) -> list[MountInfo]:
    """Mounts at ``path`` or below it, deepest first (the order to unmount them in).

    Matching is by whole path component: ``/foo`` covers ``/foo`` and ``/foo/bar`` but not
    ``/foobar``. ``path`` is made absolute and its symlinks resolved first. Among mounts
    stacked on one mount point, the most recent comes first.
    """
    base = os.path.realpath(os.fsdecode(path))
    prefix = base if base.endswith("/") else base + "/"
    found = [
        (index, info) for index, info in enumerate(mount_table(mountinfo))
        if info.mountpoint == base or info.mountpoint.startswith(prefix)
    ]
    found.sort(key=lambda item: (item[1].mountpoint.count("/"), item[0]), reverse=True)
    return [info for _, info in found]


# --------------------------------------------------------------------------- overlay


def _legacy_overlay_data(lowerdirs: Sequence[str], upperdir: str | None,
                         workdir: str | None, options: Sequence[str]) -> str:
    # the kernel's overlay option parser reads backslash escapes: any path can be carried
    return mount_data(overlay_mount(lowerdirs, upperdir, workdir, options).options)


def mount_overlay(target: StrPath, lowerdirs: Sequence[StrPath],
                  upperdir: StrPath | None = None, workdir: StrPath | None = None, *,
                  options: Iterable[str] = ()) -> None:
    """Mount overlayfs on ``target``: ``lowerdirs`` top-most first, then an optional writable
    ``upperdir`` with its ``workdir`` (both or neither; without them the mount is read-only).

    ``options`` are extra overlay options, ``"name=value"`` or a bare flag: e.g. ``"userxattr"``,
    ``"redirect_dir=on"``, ``"index=off"``, ``"xino=off"``, ``"volatile"``.

    Uses the new mount API with one ``lowerdir+`` per layer (long paths by file descriptor)
    when the kernel has it; otherwise legacy mount(2), but only if the data fits one page.
    Raises :class:`MountDataTooLong` when neither way can carry the chain, and
    :class:`MountError` (with the kernel's explanation) when the kernel refuses the mount.
    """
    if not lowerdirs:
        raise ValueError("mount_overlay needs at least one lower directory")
    if (upperdir is None) != (workdir is None):
        raise ValueError("mount_overlay needs upperdir and workdir together, or neither")
    opts = [str(o) for o in options]
    for o in opts:
        if not o or "," in o:
            raise ValueError(f"overlay option {o!r} must be one non-empty option without commas")
    lowers = [os.fsdecode(p) for p in lowerdirs]
    upper = None if upperdir is None else os.fsdecode(upperdir)
    work = None if workdir is None else os.fsdecode(workdir)

    # paths fsconfig cannot take as strings go as open directories: a newer kernel's feature
    if kernel.lowerdir_plus(all(kernel.fsconfig_takes(p) for p in (*lowers, upper or "", work or ""))):
        try:
            _syscalls.overlay_mount(target, lowers, upper, work, opts)
        except OSError as err:
            raise _mount_error(
                f"cannot mount overlay ({len(lowers)} lower layers) on "
                f"{os.fsdecode(target)!r}: {err.strerror}", target, err) from err
        return

    data = _legacy_overlay_data(lowers, upper, work, opts)
    if len(data.encode()) >= kernel.page_size():
        raise MountDataTooLong(
            f"overlay with {len(lowers)} lower layers on {os.fsdecode(target)!r} needs "
            f"{len(data.encode())} bytes of mount data, more than one page; this kernel lacks "
            f"the new mount API with lowerdir+ (Linux 6.8+) that would avoid the limit",
            path=os.fsdecode(target),
        )
    mount("overlay", target, "overlay", 0, data)


def mount_described(mounts: Sequence[Mount], target: StrPath) -> None:
    """Perform a list of :class:`aufs.Mount` descriptions on ``target``, in order.

    Kernel types: ``overlay`` (through :func:`mount_overlay`, so a chain longer than one page
    still mounts with one ``lowerdir+`` per layer), ``aufs`` (an entry with the ``remount``
    option adds branches to the mount before it), ``bind`` (``rbind`` recursive, ``ro`` made
    read-only). ``fuse3.fuse-overlayfs`` starts the ``fuse-overlayfs`` daemon, which detaches
    itself once the mount is up. ``ro`` means a read-only mount for every type. Raises
    ``ValueError`` for a type it does not know, :class:`MountError` when the kernel refuses; on
    failure whatever this call mounted is taken down again.
    """
    done = 0
    try:
        for m in mounts:
            flags = MS_RDONLY if "ro" in m.options else 0
            rest = [o for o in m.options if o not in ("ro", "rw", "remount")]
            if m.type == "overlay":
                lowers, upper, work, extra = parse_overlay_options(rest)
                mount_overlay(target, lowers, upper, work, options=extra)
            elif m.type == "bind":
                recursive = MS_REC if "rbind" in m.options else 0
                mount(m.source, target, None, MS_BIND | recursive)
                if flags:
                    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
            elif m.type == "aufs":
                remount = MS_REMOUNT if "remount" in m.options else 0
                mount(m.source, target, "aufs", flags | remount, ",".join(rest))
                if remount:
                    continue
            elif m.type == "fuse3.fuse-overlayfs":
                _run_fuse_overlayfs(m.options, target)
            else:
                raise ValueError(f"cannot perform a mount of type {m.type!r}")
            done += 1
    except BaseException:
        for _ in range(done):
            unmount(target, lazy=True)
        raise


def _run_fuse_overlayfs(options: Sequence[str], target: StrPath) -> None:
    binary = shutil.which("fuse-overlayfs")
    if binary is None:
        raise MountError("fuse-overlayfs is not installed", path=os.fsdecode(target))
    proc = subprocess.run([binary, "-o", ",".join(options), os.fsdecode(target)],
                          stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        raise MountError(f"fuse-overlayfs failed to mount {os.fsdecode(target)!r}: "
                         f"{proc.stderr.decode('utf-8', 'replace').strip()}", path=os.fsdecode(target))


# --------------------------------------------------------------------------- Python twin


def _is_octal_escape(data: bytes, i: int) -> bool:
    return (i + 3 < len(data) and 48 <= data[i + 1] <= 51
            and 48 <= data[i + 2] <= 55 and 48 <= data[i + 3] <= 55)


def unescape_octal(data: bytes) -> bytes:
    """Pure-Python twin of the C unescape: every ``\\ooo`` (<= 0o377) becomes its byte."""
    if b"\\" not in data:
        return data
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x5C and _is_octal_escape(data, i):
            out.append(int(data[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(c)
            i += 1
    return bytes(out)


def escape_octal(data: bytes, special: bytes = b" \t\n\\") -> bytes:
    """Escape as the kernel does in mountinfo: each byte of ``special`` becomes ``\\ooo``."""
    return b"".join(b"\\%03o" % c if c in special else bytes((c,)) for c in data)


def _uint(token: bytes, limit: int, line: bytes) -> int:
    if not token.isdigit():
        raise ValueError(f"not a mountinfo line: {line[:200]!r}")
    value = int(token)
    if value > limit:
        raise ValueError(f"not a mountinfo line (number too large): {line[:200]!r}")
    return value


def parse_mountinfo_line(line: bytes) -> MountInfo:
    """Parse one mountinfo line (no trailing newline) in pure Python; the C parser's twin."""
    parts = line.split(b" ")
    if len(parts) < 10:
        raise ValueError(f"not a mountinfo line: {line[:200]!r}")
    mount_id = _uint(parts[0], 0x7FFFFFFF, line)
    parent_id = _uint(parts[1], 0x7FFFFFFF, line)
    majmin = parts[2].split(b":", 1)
    if len(majmin) != 2:
        raise ValueError(f"not a mountinfo line: {line[:200]!r}")
    major = _uint(majmin[0], 0xFFFFFFFF, line)
    minor = _uint(majmin[1], 0xFFFFFFFF, line)
    try:
        dash = parts.index(b"-", 6)
    except ValueError:
        raise ValueError(f"not a mountinfo line (no '-' separator): {line[:200]!r}") from None
    if len(parts) < dash + 4:
        raise ValueError(f"not a mountinfo line: {line[:200]!r}")
    u = unescape_octal
    fields = (
        mount_id, parent_id, major, minor, u(parts[3]), u(parts[4]), u(parts[5]),
        b" ".join(u(p) for p in parts[6:dash]), u(parts[dash + 1]), u(parts[dash + 2]),
        u(b" ".join(parts[dash + 3:])),
    )
    return _record(fields)


def parse_mountinfo(data: bytes) -> list[MountInfo]:
    """Parse a whole mountinfo file's bytes in pure Python (the C parser's test oracle)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [parse_mountinfo_line(line) for line in lines]
