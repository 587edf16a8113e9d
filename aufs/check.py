"""Consistency check (and repair) of a layer store: the logic behind ``Driver.check``.

This module owns the list of inconsistencies a store can show, how each one is recognised,
and how each one is repaired. A store killed at any point shows only *repairable* ones (its
design makes every change by rename), and opening a ``Driver`` already sweeps most of them;
``check`` reports everything that remains, including what a live process left behind
(e.g. a mount nobody references) and what damage from outside the store looks like
(e.g. a layer whose parent directory was deleted by hand).

Kinds of finding (one term each, the same in the report, the docs and the CLI):

``leftover-temporary``
    an entry in ``tmp/`` whose owner process is dead (or that no process of ours named), a
    ``*.tmp`` file of a reference table or of the store description. Repair: unmount what is
    mounted inside, delete.
``orphan-directory``
    an entry of ``layers/`` that is no layer: a malformed name, or no ``layer.json``. It would
    show in ``layers()``. Repair: unmount what uses it, rename it away, delete.
``missing-work-directory``
    a layer without its backend work directory. Repair: recreate it (empty).
``wrong-ancestors``
    a layer whose recorded ancestor list disagrees with its parent's. Repair: rewrite it.
``dangling-parent``
    a layer whose parent does not exist. Not repairable (the parent's content is lost);
    remove the layer or restore the parent.
``corrupt-metadata``, ``incomplete-layer``
    a ``layer.json`` that cannot be read, a layer without its diff dir. Not repairable.
``stale-mount``
    a mount below the store no live holder references: a layer mount of dead processes, a
    mount on ``mnt/NAME`` where NAME is no layer, anything else mounted below the store
    outside a live layer's union. Repair: unmount (the backend's way for layer mounts).
``stacked-mount``
    a layer's mountpoint mounted more than once. Repair: unmount the extra mounts (all of
    them when nobody holds a reference).
``stale-references``
    a reference table naming dead holders, held for a layer that is not mounted, or left for
    an absent layer. Repair: drop the dead holders, or the table.
``stale-mountpoint``
    an entry of ``mnt/`` that is not mounted. Repair: delete it.
``loose-permissions``
    a store directory other users may enter (stores made before 0.2 were 0755): they could
    reach mounted root filesystems and run their setuid programs. Opening the store already
    tightens it to 0700 (the report says so); a read-only store only reports it.
``stale-state``
    a lock file or backend record of an absent layer, a short link (``l/``) to an absent
    layer. Repair: delete it.
``dangling-image``
    an image record (``images/``) naming a layer that is not in the store (removed with
    ``remove``). Repair: drop the record; import the image again to get it back.
``corrupt-image-record``
    a file in ``images/`` that is no readable image record. Repair: delete it.

Concurrency: the check holds the store lock (no create or remove runs meanwhile) and each
layer's lock while it looks at that layer's mount and references, so it never mistakes
another process's work in progress for debris: temporary entries of live processes are left
alone.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

from . import locks, mounts
from .backends.base import detach
from .clone import remove_tree
from .core import StoreCore
from .image.records import check_images
from .layout import Layout, is_valid_layer_id
from .owners import ProcessToken
from .refcount import RefTable

__all__ = ["KINDS", "UNREPAIRABLE_KINDS", "CheckReport", "Finding", "check_store"]

KINDS = (
    "leftover-temporary",
    "orphan-directory",
    "missing-work-directory",
    "wrong-ancestors",
    "dangling-parent",
    "corrupt-metadata",
    "incomplete-layer",
    "stale-mount",
    "stacked-mount",
    "stale-references",
    "stale-mountpoint",
    "stale-state",
    "loose-permissions",
    "dangling-image",
    "corrupt-image-record",
)
UNREPAIRABLE_KINDS = frozenset({"dangling-parent", "corrupt-metadata", "incomplete-layer"})


@dataclass(frozen=True)
class Finding:
    """One inconsistency: its ``kind`` (see :data:`KINDS`), the ``path`` concerned, the layer if
    any, a sentence saying what is wrong, and whether ``check(repair=True)`` fixed it."""

    kind: str
    path: str
    detail: str
    layer_id: str | None = None
    repaired: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "detail": self.detail,
                "layer_id": self.layer_id, "repaired": self.repaired}


@dataclass
class CheckReport:
    """What :func:`check_store` found under ``home``; empty ``findings`` means consistent."""

    home: str
    repair: bool
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True if nothing at all was found."""
        return not self.findings

    @property
    def unrepaired(self) -> list[Finding]:
        """Findings still standing (all of them when ``repair`` was False)."""
        return [f for f in self.findings if not f.repaired]

    @property
    def ok(self) -> bool:
        """True if the store is consistent now (nothing found, or everything repaired)."""
        return not self.unrepaired

    def as_dict(self) -> dict[str, Any]:
        return {"home": self.home, "repair": self.repair, "ok": self.ok,
                "findings": [f.as_dict() for f in self.findings]}

    def __str__(self) -> str:
        if not self.findings:
            return f"{self.home}: consistent"
        lines = [f"{self.home}: {len(self.findings)} finding(s), {len(self.unrepaired)} unrepaired"]
        for f in self.findings:
            mark = "repaired" if f.repaired else ("cannot repair" if f.kind in UNREPAIRABLE_KINDS
                                                  else "found")
            lines.append(f"  [{mark}] {f.kind}: {f.detail} ({f.path})")
        return "\n".join(lines)


def _remove_tree(path: str) -> None:
    """Unmount whatever is mounted at or below ``path``, then delete it (gone already is fine)."""
    for info in mounts.submounts(str(path)):  # deepest first
        detach(info.mountpoint)
    remove_tree(path)


class _Checker:
    """One run of the check over one store (the caller holds the store lock)."""

    def __init__(self, core: StoreCore, repair: bool) -> None:
        self.core = core
        self.layout: Layout = core.layout
        self.repair = repair
        self.report = CheckReport(home=str(self.layout.home), repair=repair)
        self.layers: set[str] = set()

    def found(self, kind: str, path: str, detail: str, layer_id: str | None = None,
              fix: Callable[[], None] | None = None) -> None:
        """Record a finding, repairing it first when asked and a repair exists."""
        repaired = False
        if self.repair and fix is not None and kind not in UNREPAIRABLE_KINDS:
            fix()
            repaired = True
        self.report.findings.append(Finding(kind, path, detail, layer_id, repaired))

    # -- the parts of the store, in an order where each repair helps the next step ------------

    def run(self) -> CheckReport:
        self.check_permissions()
        self.check_temporaries()
        self.check_layer_dirs()
        self.check_lineage()
        self.check_layer_mounts()
        self.check_other_mounts()
        self.check_mountpoints()
        self.check_state()
        self.check_links()
        check_images(self.layout, self.layers, self.found)
        return self.report

    def check_permissions(self) -> None:
        for path in self.core.tightened:
            self.report.findings.append(Finding(
                "loose-permissions", path, "other users could enter this store directory; "
                "opening the store made it 0700", None, True))
        for path in self.layout.directories():
            try:
                mode = stat.S_IMODE(os.lstat(path).st_mode)
            except FileNotFoundError:
                continue
            if mode & 0o077:
                self.found("loose-permissions", path, f"mode {mode:04o}: other users may enter it and "
                           "reach mounted root filesystems", fix=lambda p=path, m=mode: os.chmod(p, m & 0o700))  # type: ignore[misc]

    def check_temporaries(self) -> None:
        layout = self.layout
        for name in sorted(_listdir(layout.tmp_dir)):
            owner = Layout.temp_owner(name)
            if owner is not None and owner.alive():
                continue  # another process's work in progress
            path = os.path.join(layout.tmp_dir, name)
            who = "no process of ours" if owner is None else f"process {owner.pid}, which is dead"
            self.found("leftover-temporary", path, f"temporary entry {name!r} left by {who}",
                       fix=lambda p=path: _remove_tree(p))  # type: ignore[misc]
        meta_tmp = Layout.tmp_sibling(layout.meta_file)
        if os.path.lexists(meta_tmp):
            self.found("leftover-temporary", meta_tmp, "half-written store description",
                       fix=lambda: _remove_tree(meta_tmp))

    def check_layer_dirs(self) -> None:
        layout = self.layout
        for name in sorted(_listdir(layout.layers_dir)):
            path = os.path.join(layout.layers_dir, name)
            if not is_valid_layer_id(name):
                self.found("orphan-directory", path, f"{name!r} in layers/ is not a layer id",
                           fix=lambda p=path: self._discard(p, None))  # type: ignore[misc]
                continue
            if not os.path.isdir(path) or os.path.islink(path):
                self.found("orphan-directory", path, f"layers/{name} is not a directory", layer_id=name,
                           fix=lambda p=path, n=name: self._discard(p, n))  # type: ignore[misc]
                continue
            meta_path = layout.layer_meta(name)
            if not os.path.lexists(meta_path):
                self.found("orphan-directory", path, f"layers/{name} has no layer.json: it is no "
                           "complete layer, yet layers() lists it", layer_id=name,
                           fix=lambda p=path, n=name: self._discard(p, n))  # type: ignore[misc]
                continue
            self.layers.add(name)
            if not os.path.isdir(layout.diff_dir(name)):
                self.found("incomplete-layer", layout.diff_dir(name),
                           f"layer {name!r} has no diff dir; remove it and build it again", layer_id=name)
            work = layout.work_dir(name)
            if not os.path.isdir(work):
                self.found("missing-work-directory", work, f"layer {name!r} has no work directory",
                           layer_id=name, fix=lambda w=work: os.mkdir(w, 0o700))  # type: ignore[misc]

    def _discard(self, path: str, layer_id: str | None) -> None:
        """Take a non-layer out of layers/ the way ``remove`` does: unmount, rename away, delete."""
        if layer_id is not None:
            target = self.layout.mountpoint(layer_id)
            for info in mounts.submounts(target):
                detach(info.mountpoint)
        trash = self.layout.temp_path("remove", ProcessToken.current(), layer_id)
        os.rename(path, trash)
        _remove_tree(trash)

    def check_lineage(self) -> None:
        metas: dict[str, dict[str, Any]] = {}
        for layer_id in sorted(self.layers):
            path = self.layout.layer_meta(layer_id)
            try:
                with open(path, "rb") as f:
                    meta = json.load(f)
                parent = meta["parent"]
                ancestors = meta["ancestors"]
                if not (parent is None or isinstance(parent, str)) or not isinstance(ancestors, list):
                    raise ValueError("wrong field types")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.found("corrupt-metadata", path, f"layer {layer_id!r} has unreadable metadata: {exc}",
                           layer_id=layer_id)
                continue
            metas[layer_id] = meta
        for layer_id, meta in sorted(metas.items()):
            parent = meta["parent"]
            if parent is None:
                expected: list[str] | None = []
            elif parent not in self.layers:
                self.found("dangling-parent", self.layout.layer_dir(layer_id),
                           f"layer {layer_id!r} has the parent {parent!r}, which does not exist; "
                           "restore the parent or remove the layer", layer_id=layer_id)
                continue
            else:
                expected = _chain(parent, metas)
            if expected is not None and meta["ancestors"] != expected:
                new_meta = dict(meta, ancestors=expected)
                self.found("wrong-ancestors", self.layout.layer_meta(layer_id),
                           f"layer {layer_id!r} records the ancestors {meta['ancestors']!r}, its parent "
                           f"chain is {expected!r}", layer_id=layer_id,
                           fix=lambda i=layer_id, m=new_meta: self._write_meta(i, m))  # type: ignore[misc]

    def _write_meta(self, layer_id: str, meta: dict[str, Any]) -> None:
        path = self.layout.layer_meta(layer_id)
        tmp = Layout.tmp_sibling(path)
        with open(tmp, "w", encoding="ascii") as f:
            json.dump(meta, f)
        os.replace(tmp, path)

    def check_layer_mounts(self) -> None:
        """Each layer's mount against its reference table, under the layer's lock."""
        layout = self.layout
        for layer_id in sorted(self.layers):
            with _layer_lock(layout.lock_file(layer_id)) as locked, self._report_only_unless(locked):
                target = layout.mountpoint(layer_id)
                refs_path = layout.refs_file(layer_id)
                raw_holders = _raw_holders(refs_path)
                refs = RefTable.load(refs_path)
                depth = _mount_depth(target)
                if depth == 0:
                    if raw_holders:
                        self.found("stale-references", refs_path,
                                   f"layer {layer_id!r} is not mounted, yet {len(raw_holders)} holder(s) "
                                   "are recorded", layer_id=layer_id,
                                   fix=lambda p=refs_path: _unlink(p))  # type: ignore[misc]
                elif refs.total == 0:
                    self.found("stale-mount", target,
                               f"layer {layer_id!r} is mounted but no live holder references it",
                               layer_id=layer_id, fix=lambda i=layer_id: self._unmount_layer(i))  # type: ignore[misc]
                    if raw_holders:
                        self.found("stale-references", refs_path,
                                   f"the references of layer {layer_id!r} name only dead holders",
                                   layer_id=layer_id, fix=lambda p=refs_path: _unlink(p))  # type: ignore[misc]
                else:
                    if depth > 1:
                        self.found("stacked-mount", target,
                                   f"layer {layer_id!r} is mounted {depth} times on its mountpoint",
                                   layer_id=layer_id,
                                   fix=lambda t=target, n=depth - 1: _unmount_top(t, n))  # type: ignore[misc]
                    if set(raw_holders) != set(refs.holders):
                        self.found("stale-references", refs_path,
                                   f"the references of layer {layer_id!r} name "
                                   f"{len(set(raw_holders) - set(refs.holders))} dead holder(s)",
                                   layer_id=layer_id, fix=refs.save)
                tmp = Layout.tmp_sibling(refs_path)
                if os.path.exists(tmp):
                    self.found("leftover-temporary", tmp, f"half-written references of layer {layer_id!r}",
                               layer_id=layer_id, fix=lambda p=tmp: _unlink(p))  # type: ignore[misc]

    @contextlib.contextmanager
    def _report_only_unless(self, locked: bool) -> Iterator[None]:
        """Without the layer's lock a get may be half done: report, but repair nothing."""
        repair = self.repair
        self.repair = repair and locked
        try:
            yield
        finally:
            self.repair = repair

    def _unmount_layer(self, layer_id: str) -> None:
        """Unmount a layer's union every time it is mounted (caller holds the layer lock)."""
        target = self.layout.mountpoint(layer_id)
        for _ in range(_mount_depth(target)):
            self.core.unmount_layer(layer_id)
        # whatever the backend's unmount left (a lazily detached mount vanishes at once)
        for info in mounts.submounts(target):
            detach(info.mountpoint)
        _unlink(self.layout.refs_file(layer_id))
        try:
            os.rmdir(target)
        except OSError:
            pass

    def check_other_mounts(self) -> None:
        """Mounts below the store that are neither a layer's union nor live work in progress."""
        layout = self.layout
        home = layout.home
        # a layer's mountpoint belongs to check_layer_mounts (under the layer's lock: a get may
        # mount it at any moment); mounts inside a union are its users' (e.g. a runtime's /proc)
        layer_unions = [layout.mountpoint(i) for i in self.layers]
        for info in mounts.submounts(home):  # deepest first
            point = info.mountpoint
            if point == home or point in layer_unions:
                continue
            if any(_below(point, union) for union in layer_unions):
                continue
            rel = os.path.relpath(point, home).split(os.sep)
            if rel[0] == "tmp" and len(rel) > 1:
                continue  # live work in progress, or reported with its leftover temporary
            if not os.path.lexists(point) and not _mount_depth(point):
                continue  # repaired with its parent just now
            # a mountpoint in mnt/ of no layer goes with its mount
            tidy = len(rel) == 2 and rel[0] == "mnt"
            self.found("stale-mount", point,
                       f"{info.fstype} mount below the store that no layer uses",
                       fix=lambda p=point, t=tidy: _detach_all(p, remove=t))  # type: ignore[misc]

    def check_mountpoints(self) -> None:
        layout = self.layout
        for name in sorted(_listdir(layout.mnt_dir)):
            path = os.path.join(layout.mnt_dir, name)
            if is_valid_layer_id(name) and name in self.layers:
                with _layer_lock(layout.lock_file(name)) as locked, self._report_only_unless(locked):
                    self._check_mountpoint(path, name)
            else:
                self._check_mountpoint(path, None)

    def _check_mountpoint(self, path: str, layer_id: str | None) -> None:
        if _mount_depth(path) or not os.path.lexists(path):
            return
        self.found("stale-mountpoint", path, f"mnt/{os.path.basename(path)} is not mounted", layer_id=layer_id,
                   fix=lambda: _remove_tree(path))

    def check_state(self) -> None:
        layout = self.layout
        for name in sorted(_listdir(layout.state_dir)):
            layer_id, _, kind = name.partition(".")
            if layer_id in self.layers:
                continue
            path = os.path.join(layout.state_dir, name)
            if kind == "lock":
                self.found("stale-state", path, f"lock file of the absent layer {layer_id!r}",
                           layer_id=layer_id, fix=lambda p=path: _unlink_lock(p))  # type: ignore[misc]
            elif kind in ("refs", "backend"):
                self.found("stale-state", path, f"{kind} file of the absent layer {layer_id!r}",
                           layer_id=layer_id, fix=lambda p=path: _unlink(p))  # type: ignore[misc]
            elif kind == "refs.tmp":
                self.found("leftover-temporary", path, f"half-written references of the absent layer "
                           f"{layer_id!r}", layer_id=layer_id, fix=lambda p=path: _unlink(p))  # type: ignore[misc]

    def check_links(self) -> None:
        layout = self.layout
        for name in sorted(_listdir(layout.links_dir)):
            path = os.path.join(layout.links_dir, name)
            try:
                target = os.readlink(path)
            except OSError:
                target = ""
            layer_id = Layout.short_link_layer(target)
            if (layer_id is not None and layer_id in self.layers
                    and os.path.basename(layout.short_link(layer_id)) == name
                    and target == layout.short_link_target(layer_id)):
                continue
            self.found("stale-state", path, f"short link l/{name} -> {target!r} names no layer",
                       layer_id=layer_id, fix=lambda p=path: _remove_tree(p))  # type: ignore[misc]


@contextlib.contextmanager
def _layer_lock(path: str) -> Iterator[bool]:
    """Hold a layer's lock (yields True). On a full disk where its lock file cannot even be
    created, yield False instead of failing: nobody holds that lock now, though a get may take
    it as soon as space is freed, so the caller only reports."""
    held = contextlib.ExitStack()
    locked = True
    try:
        held.enter_context(locks.hold(path))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or os.path.lexists(path):
            raise
        locked = False
    with held:
        yield locked


def _chain(parent: str, metas: dict[str, dict[str, Any]]) -> list[str] | None:
    """[parent, its parent, ...] from the metadata, or None if the chain is broken or cyclic."""
    chain: list[str] = []
    current: str | None = parent
    while current is not None:
        if current in chain or current not in metas:
            return None
        chain.append(current)
        current = metas[current]["parent"]
    return chain


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _raw_holders(path: str) -> dict[str, Any]:
    """The holders a reference table names, dead or alive ({} if absent or unreadable)."""
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read() or b"{}")
        holders = raw.get("holders", {}) if isinstance(raw, dict) else {}
        return dict(holders) if isinstance(holders, dict) else {}
    except (OSError, ValueError):
        return {}


def _mount_depth(path: str) -> int:
    """How many mounts sit exactly on ``path`` (0: not a mount point)."""
    return sum(1 for info in mounts.mount_table() if info.mountpoint == path)


def _below(path: str, top: str) -> bool:
    return path.startswith(top.rstrip("/") + "/")


def _unmount_top(target: str, count: int) -> None:
    for _ in range(count):
        detach(target)


def _detach_all(point: str, *, remove: bool = False) -> None:
    for info in mounts.submounts(point):
        detach(info.mountpoint)
    while _mount_depth(point):
        try:
            detach(point)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
            break
    if remove:
        try:
            os.rmdir(point)
        except OSError:
            pass  # not empty, or gone: check_mountpoints reports what remains


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _unlink_lock(path: str) -> None:
    # a waiter on the old inode notices the unlink and retries on a fresh file (aufs.locks)
    with locks.hold(path) as fd:
        locks.unlink_held(path, fd)


def check_store(core: StoreCore, *, repair: bool = False) -> CheckReport:
    """Check the store ``core`` opens for every kind of inconsistency in :data:`KINDS`.

    With ``repair`` each repairable finding is fixed as it is found (and marked ``repaired``);
    afterwards a second check finds nothing but the unrepairable kinds. Holds the store lock
    throughout and each layer's lock while looking at that layer, so it is safe while other
    threads and processes use the store; their work in progress is never reported.
    """
    with core.store_lock():
        return _Checker(core, repair).run()
