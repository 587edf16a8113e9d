"""containerd's snapshot model over a layer store: :class:`Snapshotter` (no gRPC here).

**Model.** containerd names *snapshots* by *keys* of its own choosing
(``default/4/extract-12345 sha256:...``); a snapshot is *active* (writable, made by
``prepare``), a *view* (read-only, made by ``view``) or *committed* (made from an active one by
``commit``, the only kind that can be a parent). Every snapshot here is one layer of the store:
``prepare`` and ``view`` create a fresh empty layer on the parent's layer, ``commit`` re-keys
the same layer, ``remove`` deletes it. Keys never become paths: a snapshot's layer id is
``ctd-<10 hex digits of sha256(key)>-<6 random hex digits>``, so a key may hold any
character but NUL.

**Records.** The key -> snapshot map (kind, layer id, parent key, labels, created/updated
times) lives in ``HOME/snapshotter/snapshots/``, one file per snapshot named by a hash of its
key, each written by write-temp, fsync, rename: a crash leaves a record old or new, and a write
costs the same however many snapshots exist. Layers are created before their record is written
and records deleted before their layer is removed; a crash in between leaves a ``ctd-*`` layer
no record names, which opening the snapshotter (and ``cleanup``) removes. Commit writes the
committed record before it deletes the active one; a crash between leaves both, and opening
finishes the commit.

**Concurrency.** One :class:`Snapshotter` per store: it holds ``HOME/snapshotter/server.lock``
while open (a second one fails with :class:`aufs.StoreLocked`). Its methods are thread-safe and
serialised by one lock, so of two racing ``prepare`` calls for one key exactly one succeeds and
the other raises :class:`SnapshotExists`.

**Mounts.** ``prepare``/``view``/``mounts`` return the store's description of the layer's union
(``Driver.mounts``): one overlay mount that containerd performs itself with mount(2), whose
data must fit in one page. containerd shortens long lower-dir lists by making them relative to
their common parent (:func:`containerd_can_mount` repeats its arithmetic); the store names the
lowers of such chains by its fixed-length short links, so the depth limit is about 180 layers
(4096 bytes over 21 per ``l/<20 characters>`` entry, less the absolute upper and
work dirs); ``prepare``/``view`` of a deeper chain raise :class:`SnapshotConflict` and change
nothing, rather than hand containerd a mount it cannot perform.

**Errors** (each an :class:`aufs.AufsError`): :class:`SnapshotNotFound` (a ``LookupError``),
:class:`SnapshotExists` (a ``FileExistsError``), :class:`SnapshotConflict` (the snapshot's kind
or children forbid it), :class:`InvalidSnapshotRequest` (a ``ValueError``: bad key, labels,
parent kind, field path or filter). Every refused request changes nothing.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import kernel
from ..durable import fsync_directory, replace_file
from ..errors import (
    AufsError,
    BackendUnavailable,
    LayerExists,
    LayerInUse,
    LayerNotFound,
    MaxDepthExceeded,
    StoreLocked,
)
from ..plan import Mount
from ..whiteouts import WhiteoutFormat
from .filters import compile_filters

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Driver

__all__ = [
    "ACTIVE",
    "COMMITTED",
    "MAX_KEY_BYTES",
    "MAX_LABELS_BYTES",
    "MAX_LABEL_PAIR_BYTES",
    "VIEW",
    "InvalidSnapshotRequest",
    "Snapshot",
    "SnapshotConflict",
    "SnapshotExists",
    "SnapshotNotFound",
    "Snapshotter",
    "Usage",
    "containerd_can_mount",
]

ACTIVE, VIEW, COMMITTED = "active", "view", "committed"
KINDS = (ACTIVE, VIEW, COMMITTED)

MAX_KEY_BYTES = 4096
"""Longest key or name accepted (UTF-8 bytes); containerd's own are far shorter."""
MAX_LABEL_PAIR_BYTES = 4096
"""containerd's limit on one label's key plus value."""
MAX_LABELS_BYTES = 64 * 1024
"""Limit on all labels of one snapshot together (keeps the records file small)."""

log = logging.getLogger("aufs.serve.snapshotter")

RECORDS_VERSION = 1
_LAYER_ID = re.compile(r"ctd-[0-9a-f]{10}-[0-9a-f]{6}\Z")


class SnapshotNotFound(AufsError, LookupError):
    """No snapshot has that key (or the named parent does not exist)."""


class SnapshotExists(AufsError, FileExistsError):
    """A snapshot with that key or name already exists."""


class SnapshotConflict(AufsError, RuntimeError):
    """The snapshot's kind or its children forbid the operation (gRPC FailedPrecondition)."""


class InvalidSnapshotRequest(AufsError, ValueError):
    """A malformed request: key, labels, parent kind, field path or filter (InvalidArgument)."""


@dataclass(frozen=True)
class Snapshot:
    """One snapshot: containerd's ``Info`` plus the layer that holds it."""

    key: str
    kind: str
    layer_id: str
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created: int = 0
    """Nanoseconds since the epoch."""
    updated: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer_id, "parent": self.parent,
                "labels": dict(self.labels), "created": self.created, "updated": self.updated}

    @classmethod
    def from_json(cls, key: str, data: Mapping[str, Any]) -> Snapshot:
        return cls(key=key, kind=data["kind"], layer_id=data["layer"], parent=data["parent"],
                   labels=dict(data["labels"]), created=int(data["created"]), updated=int(data["updated"]))

    def field_value(self, path: Sequence[str]) -> str | None:
        """The value a List filter sees at ``path`` (None: absent)."""
        if len(path) == 1:
            return {"name": self.key, "parent": self.parent, "kind": self.kind}.get(path[0])
        if len(path) >= 2 and path[0] == "labels":
            return self.labels.get(".".join(path[1:]))
        return None


class Usage(NamedTuple):
    """Disk use of a snapshot's own layer: bytes allocated and distinct inodes."""

    size: int
    inodes: int


def _now() -> int:
    return time.time_ns()


def check_key(key: object, what: str = "key") -> str:
    """Return ``key`` if it is a usable snapshot key: non-empty text, no NUL, at most 4096 bytes."""
    if not isinstance(key, str) or key == "":
        raise InvalidSnapshotRequest(f"snapshot {what} must not be empty")
    if "\0" in key:
        raise InvalidSnapshotRequest(f"snapshot {what} {key[:80]!r} holds a NUL character")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidSnapshotRequest(f"snapshot {what} {key[:80]!r}... is longer than {MAX_KEY_BYTES} bytes")
    return key


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``labels`` if each pair fits containerd's 4096 bytes and all fit 64 KiB."""
    total = 0
    for name, value in labels.items():
        size = len(name.encode()) + len(value.encode())
        if name == "" or "\0" in name or "\0" in value:
            raise InvalidSnapshotRequest(f"label {name[:80]!r}: names must not be empty, nor hold NUL")
        if size > MAX_LABEL_PAIR_BYTES:
            raise InvalidSnapshotRequest(
                f"label {name[:80]!r}: key and value are {size} bytes, more than {MAX_LABEL_PAIR_BYTES}")
        total += size
    if total > MAX_LABELS_BYTES:
        raise InvalidSnapshotRequest(
            f"{len(labels)} labels of {total} bytes: a snapshot holds at most {MAX_LABELS_BYTES} bytes of labels")
    return dict(labels)


def disk_usage(root: str) -> Usage:
    """Bytes allocated (512-byte blocks) and distinct inodes below ``root``, like containerd's."""
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [root]
    while stack:
        path = stack.pop()
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512
        if os.path.isdir(path) and not os.path.islink(path):
            with os.scandir(path) as entries:
                stack.extend(e.path for e in entries)
    return Usage(size, len(seen))


def containerd_can_mount(mounts: Sequence[Mount], page: int | None = None) -> bool:
    """True if containerd (1.6) can perform ``mounts`` with mount(2).

    containerd mounts each entry with one mount(2), whose data must fit in a page. For overlay
    data of ``page - 512`` bytes or more it first rewrites the lower dirs relative to the parent
    of their longest common prefix and mounts from there (its ``compactLowerdirOption``); upper
    and work dirs stay absolute. This repeats that arithmetic.
    """
    page = page or kernel.page_size()
    for m in mounts:
        options = [o for o in m.options if o not in ("ro", "rw")]
        size = len(",".join(options))
        if m.type == "overlay" and size >= page - 512:
            lowers = [o for o in options if o.startswith("lowerdir=")]
            dirs = lowers[0][len("lowerdir="):].split(":") if len(lowers) == 1 else []
            common = os.path.dirname(os.path.commonprefix(dirs)) if len(dirs) > 1 else ""
            if common not in ("", "/"):
                size -= (len(common) + 1) * len(dirs)
        if size > page:
            return False
    return True


class _Records:
    """The persistent key -> :class:`Snapshot` map: one file per snapshot (callers serialise).

    ``snapshots/<sha256 of the key>.json`` holds one record, written to a temporary name,
    fsynced and renamed into place, so every write and delete costs the same however many
    snapshots exist. Commit writes the committed record, then deletes the active one; a crash
    between the two leaves both naming one layer, which loading resolves for the commit.
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.join(directory, "snapshots")
        os.makedirs(self.directory, 0o700, exist_ok=True)
        self.snapshots: dict[str, Snapshot] = {}
        by_layer: dict[str, Snapshot] = {}
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if not name.endswith(".json"):
                os.unlink(path)  # a write that a crash interrupted before its rename
                continue
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("version") != RECORDS_VERSION or self._file(data["key"]) != path:
                raise AufsError(f"{path}: not a snapshot record of this version ({RECORDS_VERSION})", path=path)
            snap = Snapshot.from_json(data["key"], data)
            other = by_layer.get(snap.layer_id)
            if other is not None:
                # a commit interrupted between its two steps: finish it
                active, committed = (other, snap) if snap.kind == COMMITTED else (snap, other)
                os.unlink(self._file(active.key))
                self.snapshots.pop(active.key, None)
                snap = committed
            by_layer[snap.layer_id] = snap
            self.snapshots[snap.key] = snap

    def _file(self, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(self.directory, digest + ".json")

    @staticmethod
    def new_layer_id(key: str) -> str:
        """A fresh layer id for ``key``: a hash of the key (to recognise it) and random bits."""
        # short, because containerd's mount(2) data holds ~27 bytes per lower layer
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        return f"ctd-{digest}-{os.urandom(3).hex()}"

    def _sync_directory(self) -> None:
        fsync_directory(self.directory)

    def put(self, snap: Snapshot) -> None:
        """Write ``snap``'s record (new or replacing); the map changes only if that succeeded."""
        path = self._file(snap.key)
        data = json.dumps({"version": RECORDS_VERSION, "key": snap.key, **snap.to_json()},
                          separators=(",", ":")).encode("utf-8")
        replace_file(path, data, path + ".tmp")
        self.snapshots[snap.key] = snap

    def delete(self, key: str) -> None:
        os.unlink(self._file(key))
        self._sync_directory()
        del self.snapshots[key]


class Snapshotter:
    """containerd's snapshotter contract over ``driver``'s store (see the module docstring).

    Open it with ``with Snapshotter(driver) as s:`` or call :meth:`close`. Opening takes the
    store's snapshotter lock (:class:`aufs.StoreLocked` if another one holds it) and removes
    ``ctd-*`` layers no record names (debris of a crash).
    """

    def __init__(self, driver: Driver) -> None:
        if driver.whiteout_format is not WhiteoutFormat.OVERLAY:
            raise BackendUnavailable(
                f"the store {driver.home} uses {driver.whiteout_format.name.lower()} whiteouts; containerd "
                "mounts snapshots with kernel overlayfs itself, so it needs a store made by the overlay backend")
        if any(c in str(driver.home) for c in ",:\\"):
            raise InvalidSnapshotRequest(
                f"the store's home {driver.home} holds ',', ':' or '\\': containerd splits overlay "
                "options on them without unescaping; use a home path without them")
        self.driver = driver
        directory = driver.layout.snapshotter_dir
        os.makedirs(directory, 0o700, exist_ok=True)
        lock_path = os.path.join(directory, "server.lock")
        self._lock_fd: int | None = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreLocked(f"another snapshotter server uses the store {driver.home} "
                              f"(it holds {lock_path}); stop it first", path=lock_path) from None
        self._mutex = threading.Lock()
        try:
            self._records = _Records(str(directory))
            self._sweep()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Snapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's snapshotter lock. Idempotent; snapshots persist."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ helpers

    def _get(self, key: str) -> Snapshot:
        check_key(key)
        try:
            return self._records.snapshots[key]
        except KeyError:
            raise SnapshotNotFound(f"snapshot {key!r} does not exist") from None

    def _sweep(self) -> None:
        """Remove ``ctd-*`` layers that no record names, children first."""
        named = {s.layer_id for s in self._records.snapshots.values()}
        orphans = [i for i in self.driver.layers() if _LAYER_ID.match(i) and i not in named]
        depth = {i: self._depth(i) for i in orphans}
        for layer_id in sorted(orphans, key=lambda i: -depth[i]):
            self._remove_layer(layer_id)

    def _remove_layer(self, layer_id: str) -> None:
        """Remove a layer no snapshot names any more; one someone holds (``aufs mount``) stays
        until a later sweep (open, Cleanup), rather than being pulled from under its user."""
        try:
            self.driver.remove(layer_id)
        except LayerNotFound:
            pass
        except LayerInUse as exc:
            log.warning("layer %s of a removed snapshot stays until it is released: %s", layer_id, exc)

    def _depth(self, layer_id: str) -> int:
        depth = 0
        parent = self.driver.parent(layer_id)
        while parent is not None:
            depth += 1
            parent = self.driver.parent(parent)
        return depth

    def _new(self, kind: str, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        check_key(key)
        labels = check_labels(labels)
        with self._mutex:
            records = self._records
            if key in records.snapshots:
                raise SnapshotExists(f"snapshot {key!r} already exists")
            parent_layer = None
            if parent:
                check_key(parent, "parent")
                base = records.snapshots.get(parent)
                if base is None:
                    raise SnapshotNotFound(f"parent snapshot {parent!r} of {key!r} does not exist")
                if base.kind != COMMITTED:
                    raise InvalidSnapshotRequest(
                        f"parent {parent!r} of {key!r} is a {base.kind} snapshot, not a committed one")
                parent_layer = base.layer_id
            verb = "prepare" if kind == ACTIVE else "view"
            while True:
                layer_id = records.new_layer_id(key)
                try:
                    self.driver.create(layer_id, parent_layer)
                    break
                except LayerExists:
                    continue  # 24 random bits met an earlier layer of the same key hash: draw again
                except MaxDepthExceeded as exc:
                    raise SnapshotConflict(f"cannot {verb} {key!r}: {exc}") from exc
            now = _now()
            snap = Snapshot(key, kind, layer_id, parent, labels, now, now)
            try:
                described = self._describe(snap)
                if not containerd_can_mount(described):
                    raise SnapshotConflict(
                        f"cannot {verb} {key!r}: its chain of {self._depth(layer_id) + 1} layers is deeper "
                        "than containerd can mount (its mount(2) data would not fit in one page)")
                records.put(snap)
            except BaseException:
                with contextlib.suppress(AufsError, OSError):
                    self.driver.remove(layer_id)
                raise
            return described

    def _describe(self, snap: Snapshot) -> list[Mount]:
        return self.driver.mounts(snap.layer_id, readonly=snap.kind == VIEW)

    # ------------------------------------------------------------------ the contract

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create the active snapshot ``key`` on the committed ``parent`` ("" for none).

        Returns its mounts (writable). Raises :class:`SnapshotExists` if ``key`` exists,
        :class:`SnapshotNotFound` for a missing parent, :class:`InvalidSnapshotRequest` for a
        parent that is not committed or a bad key or labels. Not idempotent.
        """
        return self._new(ACTIVE, key, parent, labels or {})

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Like :meth:`prepare`, for the read-only view ``key`` of ``parent``'s content."""
        return self._new(VIEW, key, parent, labels or {})

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of the active or view snapshot ``key`` (again, as prepare/view returned).

        Raises :class:`SnapshotNotFound`, :class:`SnapshotConflict` for a committed snapshot.
        """
        with self._mutex:
            snap = self._get(key)
        if snap.kind == COMMITTED:
            raise SnapshotConflict(f"snapshot {key!r} is committed: only active and view snapshots mount")
        return self._describe(snap)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> Snapshot:
        """Turn the active snapshot ``key`` into the committed snapshot ``name`` (same layer).

        ``key`` disappears; ``name`` gets ``labels`` (only those) and fresh times. Raises
        :class:`SnapshotNotFound`, :class:`SnapshotConflict` if ``key`` is not active,
        :class:`SnapshotExists` if ``name`` exists.
        """
        check_key(name, "name")
        labels = check_labels(labels or {})
        with self._mutex:
            records = self._records
            active = self._get(key)
            if active.kind != ACTIVE:
                raise SnapshotConflict(f"snapshot {key!r} is a {active.kind} snapshot, not an active one: "
                                       "only active snapshots commit")
            if name in records.snapshots:
                raise SnapshotExists(f"snapshot {name!r} already exists")
            now = _now()
            committed = Snapshot(name, COMMITTED, active.layer_id, active.parent, labels, now, now)
            records.put(committed)
            try:
                records.delete(key)
            except BaseException:
                with contextlib.suppress(OSError):
                    records.delete(name)
                raise
            return committed

    def remove(self, key: str) -> None:
        """Delete the snapshot ``key`` and its layer.

        Raises :class:`SnapshotNotFound`, :class:`SnapshotConflict` if snapshots have it as
        parent. The record goes first: a crash before the layer is gone leaves debris the next
        open removes, never a record without its layer.
        """
        with self._mutex:
            records = self._records
            snap = self._get(key)
            children = sorted(k for k, s in records.snapshots.items() if s.parent == key)
            if children:
                shown = ", ".join(repr(c) for c in children[:3])
                raise SnapshotConflict(f"cannot remove snapshot {key!r}: it is the parent of {shown}"
                                       f"{' ...' if len(children) > 3 else ''}; remove those first")
            records.delete(key)
            self._remove_layer(snap.layer_id)

    def stat(self, key: str) -> Snapshot:
        """The snapshot ``key``. Raises :class:`SnapshotNotFound`."""
        with self._mutex:
            return self._get(key)

    def update(self, key: str, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()) -> Snapshot:
        """Change the labels of ``key`` as containerd does; returns the updated snapshot.

        No field paths: the labels become ``labels``. ``"labels"``: the same. ``"labels.K"``:
        label K takes its value in ``labels``, or is deleted if ``labels`` has none. Any other
        path (name, parent, kind, created) is immutable: :class:`InvalidSnapshotRequest`.
        """
        labels = dict(labels)
        with self._mutex:
            records = self._records
            snap = self._get(key)
            updated = dict(snap.labels)
            if not fieldpaths:
                updated = dict(labels)
            for path in fieldpaths:
                if path == "labels":
                    updated = dict(labels)
                elif path.startswith("labels."):
                    name = path[len("labels."):]
                    if name in labels:
                        updated[name] = labels[name]
                    else:
                        updated.pop(name, None)
                else:
                    raise InvalidSnapshotRequest(f"cannot update the {path!r} field of snapshot {key!r}: "
                                                 "only labels are mutable")
            new = replace(snap, labels=check_labels(updated), updated=_now())
            records.put(new)
            return new

    def walk(self, filters: Sequence[str] = ()) -> list[Snapshot]:
        """The snapshots matching any of ``filters`` (containerd syntax; none: all), by key.

        Raises :class:`aufs.serve.filters.FilterSyntaxError` (an InvalidArgument) for a bad filter.
        """
        match = compile_filters(filters)
        with self._mutex:
            snapshots = sorted(self._records.snapshots.values(), key=lambda s: s.key)
        return [s for s in snapshots if match(s.field_value)]

    def usage(self, key: str) -> Usage:
        """Bytes and inodes of the snapshot's own layer (its diff dir), measured now."""
        with self._mutex:
            snap = self._get(key)
        try:
            return disk_usage(self.driver.diff_dir(snap.layer_id))
        except (FileNotFoundError, LayerNotFound):
            # removed while we measured: the snapshot is gone too
            raise SnapshotNotFound(f"snapshot {key!r} does not exist") from None

    def cleanup(self) -> None:
        """Remove the layers of snapshots that no longer exist (crash debris). Idempotent."""
        with self._mutex:
            self._sweep()

