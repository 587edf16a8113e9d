"""The layer store's lifecycle: :class:`Driver` (layers, their mounts and references).

This module owns what moby calls the ProtoDriver: create, remove, get, put, exists, parent,
layers, status, cleanup and check, plus the store description and backend choice. Its parts
sit in their own modules: paths in :mod:`aufs.layout`, the shared core (metadata, locks,
mount planning, the sweep) in :mod:`aufs.core`, pure mount planning in :mod:`aufs.plan`,
reference counts in :mod:`aufs.refcount`, mounts in a backend of :mod:`aufs.backends`, the
diff verbs in :mod:`aufs.diffs` and the consistency check in :mod:`aufs.check`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import re
import stat
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Union

from . import _syscalls, mounts, userns
from . import rootless as records
from .backends import BACKENDS, Backend
from .backends.base import detach
from .changes import Change
from .check import CheckReport, check_store
from .clone import remove_tree
from .core import StoreCore, is_healthy, mounted_or_dead, rmdir_quietly, unlink_quietly
from .diffs import DiffSource, DiffTarget, LayerDiffs
from .errors import (
    BackendUnavailable,
    LayerExists,
    LayerInUse,
    LayerNotFound,
    MaxDepthExceeded,
    StoreFormatMismatch,
    StoreNotFound,
    StoreReadOnly,
)
from .interrupts import defers_signals, reports_no_space, signals_deferred
from .layout import Layout, validate_layer_id
from .owners import ProcessToken
from .plan import Mount
from .locks import hold as _hold
from .locks import unlink_held as _unlink_held
from .refcount import PERSISTENT_PREFIX, RefTable
from .whiteouts import WhiteoutFormat

__all__ = ["BACKEND_NAMES", "STORE_VERSION", "Driver"]

BACKEND_NAMES = ("auto",) + tuple(BACKENDS)
STORE_VERSION = 1
ROOTLESS_STORE_VERSION = 2

PathArg = Union[str, "os.PathLike[str]"]

_HOLDER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class Driver:
    """A store of container image layers under one *home* directory, and their union mounts.

    **Model.** A *layer* is a directory of files (its *diff dir*) with an optional *parent*
    layer; a layer and its ancestors form its *chain*. ``get`` mounts the chain as one union
    directory whose top, writable, is the layer's own diff dir: writes land in the layer,
    deletions of lower entries become *whiteouts* in it. :meth:`mounts` describes that mount
    without performing it, for a caller that mounts by itself. Layers are created empty and
    filled through the mount or with :meth:`apply_diff`; a layer cannot change parent, and a
    parent cannot be removed while it has children.

    **Glossary.** *layer id*: 1 to 128 characters of ``[A-Za-z0-9_.-]``, first one a letter or
    digit. *backend*: the union filesystem (``"aufs"``, ``"overlay"``, ``"fuse-overlayfs"``).
    *whiteout format*: how a diff dir records deletions; fixed per store at creation (AUFS
    ``.wh.`` files for the aufs and fuse-overlayfs backends, overlay 0/0 character devices for
    kernel overlayfs). *holder*: who a reference is counted for: one ``Driver`` object in one
    process, or a *persistent holder* named with ``holder=`` whose references outlive the
    process. *mountpoint*: ``HOME/mnt/ID``, where ``get`` mounts a layer.

    **Lifecycle.** ``create`` -> (``get`` ... ``put``)* -> ``remove``. The first ``get`` of a
    layer mounts it, further ``get`` calls (from any thread, holder or process) share that
    mount, and the last matching ``put`` unmounts it. A ``put`` from a holder that holds no
    reference is a no-op, so it never unmounts a mount another holder still uses. References
    of a process that died are dropped (persistent holders' are kept); its mounts are adopted
    by the next ``get`` or taken down by :meth:`cleanup`.

    **Concurrency and crashes.** Every method is safe to call from many threads and many
    processes on one store: structural changes (create, remove, cleanup, check) take the
    *store lock*, mounts, unmounts, applies and diffs take the *layer lock* (both ``flock`` on
    files in the store; a remove takes both). Layers are built under temporary names and
    renamed into place, removed by renaming away and then deleting, and changed by
    ``apply_diff`` in a hard-link clone swapped in atomically; opening a store sweeps what a
    dead process left behind. So after a crash a layer is absent, as it was, or complete.

    **Errors.** :class:`aufs.InvalidLayerId` for a malformed id (a ``ValueError`` and a
    :class:`aufs.LayerNotFound`); :class:`aufs.LayerNotFound`, :class:`aufs.LayerExists`,
    :class:`aufs.LayerInUse`, :class:`aufs.MaxDepthExceeded`, :class:`aufs.MountError`,
    :class:`aufs.NoSpace`, :class:`aufs.BackendUnavailable`, :class:`aufs.StoreFormatMismatch`.
    Each method's docstring says which it raises.

    **Example.**

    >>> d = Driver("/var/lib/layers", backend="overlay")    # doctest: +SKIP
    >>> d.create("base"); d.create("app", parent="base")    # doctest: +SKIP
    >>> d.mounts("app")                                     # doctest: +SKIP
    [Mount(type='overlay', source='overlay', options=(..., 'lowerdir=...', 'upperdir=...', ...))]
    >>> with d.mount("app") as root:                        # doctest: +SKIP
    ...     open(f"{root}/hello", "w").write("hi")
    """

    def __init__(self, home: PathArg, *, backend: str = "auto", holder: str | None = None,
                 create: bool = True, rootless: str | None = None) -> None:
        """Open the store under ``home``, creating it there if ``create`` (the default).

        ``backend`` is ``"auto"`` (kernel AUFS if the kernel has it, else kernel overlayfs if
        this process may mount, else fuse-overlayfs if installed; for an existing store only
        backends that read its whiteout format qualify) or one backend name. ``holder`` names
        a persistent holder (1 to 64 characters of ``[A-Za-z0-9_.-]``): this Driver's
        references are counted under that name and survive the process, so a restarted
        server that opens the store with the same name can ``put`` what it ``get`` before.

        ``rootless`` says how a new store made by an ordinary user keeps the owners it cannot
        give away: ``"override_stat"`` (the default: every owner, mode and device recorded in
        xattrs, mounts with fuse-overlayfs that all the user's processes see; see
        :mod:`aufs.rootless`) or ``"userns"`` (owners real, in a user namespace of the user's
        subordinate ids, kernel overlayfs, mounts seen inside that namespace; see
        :mod:`aufs.userns`: this process joins the namespace, so it must be single-threaded
        then). For an existing store it is None or the store's own kind.

        A new store is made only in a directory that is missing or empty; its directories are
        private to the store's owner (0700: a mounted root filesystem must not be reachable by
        other users, nor its setuid programs runnable by them), and opening an older store
        tightens them (``check`` reports it). A store on a read-only filesystem opens for
        reading: ``layers``, ``status``, ``diff``, ``changes``, ``diff_size``, ``check``
        work, every change raises :class:`aufs.StoreReadOnly`.

        Raises ``ValueError`` for an empty ``home``, an unknown backend or rootless kind, or a
        malformed holder name, :class:`aufs.StoreNotFound` if there is no store and ``create`` is false (nothing
        is created), :class:`aufs.StoreFormatMismatch` if ``home`` is a non-empty directory
        holding no store or a store ``backend`` cannot read, :class:`aufs.BackendUnavailable`
        saying what is missing if no usable backend exists. Takes the store lock; opening
        sweeps the debris of dead processes. Idempotent.
        """
        if not os.fspath(home):
            raise ValueError("the store's home directory must be a path, not an empty string")
        if backend not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_NAMES)}")
        if holder is not None and (not isinstance(holder, str) or not _HOLDER_RE.match(holder)):
            raise ValueError(f"invalid holder name {holder!r}: use 1 to 64 characters of [A-Za-z0-9_.-]")
        if rootless not in (None, records.FORMAT, userns.FORMAT):
            raise ValueError(f"unknown rootless kind {rootless!r}; use {records.FORMAT!r} or {userns.FORMAT!r}")
        layout = Layout(home)
        self._persistent_holder = None if holder is None else PERSISTENT_PREFIX + holder
        self._holder_lock = threading.Lock()
        self._holder_pid = -1
        self._holder_name = ""
        exists = os.path.isfile(layout.meta_file)
        made_home = False
        if not exists:
            _check_new_home(layout, create)
            made_home = not os.path.isdir(layout.home)
            os.makedirs(layout.home, mode=0o700, exist_ok=True)
        read_only = _read_only(layout.home)
        opened: list[bool] = []
        with contextlib.ExitStack() as stack:
            if made_home:  # nothing half-created: a refused new home goes again
                stack.callback(_remove_if_refused, layout, opened)
            before = _read_store_meta(layout) if exists else None
            kind = _rootless_kind(layout, before, rootless)
            idmap = None
            if kind == userns.FORMAT:
                # the store's files belong to ids of its namespace: everything happens in there
                idmap = _userns_map(layout, before)
                userns.enter(layout, idmap)
            stack.enter_context(_hold(layout.store_lock))
            meta = _read_store_meta(layout)
            if meta is None and read_only:
                raise StoreReadOnly(f"cannot create a store in {layout.home}: its filesystem is read-only",
                                    path=layout.home)
            fmt = None if meta is None else WhiteoutFormat(meta["format"])
            owner = records.Owner(0, 0) if kind == userns.FORMAT else _rootless_owner(layout, meta, read_only)
            backend_cls, fmt, self._backend_reason = _choose_backend(backend, fmt, owner is not None, kind)
            if fmt is WhiteoutFormat.OVERLAY and not read_only and kind != userns.FORMAT:
                _require_trusted_xattrs(layout.home)
            tightened: list[str] = []
            if not read_only:
                for directory in layout.directories():
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                tightened = _make_private(layout)
                if meta is None:
                    _write_store_meta(layout, fmt, backend_cls.name, owner, idmap)
                    tightened = []  # a new store is private from the start
            backend_obj = backend_cls(layout, fmt)
            backend_obj.rootless = kind == records.FORMAT
            backend_obj.userxattr = kind == userns.FORMAT
            self._core = StoreCore(layout, fmt, backend_obj, read_only=read_only,
                                   tightened=tightened, rootless_owner=owner, rootless_kind=kind)
            self._diffs = LayerDiffs(self._core)
            if not read_only:
                self._core.sweep()
            opened.append(True)

    # ------------------------------------------------------------------ properties

    @property
    def home(self) -> pathlib.Path:
        """The store's home directory (absolute)."""
        return pathlib.Path(self._core.home)

    @property
    def backend(self) -> str:
        """The name of the backend in use: ``"aufs"``, ``"overlay"`` or ``"fuse-overlayfs"``."""
        return self._core.backend.name

    @property
    def rootless_kind(self) -> str:
        """How this store keeps owners an ordinary user cannot set: ``"override_stat"``
        (:mod:`aufs.rootless`), ``"userns"`` (:mod:`aufs.userns`), or ``""`` (real owners)."""
        return self._core.rootless_kind or ""

    @property
    def whiteout_format(self) -> WhiteoutFormat:
        """The whiteout format of this store's diff dirs."""
        return self._core.format

    @property
    def max_depth(self) -> int:
        """The longest chain (a layer and its ancestors) the backend mounts; ``create`` enforces it."""
        return self._core.backend.max_depth

    @property
    def read_only(self) -> bool:
        """True if the store's filesystem is read-only (every change raises StoreReadOnly)."""
        return self._core.read_only

    @property
    def layout(self) -> Layout:
        """The store's paths (:class:`aufs.layout.Layout`, pure: building one touches nothing)."""
        return self._core.layout

    @property
    def diffs(self) -> LayerDiffs:
        """The diff verbs over this store (:class:`aufs.diffs.LayerDiffs`)."""
        return self._diffs

    @property
    def holder(self) -> str:
        """Who this Driver's references are counted for (``@NAME`` for a persistent holder)."""
        if self._persistent_holder is not None:
            return self._persistent_holder
        # per process: a forked child holding the parent's Driver is a different holder
        pid = os.getpid()
        if pid != self._holder_pid:
            with self._holder_lock:
                if pid != self._holder_pid:
                    self._holder_name = f"{ProcessToken.current()}:{uuid.uuid4().hex[:12]}"
                    self._holder_pid = pid
        return self._holder_name

    # ------------------------------------------------------------------ queries

    def exists(self, layer_id: str) -> bool:
        """True if the layer exists; False for a malformed id. Takes no lock."""
        return self._core.exists(layer_id)

    def parent(self, layer_id: str) -> str | None:
        """The layer's parent id, or None for a base layer. Raises :class:`aufs.LayerNotFound`
        (:class:`aufs.InvalidLayerId` for a malformed id). Takes no lock."""
        parent: str | None = self._core.require(layer_id)["parent"]
        return parent

    def layers(self) -> list[str]:
        """Ids of all layers, sorted. Work in progress (temporary names) is never listed.
        Takes no lock."""
        return self._core.layers()

    def diff_dir(self, layer_id: str) -> str:
        """The directory holding the layer's own content (its *diff dir*).

        Read it only while nobody applies a diff to the layer: ``apply_diff`` swaps the
        directory. Raises :class:`aufs.LayerNotFound`. Takes no lock.
        """
        self._core.require(layer_id)
        return self._core.layout.diff_dir(layer_id)

    def mountpoint(self, layer_id: str) -> str:
        """Where :meth:`get` mounts the layer (it need not be mounted now). Raises
        :class:`aufs.LayerNotFound`. Takes no lock."""
        self._core.require(layer_id)
        return self._core.layout.mountpoint(layer_id)

    def is_mounted(self, layer_id: str) -> bool:
        """True if the layer's union is mounted now (by any holder). Raises
        :class:`aufs.LayerNotFound`. Takes no lock."""
        self._core.require(layer_id)
        return mounted_or_dead(self._core.layout.mountpoint(layer_id))

    def holders(self, layer_id: str) -> dict[str, int]:
        """Who holds references to the layer's mount now: holder -> count, live holders only
        (``PID-START:NONCE`` for a Driver in a running process, ``@NAME`` for a persistent
        holder). Raises :class:`aufs.LayerNotFound`. Takes the layer lock."""
        with self._core.locked_layer(layer_id):
            return dict(RefTable.load(self._core.layout.refs_file(layer_id)).holders)

    def mounts(self, layer_id: str, *, readonly: bool = False) -> list[Mount]:
        """The mounts :meth:`get` would perform for the layer, described, not performed.

        A list of :class:`aufs.Mount` (type, source, options) to perform in order on one
        target, like containerd's ``Mounts``: any process that may mount can perform it (with
        :func:`aufs.mount_described`, or its own mount code). Writable: the layer's diff dir
        is the upper dir. ``readonly``: the chain with the layer itself on top, read-only.
        Overlay option data fits in one page (mount(2)) whenever the chain allows: full diff
        dir paths when they fit, else the store's fixed-length short links (beyond about
        ``4000 / (len(home) + 24)`` layers only the new mount API performs those in one go).

        The description is of the layer as it is now: ``apply_diff`` may change which layers
        a chain shows (a layer whose root became opaque hides those below it). Raises
        :class:`aufs.LayerNotFound`. Takes no lock; may create short links. Idempotent.
        """
        meta = self._core.require(layer_id)
        return self._core.describe(layer_id, list(meta["ancestors"]), readonly=readonly)

    def status(self) -> dict[str, str | int | bool]:
        """Facts about the store: ``backend``, ``backend_reason`` (why this backend),
        ``home``, ``whiteout_format``, ``rootless`` (bool: an ordinary user's store),
        ``rootless_kind`` (``"override_stat"``, ``"userns"`` or ``""``), ``userns_holder`` (the
        pid keeping a userns store's mounts, its mounts reachable at ``/proc/PID/root/...``;
        0 when nothing is mounted, as the namespace then ends with its last process),
        ``backing_filesystem`` (str); ``layers``, ``mounted``, ``max_depth`` (the longest chain,
        top layer included) (int); ``read_only`` (bool). Takes no lock."""
        home = self._core.home
        backing = "unknown"
        best = -1
        for info in mounts.mount_table():
            point = info.mountpoint
            if (home == point or home.startswith(point.rstrip("/") + "/")) and len(point) > best:
                best, backing = len(point), info.fstype
        layer_ids = self.layers()
        layout = self._core.layout
        mounted = sum(1 for i in layer_ids if mounted_or_dead(layout.mountpoint(i)))
        return {
            "backend": self.backend,
            "backend_reason": self._backend_reason,
            "rootless": self._core.rootless_owner is not None,
            "rootless_kind": self.rootless_kind,
            # a userns store's mounts are in its namespace: /proc/PID/root/... or `aufs unshare`
            "userns_holder": (userns.holder_pid(self._core.layout) or 0)
            if self.rootless_kind == userns.FORMAT and mounted else 0,
            "home": home,
            "whiteout_format": self.whiteout_format.value,
            "layers": len(layer_ids),
            "mounted": mounted,
            "max_depth": self.max_depth,
            "read_only": self.read_only,
            "backing_filesystem": backing,
        }

    # ------------------------------------------------------------------ create / remove

    @reports_no_space("create")
    def create(self, layer_id: str, parent: str | None = None) -> None:
        """Create the empty layer ``layer_id`` on top of ``parent`` (None: a base layer).

        The new diff dir is an empty directory owned by uid/gid 0 with mode 0755 (a child
        takes its parent's root owner and mode, so the union's root looks the same).

        Raises :class:`aufs.InvalidLayerId` (a ``ValueError``) for a malformed id,
        :class:`aufs.LayerExists` (not idempotent), :class:`aufs.LayerNotFound` for a missing
        parent, :class:`aufs.MaxDepthExceeded` if the chain would be deeper than the backend
        mounts, :class:`aufs.NoSpace`. Takes the store lock. Atomic: on any error nothing is
        left behind.
        """
        validate_layer_id(layer_id)
        if parent is not None:
            validate_layer_id(parent)
        core = self._core
        core.require_writable(f"create layer {layer_id!r}")
        layout = core.layout
        with core.store_lock():
            if core.exists(layer_id):
                raise LayerExists(f"layer {layer_id!r} already exists in {self.home}", layer_id=layer_id)
            ancestors: list[str] = []
            if parent is not None:
                try:
                    parent_meta = core.load_meta(parent)
                except LayerNotFound:
                    raise LayerNotFound(
                        f"cannot create {layer_id!r}: its parent {parent!r} does not exist", layer_id=parent
                    ) from None
                ancestors = [parent] + list(parent_meta["ancestors"])
            depth = len(ancestors) + 1
            if depth > self.max_depth:
                raise MaxDepthExceeded(
                    f"layer {layer_id!r} would make a chain of {depth} layers; the {self.backend} "
                    f"backend mounts at most {self.max_depth}",
                    layer_id=layer_id,
                )
            stage = layout.temp_path("create", ProcessToken.current(), layer_id)
            try:
                os.mkdir(stage, 0o700)
                diff = stage + "/diff"
                os.mkdir(diff)
                uid, gid, mode = 0, 0, 0o755
                if parent is not None:
                    root = os.lstat(layout.diff_dir(parent))
                    uid, gid, mode = root.st_uid, root.st_gid, root.st_mode & 0o7777
                if os.geteuid() == 0:
                    os.chown(diff, uid, gid)
                os.chmod(diff, mode)  # after chown (which clears setuid/setgid), despite the umask
                os.mkdir(stage + "/work", 0o700)
                with open(stage + "/layer.json", "w", encoding="ascii") as f:
                    json.dump({"parent": parent, "ancestors": ancestors}, f)
                _syscalls.rename_noreplace(stage, layout.layer_dir(layer_id))
            except BaseException:
                remove_tree(stage)
                raise

    def _children(self, layer_id: str) -> list[str]:
        children = []
        for other in self.layers():
            try:
                if self._core.load_meta(other)["parent"] == layer_id:
                    children.append(other)
            except LayerNotFound:
                continue
        return children

    def remove(self, layer_id: str, *, force: bool = False) -> None:
        """Delete the layer.

        Raises :class:`aufs.LayerInUse` if other layers have it as parent, or, unless
        ``force``, if any live holder references its mount (the error names the holders:
        process ids, persistent holder names); with ``force`` the mount is taken down
        whoever holds it and their references are dropped. Raises
        :class:`aufs.LayerNotFound` if absent (not idempotent), :class:`aufs.StoreReadOnly`.
        Takes the store lock, then the layer lock. Atomic: the layer vanishes by one rename.
        """
        validate_layer_id(layer_id)
        core = self._core
        core.require_writable(f"remove layer {layer_id!r}")
        layout = core.layout
        with core.store_lock(), core.layer_lock(layer_id) as lock_fd:
            core.load_meta(layer_id)
            children = self._children(layer_id)
            if children:
                raise LayerInUse(
                    f"layer {layer_id!r} is the parent of {', '.join(sorted(children)[:5])}"
                    f"{' ...' if len(children) > 5 else ''}: remove those first",
                    layer_id=layer_id,
                )
            holders = RefTable.load(layout.refs_file(layer_id)).holders
            if holders and not force:
                raise LayerInUse(
                    f"layer {layer_id!r} is mounted and held by {_describe_holders(holders)}: "
                    "put it first (`aufs umount`), or remove with force",
                    layer_id=layer_id,
                )
            core.unmount_layer(layer_id)
            trash = layout.temp_path("remove", ProcessToken.current(), layer_id)
            os.rename(layout.layer_dir(layer_id), trash)
            refs = layout.refs_file(layer_id)
            for path in (refs, Layout.tmp_sibling(refs), layout.backend_record(layer_id)):
                unlink_quietly(path)
            core.forget_short_link(layer_id)
            rmdir_quietly(layout.mountpoint(layer_id))
            _unlink_held(layout.lock_file(layer_id), lock_fd)
        remove_tree(trash)

    # ------------------------------------------------------------------ mounts

    @reports_no_space("mount")
    @defers_signals
    def get(self, layer_id: str) -> str:
        """Mount the layer's chain (first reference) and return its mountpoint.

        Performs what :meth:`mounts` describes. Writes there land in the layer's diff dir.
        Every call takes one reference for this Driver's holder; give it back with
        :meth:`put`. A mount left by a dead process is adopted; a FUSE mount whose daemon
        died is replaced. Raises :class:`aufs.LayerNotFound`, :class:`aufs.MountError`,
        :class:`aufs.NoSpace`. Takes the layer lock; SIGINT/SIGTERM are held back until the
        mount and its reference agree.
        """
        core = self._core
        core.require_writable(f"mount layer {layer_id!r}")
        layout = core.layout
        target = layout.mountpoint(layer_id)
        with core.locked_layer(layer_id) as meta:
            refs = RefTable.load(layout.refs_file(layer_id))
            if mounted_or_dead(target) and not is_healthy(target):
                # its daemon died (killed, OOM): the mount is dead for every holder; replace it
                detach(target)
            if not mounted_or_dead(target):
                # references recorded for a mount that is gone (unmounted by hand, a reboot, a
                # userns store's namespace that ended) were to that mount: count from one
                refs.holders.clear()
                core.mount_layer(layer_id, meta)
                try:
                    refs.take(self.holder)
                    refs.save()
                except BaseException:
                    core.unmount_layer(layer_id)
                    raise
            else:
                refs.take(self.holder)
                refs.save()
        return target

    @reports_no_space("release a reference to")
    @defers_signals
    def put(self, layer_id: str) -> None:
        """Give back one reference this Driver's holder took with :meth:`get`; the last
        reference of all holders unmounts.

        If the holder holds no reference to the layer, nothing happens: a stray ``put``
        never unmounts a mount another holder uses. Raises :class:`aufs.LayerNotFound`,
        :class:`aufs.NoSpace`. Takes the layer lock.
        """
        core = self._core
        core.require_writable(f"release a reference to layer {layer_id!r}")
        layout = core.layout
        with core.locked_layer(layer_id):
            refs = RefTable.load(layout.refs_file(layer_id))
            if not refs.give_back(self.holder):
                return
            refs.save()
            if refs.total == 0:
                core.unmount_layer(layer_id)

    @contextlib.contextmanager
    def mount(self, layer_id: str) -> Iterator[str]:
        """``with driver.mount(layer_id) as path:`` -- :meth:`get` on entry, :meth:`put` on exit.

        A Ctrl-C at any moment leaves no reference behind: get and put run with signals held
        back, and a signal that lands before the hold takes effect on exit still gets the
        reference given back.
        """
        path = None
        try:
            with signals_deferred():
                path = self.get(layer_id)
            yield path
        finally:
            if path is not None:
                released = False
                try:
                    with signals_deferred():
                        self.put(layer_id)
                        released = True
                except KeyboardInterrupt:
                    if not released:  # interrupted before put began: it did nothing yet
                        self.put(layer_id)
                    raise

    # ------------------------------------------------------------------ cleanup / check

    def cleanup(self) -> None:
        """Unmount everything below ``home`` (ours, other processes', dead ones') and tidy up.

        Afterwards no mount exists below ``home`` and no reference is held, persistent
        holders' included. (``home`` itself is left alone when it is a mount point: the store
        lives on it.) Raises :class:`aufs.MountError` if a mount cannot be taken down. Takes
        the store lock, then each layer's lock. Idempotent.
        """
        core = self._core
        if core.read_only:  # nothing of a read-only store can be mounted or held
            return
        layout = core.layout
        with core.store_lock():
            core.unmount_all_below_home()
            for layer_id in self.layers():
                with core.layer_lock(layer_id):
                    core.settle(layer_id, wait=True)
                    unlink_quietly(layout.refs_file(layer_id))
                    if not mounted_or_dead(layout.mountpoint(layer_id)):
                        rmdir_quietly(layout.mountpoint(layer_id))
            core.sweep()

    def check(self, *, repair: bool = False) -> CheckReport:
        """Report the store's inconsistencies (``aufs.check.CheckReport``); ``repair`` fixes them.

        Finds leftover temporaries, orphan directories, dangling parents, stale mounts and
        references, stacked mounts, stale state files (see :mod:`aufs.check` for the list).
        Safe while other threads and processes use the store: takes the store lock, and each
        layer's lock while it looks at that layer. Idempotent once repaired.
        """
        if repair:
            self._core.require_writable("repair the store")
        return check_store(self._core, repair=repair)

    # ------------------------------------------------------------------ diff verbs (aufs.diffs)

    def apply_diff(self, layer_id: str, diff: DiffSource) -> int:
        """Apply the layer tar ``diff`` (path, bytes or readable binary file) onto the layer.

        Returns the layer's diff size. Parent directories an entry implies but the tar does
        not list get the owner, mode and xattrs the parent chain shows at the same path (as if
        the tar had been extracted into a mount of the chain, where the kernel copies them
        up); 0755 root:root where the chain has no directory.

        Raises :class:`aufs.LayerInUse` for a mounted layer, :class:`aufs.ArchiveError` /
        :class:`aufs.UnsafeArchive` for a corrupt or hostile tar, :class:`aufs.NoSpace`,
        :class:`aufs.LayerNotFound`. Takes the layer lock. Atomic: on any error
        (KeyboardInterrupt included) the layer is exactly as before and nothing is left behind.
        Not idempotent: applying twice applies twice.
        """
        return self._diffs.apply_diff(layer_id, diff)

    def diff(self, layer_id: str, out: DiffTarget) -> int:
        """Write the layer's own changes as a deterministic uncompressed pax tar to ``out`` (a
        path or a writable binary file); returns the bytes written. Raises
        :class:`aufs.LayerNotFound`, :class:`aufs.ArchiveError`. Takes the layer lock."""
        return self._diffs.diff(layer_id, out)

    def changes(self, layer_id: str) -> list[Change]:
        """The layer's changes against its parent chain, sorted by path (``aufs.Change``).
        Raises :class:`aufs.LayerNotFound`, :class:`aufs.MountError` (a lower view is mounted
        for layers with a parent). Takes the layer lock."""
        return self._diffs.changes(layer_id)

    def diff_size(self, layer_id: str) -> int:
        """Bytes of regular-file content in the layer's own changes, each inode once. Raises
        :class:`aufs.LayerNotFound`. Takes the layer lock."""
        return self._diffs.diff_size(layer_id)

    def __repr__(self) -> str:
        return f"Driver({self._core.home!r}, backend={self.backend!r})"


# ---------------------------------------------------------------------- store description


def _read_store_meta(layout: Layout) -> dict[str, Any] | None:
    try:
        with open(layout.meta_file, "rb") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    if not isinstance(meta, dict) or meta.get("format") not in ("aufs", "overlay"):
        raise StoreFormatMismatch(f"{layout.meta_file} is not an aufs store description", path=layout.meta_file)
    version = meta.get("version", 1)
    if not isinstance(version, int) or version > ROOTLESS_STORE_VERSION or \
            meta.get("rootless", None) not in (None, records.FORMAT, userns.FORMAT):
        raise StoreFormatMismatch(f"{layout.home} is a store of a newer aufs (version {version!r}, rootless "
                                  f"{meta.get('rootless')!r}): this aufs would misread it; upgrade aufs",
                                  path=layout.meta_file)
    return meta


def _rootless_owner(layout: Layout, meta: dict[str, Any] | None, read_only: bool) -> records.Owner | None:
    """The ids owning a rootless store's files (None for a store with real owners).

    A new store made by an unprivileged process is rootless. A store with real owners is
    refused to such a process (it could not write what it imports there); a rootless store
    opened by root stays rootless (its records keep being written and read)."""
    if meta is None:
        return records.Owner(os.geteuid(), os.getegid()) if records.unprivileged() else None
    if meta.get("rootless") is None:
        if records.unprivileged() and not read_only:
            raise StoreFormatMismatch(
                f"{layout.home} keeps real file owners (made by root): an ordinary user cannot write it; "
                "use a store of your own (the default home, ~/.local/share/aufs, is rootless)", path=layout.home)
        return None
    uid, gid = meta.get("owner", (None, None))
    if not isinstance(uid, int) or not isinstance(gid, int):
        raise StoreFormatMismatch(f"{layout.meta_file} names no owner for its rootless records", path=layout.meta_file)
    return records.Owner(uid, gid)


def _rootless_kind(layout: Layout, meta: dict[str, Any] | None, asked: str | None) -> str | None:
    """How the store keeps owners: None (real owners, a root store), ``"override_stat"`` or
    ``"userns"``; a new store is what was ``asked`` for, else override_stat for an ordinary
    user. An existing store is what it is: asking for another kind is StoreFormatMismatch."""
    if meta is None:
        if asked == userns.FORMAT:
            return asked
        return records.FORMAT if records.unprivileged() else None
    kind = meta.get("rootless")
    if asked is not None and asked != kind:
        raise StoreFormatMismatch(f"{layout.home} is {_kind_name(kind)}, not {_kind_name(asked)}: "
                                  "the kind of a store is fixed when it is made", path=layout.home)
    if kind == userns.FORMAT and not records.unprivileged():
        raise StoreFormatMismatch(
            f"{layout.home} is a userns store of uid {meta.get('owner', ['?'])[0]}: its files belong to ids of "
            "that user's namespace, which root would misread; open it as that user", path=layout.home)
    return kind


def _kind_name(kind: str | None) -> str:
    return {None: "a store with real owners", records.FORMAT: "an override_stat rootless store",
            userns.FORMAT: "a userns store"}.get(kind, repr(kind))


def _userns_map(layout: Layout, meta: dict[str, Any] | None) -> userns.IdMap:
    """The id map of the store's namespace: this user's now, which must be the one the store
    was made with (its files' ids mean that)."""
    recorded = None if meta is None else _recorded_map(layout, meta)
    if recorded is not None and userns.inside(layout):
        return recorded  # a process of the namespace (`aufs unshare`): root there, the map is the store's
    userns.require_outside(layout)
    idmap = userns.id_map()
    if meta is not None and recorded is not None:
        if meta.get("owner") != [os.getuid(), os.getgid()]:
            raise StoreFormatMismatch(f"{layout.home} is the userns store of uid {meta.get('owner', ['?'])[0]}, "
                                      f"not of uid {os.getuid()}", path=layout.home)
        if recorded != idmap:
            raise StoreFormatMismatch(
                f"{layout.home} keeps its files under the id map {recorded.to_json()}, but /etc/subuid and "
                f"/etc/subgid now give {idmap.to_json()}: its owners would be misread; restore the old ranges",
                path=layout.home)
    return idmap


def _recorded_map(layout: Layout, meta: dict[str, Any]) -> userns.IdMap:
    try:
        return userns.IdMap.from_json(meta.get("idmap"))
    except (ValueError, KeyError, TypeError):
        raise StoreFormatMismatch(f"{layout.meta_file} records no valid id map for its userns store",
                                  path=layout.meta_file) from None


def _write_store_meta(layout: Layout, fmt: WhiteoutFormat, backend: str,
                      owner: records.Owner | None = None, idmap: userns.IdMap | None = None) -> None:
    meta: dict[str, Any] = {"version": STORE_VERSION, "format": fmt.value, "created_with": backend}
    if idmap is not None:
        # owners real in the store's user namespace (the host ids are shifted), the rest recorded
        meta.update(version=ROOTLESS_STORE_VERSION, rootless=userns.FORMAT,
                    owner=[idmap.uids[0][1], idmap.gids[0][1]], idmap=idmap.to_json())
    elif owner is not None:
        # version 2: an aufs that knows no rootless records must not open it (it would export
        # every file as the user's, with no device or setuid bit)
        meta.update(version=ROOTLESS_STORE_VERSION, rootless=records.FORMAT, owner=list(owner))
    tmp = Layout.tmp_sibling(layout.meta_file)
    with open(tmp, "w", encoding="ascii") as f:
        json.dump(meta, f)
        f.write("\n")
    os.replace(tmp, layout.meta_file)


def _choose_backend(name: str, fmt: WhiteoutFormat | None, rootless_store: bool = False,
                    kind: str | None = None) -> tuple[type[Backend], WhiteoutFormat, str]:
    """The backend class, the whiteout format and why that backend (for ``status``).

    An override_stat store mounts with fuse-overlayfs only: it alone shows the recorded
    owners. A userns store mounts with kernel overlayfs (userxattr) in its namespace."""
    if kind == userns.FORMAT:
        if name not in ("auto", "overlay"):
            raise StoreFormatMismatch(f"a userns store mounts with kernel overlayfs in its user namespace; "
                                      f"the {name} backend cannot mount it")
        cls = BACKENDS["overlay"]
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"a userns store needs kernel overlayfs in a user namespace: {reason}")
        return cls, WhiteoutFormat.OVERLAY, \
            "userns store: kernel overlayfs with userxattr in the store's user namespace"
    if rootless_store and name not in ("auto", "fuse-overlayfs"):
        raise StoreFormatMismatch(
            f"this store is rootless (owners recorded in {records.OVERRIDE_XATTR}): only the fuse-overlayfs "
            f"backend shows them; the {name} backend would misread it")
    if name != "auto":
        cls = BACKENDS[name]
        if fmt is not None and fmt not in cls.formats:
            raise StoreFormatMismatch(
                f"this store keeps layers in the {fmt.value} whiteout format, which the "
                f"{name} backend cannot read; open it with a backend that reads "
                + " or ".join(n for n, c in BACKENDS.items() if fmt in c.formats)
            )
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"backend {name} is unavailable: {reason}")
        return cls, fmt if fmt is not None else cls.formats[0], f"asked for {name}"
    reasons = []
    for cls in BACKENDS.values():
        if rootless_store and cls.name != "fuse-overlayfs":
            reasons.append(f"{cls.name}: cannot show a rootless store's recorded owners")
            continue
        if fmt is not None and fmt not in cls.formats:
            reasons.append(f"{cls.name}: cannot read this store's {fmt.value} format")
            continue
        reason = cls.unavailable_reason()
        if reason is None:
            why = f"auto: {cls.name} is the first usable backend"
            if reasons:
                why += " (" + "; ".join(reasons) + ")"
            return cls, fmt if fmt is not None else cls.formats[0], why
        reasons.append(f"{cls.name}: {reason}")
    raise BackendUnavailable("no usable union backend: " + "; ".join(reasons))


# the entries of a store's home, so that a half-made store (killed before its description was
# written) counts as empty, not as someone else's directory
_STORE_ENTRIES = frozenset({
    ".lock", "aufs-store.json", "aufs-store.json.tmp", "layers", "mnt", "state", "l", "empty", "tmp",
    "image-imports", "images", "snapshotter", "userns.json", "userns.json.tmp", ".userns.lock", ".userns.members",
})


def _check_new_home(layout: Layout, create: bool) -> None:
    """Refuse to make a store where none is, unless asked to, and never over someone's files."""
    try:
        entries = os.listdir(layout.home)
    except FileNotFoundError:
        entries = None
    except NotADirectoryError:
        raise StoreFormatMismatch(f"{layout.home} is not a directory; a store needs one", path=layout.home) from None
    if not create:
        raise StoreNotFound(f"there is no aufs store in {layout.home} (create one with `aufs create` or "
                            "`aufs import`, or pick another --home)", path=layout.home)
    foreign = sorted(set(entries or ()) - _STORE_ENTRIES)
    if foreign:
        raise StoreFormatMismatch(
            f"{layout.home} is not empty ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}) "
            "and holds no aufs store: pick a new or empty directory", path=layout.home)


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _make_private(layout: Layout) -> list[str]:
    """Make the store's directories 0700 (an older store's were 0755); returns those changed.

    Only the owner may reach a mounted root filesystem (``mnt/``), a layer's files
    (``layers/``, ``l/``), work in progress (``tmp/``) and the references (``state/``).
    """
    changed = []
    for directory in layout.directories():
        st = os.lstat(directory)
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(directory, stat.S_IMODE(st.st_mode) & 0o700)
            changed.append(directory)
    return changed


def _describe_holders(holders: dict[str, int]) -> str:
    """``pid 123, @aufs-mount`` for the holders of a reference table."""
    names = []
    for holder in sorted(holders):
        if holder.startswith(PERSISTENT_PREFIX):
            names.append(f"{holder} (persistent)")
        else:
            token = ProcessToken.parse(holder)
            names.append(f"pid {token.pid}" if token is not None else holder)
    return ", ".join(dict.fromkeys(names))


def _remove_if_refused(layout: Layout, opened: list[bool]) -> None:
    """Undo the home this Driver made if opening failed (only the lock file is in it)."""
    if not opened:
        userns.leave(layout)  # a namespace started for the new store ends with it
        for path in (layout.store_lock, layout.userns_lock, layout.userns_members, layout.userns_record):
            unlink_quietly(path)
        rmdir_quietly(layout.home)


def _require_trusted_xattrs(home: str) -> None:
    """The overlay whiteout format keeps opaque directories in ``trusted.overlay.opaque``: a
    filesystem that cannot hold trusted.* attributes (ramfs) would lose them silently."""
    probe = "trusted.aufs-probe"
    try:
        os.setxattr(home, probe, b"1", follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        raise BackendUnavailable(
            f"the filesystem of {home} cannot hold trusted.* extended attributes, which the overlay "
            "whiteout format needs (opaque directories): put the store on ext4, xfs, btrfs or tmpfs",
            path=home) from exc
    os.removexattr(home, probe, follow_symlinks=False)
