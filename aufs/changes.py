"""Change lists and diff sizes of a layer (``Driver.changes`` and ``Driver.diff_size``).

This module owns :class:`Change`, :class:`ChangeKind` and the rules that turn a layer's
diff directory (its own changes, in a :class:`~aufs.whiteouts.WhiteoutFormat`) plus a view
of the union of its parent chain (``lower_root``) into Docker's change list.

The rules are those of Docker's layer-directory ``Changes`` (moby ``pkg/archive``), written
down here because they are the contract:

1. A whiteout of NAME is a DELETE of NAME (whether or not NAME exists below).
2. Any other entry of the layer is a MODIFY if its path exists in ``lower_root``, else an ADD.
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
comparison, so ``/a-b`` comes before ``/a/b``. Cost: one ``lstat`` in ``lower_root`` per
entry of the layer, none below a directory that does not exist below (everything there is
an ADD), and one ``scandir`` per opaque directory; the depth of the chain never matters
because ``lower_root`` already shows the union.
"""
from __future__ import annotations

import enum
import os
import stat
from typing import Dict, List, NamedTuple, Optional, Set, Tuple, Union

from .whiteouts import EntryKind, WhiteoutFormat, classify_entry, is_opaque_dir, is_whiteout_stat

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
        return f"{self.kind} {self.path}"


def _lower_lstat(path: str) -> Optional[os.stat_result]:
    """lstat of a path in the lower view; None if absent (a whiteout device counts as absent)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if is_whiteout_stat(st.st_mode, st.st_rdev, WhiteoutFormat.OVERLAY):
        return None  # a plain parent diff dir used as the view may hold whiteouts
    return st


def _same_time(a_ns: int, b_ns: int) -> bool:
    """Docker's ``sameFsTime``: equal, or same second and either has no sub-second part."""
    if a_ns == b_ns:
        return True
    a_sec, a_sub = divmod(a_ns, 1_000_000_000)
    b_sec, b_sub = divmod(b_ns, 1_000_000_000)
    return a_sec == b_sec and (a_sub == 0 or b_sub == 0)


def _same_dir(upper: os.stat_result, lower: os.stat_result) -> bool:
    return (
        stat.S_ISDIR(lower.st_mode)
        and upper.st_mode == lower.st_mode
        and upper.st_uid == lower.st_uid
        and upper.st_gid == lower.st_gid
        and _same_time(upper.st_mtime_ns, lower.st_mtime_ns)
    )


# A directory still to walk: (its path in the layer, its absolute change path ("" for the
# root), its path in the lower view or None when nothing exists below it)
_Pending = Tuple[str, str, Optional[str]]


def compute_changes(
    layer_dir: PathArg, lower_root: Optional[PathArg], fmt: WhiteoutFormat
) -> List[Change]:
    """The changes the layer directory ``layer_dir`` (format ``fmt``) makes to ``lower_root``.

    ``lower_root`` is a directory showing the union of the parent chain, or None for a base
    layer (then every entry is an ADD and whiteouts are DELETEs). Follows the rules in the
    module docstring; sorted by path. Raises ``FileNotFoundError`` if ``layer_dir`` is missing.
    """
    root = os.fspath(layer_dir)
    lower = os.fspath(lower_root) if lower_root is not None else None
    kinds: Dict[str, ChangeKind] = {}
    listed_dirs: Set[str] = set()  # directories that are already in `kinds`

    def note_parent(parent: str) -> None:
        # rule 4: the directory holding an ADD or DELETE is listed
        if parent and parent not in listed_dirs:
            kinds.setdefault(parent, ChangeKind.MODIFY)
            listed_dirs.add(parent)

    if not os.path.isdir(root):
        raise FileNotFoundError(2, "layer directory not found", root)
    stack: List[_Pending] = [(root, "", lower)]
    while stack:
        dir_path, change_dir, lower_dir = stack.pop()
        provided: Set[str] = set()
        with os.scandir(dir_path) as it:
            for entry in it:
                kind, target = classify_entry(entry, fmt)
                if kind is EntryKind.WHITEOUT:
                    assert target is not None
                    path = change_dir + "/" + target
                    provided.add(target)
                    if path not in kinds:
                        kinds[path] = ChangeKind.DELETE
                    note_parent(change_dir)
                    continue
                if kind is not EntryKind.CONTENT:
                    continue  # opaque markers are read with their directory; metadata never
                name = entry.name
                provided.add(name)
                path = change_dir + "/" + name
                below = _lower_lstat(lower_dir + "/" + name) if lower_dir is not None else None
                is_dir = entry.is_dir(follow_symlinks=False)
                if below is None:
                    kinds[path] = ChangeKind.ADD
                    note_parent(change_dir)
                    if is_dir:
                        listed_dirs.add(path)
                        stack.append((entry.path, path, None))
                    continue
                if not is_dir:
                    kinds[path] = ChangeKind.MODIFY
                    continue
                lower_child: Optional[str] = None
                if lower_dir is not None and stat.S_ISDIR(below.st_mode):
                    lower_child = lower_dir + "/" + name
                opaque = lower_child is not None and is_opaque_dir(entry.path, fmt)
                if opaque or not _same_dir(entry.stat(follow_symlinks=False), below):
                    kinds[path] = ChangeKind.MODIFY
                    listed_dirs.add(path)
                stack.append((entry.path, path, lower_child))
                if opaque and lower_child is not None:
                    _hidden_deletes(entry.path, path, lower_child, fmt, kinds)
        if change_dir == "" and lower_dir is not None and is_opaque_dir(dir_path, fmt):
            _delete_hidden(lower_dir, "", provided, kinds)
    return [Change(path, kind) for path, kind in sorted(kinds.items())]


def _hidden_deletes(
    dir_path: str, change_dir: str, lower_dir: str, fmt: WhiteoutFormat, kinds: Dict[str, ChangeKind]
) -> None:
    """Rule 5 for an opaque directory: DELETE each lower name the layer does not provide."""
    provided: Set[str] = set()
    with os.scandir(dir_path) as it:
        for entry in it:
            kind, target = classify_entry(entry, fmt)
            if kind is EntryKind.CONTENT:
                provided.add(entry.name)
            elif kind is EntryKind.WHITEOUT and target is not None:
                provided.add(target)
    _delete_hidden(lower_dir, change_dir, provided, kinds)


def _delete_hidden(lower_dir: str, change_dir: str, provided: Set[str], kinds: Dict[str, ChangeKind]) -> None:
    try:
        with os.scandir(lower_dir) as it:
            for entry in it:
                if entry.name not in provided:
                    kinds.setdefault(change_dir + "/" + entry.name, ChangeKind.DELETE)
    except (FileNotFoundError, NotADirectoryError):
        return


def diff_size(layer_dir: PathArg, fmt: WhiteoutFormat) -> int:
    """Bytes of regular-file content in the layer directory, each inode counted once.

    Whiteouts, opaque markers and AUFS metadata (with everything below it) are not content.
    """
    root = os.fspath(layer_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(2, "layer directory not found", root)
    total = 0
    seen: Set[Tuple[int, int]] = set()
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    if classify_entry(entry, fmt).kind is EntryKind.CONTENT:
                        stack.append(entry.path)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                if classify_entry(entry, fmt).kind is not EntryKind.CONTENT:
                    continue
                st = entry.stat(follow_symlinks=False)
                if st.st_nlink > 1:
                    inode = (st.st_dev, st.st_ino)
                    if inode in seen:
                        continue
                    seen.add(inode)
                total += st.st_size
    return total
