"""Change lists and diff sizes of a layer (``Driver.changes`` and ``Driver.diff_size``).

This module owns :class:`Change`, :class:`ChangeKind` and the rules that turn a layer's
diff directory (its own changes, in a :class:`~aufs.whiteouts.WhiteoutFormat`) plus a view
of the union of its parent chain (``lower_root``) into Docker's change list.

The rules are those of Docker's layer-directory ``Changes`` (moby ``pkg/archive``), written
down here because they are the contract:

1. A whiteout of NAME is a DELETE of NAME (whether or not NAME exists below).
2. Any other entry of the layer is a MODIFY if its path exists in ``lower_root``, else an ADD
   (so everything inside a directory that replaced a non-directory is an ADD).
3. A directory that exists below *as a directory* with the same mode, owner and mtime (mtimes
   equal, or equal in whole seconds when either has no sub-second part, as tar writes them)
   is only there because something inside it changed: it is not listed by itself...
4. ...but a directory that directly contains an ADD or a DELETE is always listed, as MODIFY
   (the root ``/`` never is).
5. An opaque directory that exists below is a MODIFY, and every name below it that the
   layer does not provide again is a DELETE (so for an opaque root every name of the lower
   union missing from the layer is a DELETE). Docker's overlay walk reports such a directory
   as a DELETE followed by ADDs of its content, which no consumer can replay; the listing
   here says what actually changed.

Deviations from moby, each deliberate: lookups below use ``lstat`` (moby's ``stat`` calls a
dangling symlink absent and an existing one by its target's type); a directory's size is not
compared (it depends on the filesystem, not on the content) while its owner is (a ``chown``
is a change); AUFS metadata is skipped at every depth, not only at the root.

Paths are absolute (``/dir/file``) and the list is sorted by path as a plain string
comparison, so ``/a-b`` comes before ``/a/b``. Cost: at most one lookup in ``lower_root`` per
entry of the layer (an ``fstatat``, or for a directory of 16 entries or more one read of
its lower directory, whose ``d_type`` answers them all), none below a directory that does
not exist below (everything there is an ADD), plus one read of the lower directory per
opaque directory. The depth of the chain never matters: ``lower_root`` already shows the
union. The walk runs in C (``csrc/walk.c``): Python only turns its output into the list.

A name that is both an entry of a directory and the target of a whiteout beside it (``X``
and ``.wh.X`` in an AUFS-format directory) is listed for the entry, never as a DELETE, and
a directory in that case is a MODIFY.
"""
from __future__ import annotations

import enum
import errno
import functools
import gc
import itertools
import os
import stat
from typing import Any, NamedTuple, Optional, Union

from . import _fastpaths
from .errors import PathTooLong
from .whiteouts import (
    WHITEOUT_PREFIX,
    EntryKind,
    WhiteoutFormat,
    classify_entry,
    is_opaque_dir,
    is_whiteout_stat,
)

_WHITEOUT_PREFIX_BYTES = os.fsencode(WHITEOUT_PREFIX)

__all__ = ["Change", "ChangeKind", "compute_changes", "diff_size"]

PathArg = Union[str, "os.PathLike[str]"]


class ChangeKind(enum.IntEnum):
    """What happened to a path, with Docker's numeric values (``archive.ChangeType``)."""

    MODIFY = 0
    ADD = 1
    DELETE = 2

    def __str__(self) -> str:
        # Docker's one-letter form, as `docker diff` prints it
        return "CAD"[self.value]


class Change(NamedTuple):
    """One changed path: ``path`` is absolute (``/etc/passwd``), ``kind`` a :class:`ChangeKind`."""

    path: str
    kind: ChangeKind

    def __str__(self) -> str:
        return str(self.kind) + " " + self.path


_SCAN_LOWER_AT = 16  # entries in a layer directory from which its lower directory is read whole

# what a lookup in the lower view found
_ABSENT = 0
_NOT_A_DIR = 1
_DIR = 2


class _Below:
    """Lookups of one layer directory's names in the matching directory of the lower view.

    Few names: one ``lstat`` each. Many names: one ``scandir`` of the lower directory, whose
    ``d_type`` answers every lookup (far cheaper through an overlay mount than lstats).
    A 0/0 character device counts as absent: a plain parent diff dir used as the view may
    hold whiteouts.
    """

    __slots__ = ("names", "prefix")

    def __init__(self, lower_dir: str | None, count: int) -> None:
        self.prefix = None if lower_dir is None else lower_dir + "/"
        self.names: dict[str, int] | None = None
        if lower_dir is not None and count >= _SCAN_LOWER_AT:
            self.names = _scan_lower(lower_dir)

    def lookup(self, name: str) -> int:
        if self.prefix is None:
            return _ABSENT
        if self.names is not None:
            return self.names.get(name, _ABSENT)
        try:
            st = os.lstat(self.prefix + name)
        except (FileNotFoundError, NotADirectoryError):
            return _ABSENT
        if stat.S_ISDIR(st.st_mode):
            return _DIR
        if is_whiteout_stat(st.st_mode, st.st_rdev, WhiteoutFormat.OVERLAY):
            return _ABSENT
        return _NOT_A_DIR

    def path(self, name: str) -> str:
        assert self.prefix is not None
        return self.prefix + name


def _scan_lower(lower_dir: str) -> dict[str, int]:
    """The names in a directory of the lower view, each _DIR or _NOT_A_DIR.

    Whiteouts (0/0 devices, ``.wh.*`` names) are left out: overlayfs shows a directory that
    only one lower layer has as it is, and a plain parent diff dir may serve as the view.
    """
    found: dict[str, int] = {}
    try:
        with os.scandir(lower_dir) as it:
            for entry in it:
                if entry.name.startswith(WHITEOUT_PREFIX):  # markers of a plain diff dir used as the view
                    continue
                if entry.is_dir(follow_symlinks=False):
                    found[entry.name] = _DIR
                    continue
                if not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # overlayfs lists a lower whiteout it then refuses to look up
                    if is_whiteout_stat(st.st_mode, st.st_rdev, WhiteoutFormat.OVERLAY):
                        continue
                found[entry.name] = _NOT_A_DIR
    except (FileNotFoundError, NotADirectoryError):
        pass
    return found


def _same_time(a_ns: int, b_ns: int) -> bool:
    """Docker's ``sameFsTime``: equal, or same second and either has no sub-second part."""
    if a_ns == b_ns:
        return True
    a_sec, a_sub = divmod(a_ns, 1_000_000_000)
    b_sec, b_sub = divmod(b_ns, 1_000_000_000)
    return a_sec == b_sec and (a_sub == 0 or b_sub == 0)


def _same_dir(upper: os.stat_result, lower_path: str) -> bool:
    """Rule 3: the layer's directory has the same mode, owner and mtime as the one below."""
    lower = os.lstat(lower_path)
    return (
        stat.S_ISDIR(lower.st_mode)
        and upper.st_mode == lower.st_mode
        and upper.st_uid == lower.st_uid
        and upper.st_gid == lower.st_gid
        and _same_time(upper.st_mtime_ns, lower.st_mtime_ns)
    )


# A directory still to walk: (its path in the layer, its absolute change path ("" for the
# root), its path in the lower view or None when nothing exists below it)
_Pending = tuple[str, str, Optional[str]]


def compute_changes(
    layer_dir: PathArg, lower_root: PathArg | None, fmt: WhiteoutFormat
) -> list[Change]:
    """The changes the layer directory ``layer_dir`` (format ``fmt``) makes to ``lower_root``.

    ``lower_root`` is a directory showing the union of the parent chain, or None for a base
    layer (then every entry is an ADD and whiteouts are DELETEs). Follows the rules in the
    module docstring; sorted by path. Raises ``FileNotFoundError`` if ``layer_dir`` is missing.

    The walk runs in C (:func:`aufs._fastpaths.walk_changes`: ``getdents64``, lookups with
    ``fstatat`` relative to directory fds opened ``O_NOFOLLOW``), so Python only builds the
    list; :func:`compute_changes_py` is its pure-Python twin, kept as the test oracle. Both
    formats accept both kinds of whiteout, so ``fmt`` does not change the walk.
    """
    root = os.fspath(layer_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "layer directory not found", root)
    layer_fd = os.open(root, _O_DIR)
    try:
        lower_fd = None if lower_root is None else os.open(os.fspath(lower_root), _O_DIR)
        try:
            try:
                paths, kinds = _fastpaths.walk_changes(layer_fd, lower_fd)
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                raise PathTooLong.of(_too_long_path(layer_fd, _CHANGE_PATH_MAX),
                                    "cannot list the layer's changes") from exc
        finally:
            if lower_fd is not None:
                os.close(lower_fd)
    finally:
        os.close(layer_fd)
    # A layer of 100k files makes 100k tuples that all survive: the cyclic collector would
    # rescan them again and again and can find nothing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        # tuple.__new__ directly: Change._make would check each length, 100k times
        changes = list(map(tuple.__new__, itertools.repeat(Change),
                           zip(paths, map(_KIND_OF_BYTE.__getitem__, kinds))))
        changes.sort()  # paths are unique: only paths are compared
        return changes
    finally:
        if gc_was_enabled:
            gc.enable()


# the C walker's change-path buffer, NUL included (W_PATH_MAX in csrc/walk.c)
_CHANGE_PATH_MAX = 65536


def _too_long_path(layer_fd: int, limit: int) -> str:
    """The first path (absolute in the layer) whose length with its NUL exceeds ``limit``,
    found depth first with one directory fd per level (only after the C walker failed; a
    tree too deep for the fd limit gives the deepest path reached)."""
    stack: list[tuple[int, str, Any]] = []
    fd, path = os.dup(layer_fd), ""
    try:
        while True:
            with os.scandir(fd) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
            for name in sorted(os.listdir(fd)):
                if len(os.fsencode(path + "/" + name)) + 1 > limit:
                    return path + "/" + name
            stack.append((fd, path, iter(names)))
            fd = -1
            while stack:
                parent_fd, parent, rest = stack[-1]
                entry: str | None = next(rest, None)
                if entry is None:
                    os.close(stack.pop()[0])
                    continue
                name = entry
                try:
                    fd = os.open(name, _O_DIR | os.O_NOFOLLOW, dir_fd=parent_fd)
                except OSError as exc:
                    if exc.errno == errno.EMFILE:
                        return parent + "/" + name
                    continue  # removed or replaced since the listing
                path = parent + "/" + name
                break
            if fd < 0:
                return path or "/"
    finally:
        if fd >= 0:
            os.close(fd)
        for open_fd, _, _ in stack:
            os.close(open_fd)


_KIND_OF_BYTE = (ChangeKind.MODIFY, ChangeKind.ADD, ChangeKind.DELETE)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def compute_changes_py(
    layer_dir: PathArg, lower_root: PathArg | None, fmt: WhiteoutFormat
) -> list[Change]:
    """:func:`compute_changes` in pure Python (the oracle its tests compare against)."""
    root = os.fspath(layer_dir)
    lower = os.fspath(lower_root) if lower_root is not None else None
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "layer directory not found", root)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _compute(root, lower, fmt)
    finally:
        if gc_was_enabled:
            gc.enable()


def _compute(root: str, lower: str | None, fmt: WhiteoutFormat) -> list[Change]:
    # the loop below binds everything locally: it runs once per entry of the layer
    add, modify, delete = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE
    whiteout, content = EntryKind.WHITEOUT, EntryKind.CONTENT
    kinds: dict[str, ChangeKind] = {}
    root_opaque = lower is not None and is_opaque_dir(root, fmt)
    root_names: set[str] = set()  # what the root provides, to find what an opaque root hides
    stack: list[_Pending] = [(root, "", lower)]
    while stack:
        dir_path, change_dir, lower_dir = stack.pop()
        prefix = change_dir + "/"
        provided = root_names if root_opaque and not change_dir else None
        added_or_deleted = False
        with os.scandir(dir_path) as it:
            entries = list(it)
        if lower_dir is None and provided is None:
            # nothing below: every entry is an ADD, no lookups (the common case of new trees)
            added = _add_all(entries, prefix, fmt, kinds, stack)
            if added and change_dir and change_dir not in kinds:
                kinds[change_dir] = modify  # rule 4
            continue
        below = _Below(lower_dir, len(entries))
        for entry in entries:
            name = entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if name.startswith(WHITEOUT_PREFIX) or not (
                is_dir or entry.is_file(follow_symlinks=False) or entry.is_symlink()
            ):
                kind, target = classify_entry(entry, fmt)
                if kind is whiteout:
                    assert target is not None
                    kinds.setdefault(prefix + target, delete)
                    added_or_deleted = True
                    if provided is not None:
                        provided.add(target)
                    continue
                if kind is not content:
                    continue  # opaque markers are read with their directory; metadata never
            if provided is not None:
                provided.add(name)
            path = prefix + name
            found = below.lookup(name)
            if found is _ABSENT:
                kinds[path] = add
                added_or_deleted = True
                if is_dir:
                    stack.append((entry.path, path, None))
                continue
            if not is_dir:
                kinds[path] = modify
                continue
            if found is _NOT_A_DIR:  # a directory replaced a file: everything inside is new
                kinds[path] = modify
                stack.append((entry.path, path, None))
                continue
            lower_child = below.path(name)
            opaque = is_opaque_dir(entry.path, fmt)
            if (opaque or path in kinds
                    or not _same_dir(entry.stat(follow_symlinks=False), lower_child)):
                kinds[path] = modify
            stack.append((entry.path, path, lower_child))
            if opaque:
                _hidden_deletes(entry.path, path, lower_child, fmt, kinds)
        if added_or_deleted and change_dir and change_dir not in kinds:
            kinds[change_dir] = modify  # rule 4
    if root_opaque and lower is not None:
        _delete_hidden(lower, "", root_names, kinds)
    # tuple.__new__ directly: Change._make would check each length, 100k times
    return list(map(functools.partial(tuple.__new__, Change), sorted(kinds.items())))


def _add_all(
    entries: list[os.DirEntry[str]], prefix: str, fmt: WhiteoutFormat,
    kinds: dict[str, ChangeKind], stack: list[_Pending],
) -> bool:
    """Record the entries of a directory with nothing below it; True if any was recorded."""
    add = ChangeKind.ADD
    recorded = False
    for entry in entries:
        name = entry.name
        if entry.is_dir(follow_symlinks=False):
            if name.startswith(WHITEOUT_PREFIX):
                continue  # AUFS metadata directories (.wh..wh.plnk ...)
            path = prefix + name
            kinds[path] = add
            stack.append((entry.path, path, None))
        elif name.startswith(WHITEOUT_PREFIX) or not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
            kind, target = classify_entry(entry, fmt)
            if kind is EntryKind.WHITEOUT:
                assert target is not None
                kinds.setdefault(prefix + target, ChangeKind.DELETE)
            elif kind is EntryKind.CONTENT:
                kinds[prefix + name] = add
            else:
                continue
        else:
            kinds[prefix + name] = add
        recorded = True
    return recorded


def _hidden_deletes(
    dir_path: str, change_dir: str, lower_dir: str, fmt: WhiteoutFormat,
    kinds: dict[str, ChangeKind],
) -> None:
    """Rule 5 for an opaque directory: DELETE each lower name the layer does not provide."""
    provided: set[str] = set()
    with os.scandir(dir_path) as it:
        for entry in it:
            kind, target = classify_entry(entry, fmt)
            if kind is EntryKind.CONTENT:
                provided.add(entry.name)
            elif kind is EntryKind.WHITEOUT and target is not None:
                provided.add(target)
    _delete_hidden(lower_dir, change_dir, provided, kinds)


def _delete_hidden(
    lower_dir: str, change_dir: str, provided: set[str], kinds: dict[str, ChangeKind]
) -> None:
    """DELETE every name of ``lower_dir`` not in ``provided``.

    Whiteout devices are skipped: overlayfs passes a directory that only one lower layer has
    straight through, whiteouts included.
    """
    for name in _scan_lower(lower_dir):
        if name not in provided:
            kinds.setdefault(change_dir + "/" + name, ChangeKind.DELETE)


def diff_size(layer_dir: PathArg, fmt: WhiteoutFormat) -> int:
    """Bytes of regular-file content in the layer directory, each inode counted once.

    Whiteouts, opaque markers and AUFS metadata (with everything below it) are not content:
    in both formats every such name starts with ``.wh.``, and a whiteout device is no
    regular file. The walk is relative to directory fds opened ``O_NOFOLLOW`` one component
    at a time (paths deeper than PATH_MAX are fine), with at most ``_MAX_DIR_FDS`` open.
    """
    root = os.fspath(layer_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "layer directory not found", root)
    scanner = _fastpaths.DirScanner()
    total = 0
    seen: set[tuple[int, int]] = set()
    root_fd = os.open(root, _O_DIR)
    # per directory being walked: [fd or None while closed, its name, its subdirectories left]
    stack: list[list[Any]] = [[root_fd, b"", None]]
    try:
        while stack:
            frame = stack[-1]
            if frame[2] is None:
                subdirs = []
                for name, mode, _, _, _, _, size, _, nlink, ino, dev in scanner.scan(frame[0]):
                    if name.startswith(_WHITEOUT_PREFIX_BYTES):
                        continue
                    if stat.S_ISDIR(mode):
                        subdirs.append(name)
                    elif stat.S_ISREG(mode):
                        if nlink > 1:
                            if (dev, ino) in seen:
                                continue
                            seen.add((dev, ino))
                        total += size
                frame[2] = iter(subdirs)
            child = next(frame[2], None)
            if child is None:
                stack.pop()
                if stack and frame[0] is not None:
                    os.close(frame[0])
                continue
            parent_fd = frame[0] if frame[0] is not None else _reopen(stack)
            try:
                fd = os.open(child, _O_DIR | os.O_NOFOLLOW, dir_fd=parent_fd)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed or replaced since the scan (a mounted layer)
            stack.append([fd, child, None])
            spare = len(stack) - 1 - _MAX_DIR_FDS
            if spare > 0 and stack[spare][0] is not None:
                os.close(stack[spare][0])
                stack[spare][0] = None
    finally:
        for frame in stack[1:]:
            if frame[0] is not None:
                os.close(frame[0])
        os.close(root_fd)
    return total


_MAX_DIR_FDS = 128


def _reopen(stack: list[list[Any]]) -> int:
    """An fd on the directory at the top of ``stack``, reopened from the nearest open
    ancestor one ``O_NOFOLLOW`` component at a time."""
    i = len(stack) - 1
    while stack[i][0] is None:
        i -= 1
    fd: int = stack[i][0]
    for j in range(i + 1, len(stack)):
        opened = os.open(stack[j][1], _O_DIR | os.O_NOFOLLOW, dir_fd=fd)
        if j - 1 > i:
            os.close(fd)  # an intermediate directory opened only to get here
        fd = opened
    stack[-1][0] = fd
    return fd
