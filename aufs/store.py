"""The layer store: :class:`Driver` (layout, ids, locks, reference counts, lifecycle, sweep).

This module owns the lifecycle of layers and of their mounts. Paths come from
:mod:`aufs.layout`, locks from :mod:`aufs.locks`, reference counts from :mod:`aufs.refcount`,
mounts from a backend in :mod:`aufs.backends`; layer tars are handled by :mod:`aufs.apply`,
:mod:`aufs.export` and :mod:`aufs.changes`, which the store only calls.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import pathlib
import signal
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, Union

from . import locks, mounts
from .backends import BACKENDS, Backend, MountRequest
from .backends.base import detach
from .backends.fuse_overlayfs import wait_recorded_daemon
from .clone import clone_tree, remove_tree
from .errors import (
    AufsError,
    BackendUnavailable,
    LayerExists,
    LayerInUse,
    LayerNotFound,
    MaxDepthExceeded,
    MountError,
    NoSpace,
    PathTooLong,
    StoreFormatMismatch,
)
from .layout import Layout, is_valid_layer_id, validate_layer_id
from .owners import ProcessToken
from .refcount import RefTable
from .whiteouts import OPAQUE_NAME, OPAQUE_XATTRS, WhiteoutFormat, root_is_opaque

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from .changes import Change
    from .check import CheckReport

__all__ = ["BACKEND_NAMES", "STORE_VERSION", "Driver"]

BACKEND_NAMES = ("auto",) + tuple(BACKENDS)
STORE_VERSION = 1

PathArg = Union[str, "os.PathLike[str]"]
DiffSource = Union[str, "os.PathLike[str]", bytes, BinaryIO]
DiffTarget = Union[str, "os.PathLike[str]", BinaryIO]


def _rmtree(path: str | pathlib.Path) -> None:
    """Delete a tree that holds no mounts (fine if it is already gone), however deep."""
    remove_tree(path)


def _rmdir_quietly(path: str | pathlib.Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # absent, or still a mount point someone else holds


def _unlink_quietly(path: str | pathlib.Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _of_layer(exc: PathTooLong, layer_id: str) -> PathTooLong:
    """``exc`` said of the layer ``layer_id``."""
    return PathTooLong(f"layer {layer_id!r}: {exc.message}", layer_id=layer_id, path=exc.path)


def _is_mount_point(path: str | os.PathLike[str]) -> bool:
    """:func:`aufs.mounts.mounted`, where a FUSE mount whose daemon died (ENOTCONN) counts."""
    try:
        return mounts.mounted(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return True
        raise


def _is_healthy(path: str | os.PathLike[str]) -> bool:
    """False for a mount whose FUSE daemon is gone (every access fails with ENOTCONN)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return False
        raise
    return True


def _rename_noreplace(old: pathlib.Path, new: pathlib.Path) -> None:
    from . import _syscalls

    _syscalls.rename_noreplace(str(old), str(new))


def _rename_exchange(old: pathlib.Path, new: pathlib.Path) -> None:
    from . import _syscalls

    _syscalls.rename_exchange(str(old), str(new))


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _reports_no_space(action: str) -> Callable[[_Method], _Method]:
    """Make a method whose first argument is a layer id raise :class:`aufs.NoSpace` naming that
    layer for ENOSPC/EDQUOT, wherever it arises (extraction, the staging clone, a lock or
    reference file, a new directory), raised from the original error."""

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        def run(self: Driver, layer_id: str, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, layer_id, *args, **kwargs)
            except NoSpace as exc:
                if repr(layer_id) in exc.message:
                    raise
                raise NoSpace(f"cannot {action} layer {layer_id!r}: {exc.message}",
                              layer_id=layer_id, path=exc.path) from exc
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(exc, AufsError):
                    raise
                where = exc.filename if exc.filename is not None else str(self.home)
                raise NoSpace(f"cannot {action} layer {layer_id!r}: no space left on the store's "
                              f"filesystem ({where}); free space or raise the quota",
                              layer_id=layer_id, path=where) from exc

        return run  # type: ignore[return-value]

    return wrap


# Signals whose Python handlers (KeyboardInterrupt, a daemon's SystemExit) get and put hold
# back; a signal left at its default action kills the process, and the sweep handles that.
_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_deferring = False


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Run the block with SIGINT/SIGTERM handlers held back, then deliver what arrived.

    A mount and its reference table must change together: a KeyboardInterrupt between the
    two would leave a mount nobody references, or a reference to no mount. Only the main
    thread runs Python signal handlers, so only there is anything to hold back.
    """
    global _deferring
    if _deferring or threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved: dict[int, Any] = {}
    for signum in _DEFERRED_SIGNALS:
        handler = signal.getsignal(signum)
        if callable(handler):
            saved[signum] = handler
            signal.signal(signum, lambda received, frame: pending.append(received))
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        for held, handler in saved.items():
            signal.signal(held, handler)
        if pending:
            saved[pending[0]](pending[0], None)


def _defers_signals(method: _Method) -> _Method:
    """Run the method under :func:`_signals_deferred`."""

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _signals_deferred():
            return method(*args, **kwargs)

    return run  # type: ignore[return-value]


class Driver:
    """A store of container image layers under one *home* directory, and their union mounts.

    **Model.** A *layer* is a directory of files (its *diff dir*) with an optional *parent*
    layer; a layer and its ancestors form its *chain*. ``get`` mounts the chain as one union
    directory whose top, writable, is the layer's own diff dir: writes land in the layer,
    deletions of lower entries become *whiteouts* in it. Layers are created empty and filled
    through the mount or with :meth:`apply_diff`; a layer cannot change parent, and a parent
    cannot be removed while it has children.

    **Glossary.** *layer id*: 1 to 128 characters of ``[A-Za-z0-9_.-]``, first one a letter or
    digit. *backend*: the union filesystem (``"aufs"``, ``"overlay"``, ``"fuse-overlayfs"``).
    *whiteout format*: how a diff dir records deletions; fixed per store at creation (AUFS
    ``.wh.`` files for the aufs and fuse-overlayfs backends, overlay 0/0 character devices for
    kernel overlayfs). *holder*: one ``Driver`` object; references are counted per holder.

    **Lifecycle.** ``create`` -> (``get`` ... ``put``)* -> ``remove``. The first ``get`` of a
    layer mounts it, further ``get`` calls (from any thread, holder or process) share that
    mount, and the last matching ``put`` unmounts it. A ``put`` from a holder that holds no
    reference is a no-op, so it never unmounts a mount another holder still uses. References
    of a process that died are dropped; its mounts are adopted by the next ``get`` or taken
    down by :meth:`cleanup`.

    **Concurrency and crashes.** Every method is safe to call from many threads and many
    processes on one store: structural changes take the store lock, mounts and applies take
    the layer's lock (both ``flock`` on files in the store). Layers are built under temporary
    names and renamed into place, removed by renaming away and then deleting, and changed by
    ``apply_diff`` in a hard-link clone swapped in atomically; opening a store sweeps what a
    dead process left behind. So after a crash a layer is absent, as it was, or complete.

    **Errors.** :class:`aufs.InvalidLayerId` for a malformed id (a ``ValueError`` and a
    :class:`aufs.LayerNotFound`); :class:`aufs.LayerNotFound`,
    :class:`aufs.LayerExists`, :class:`aufs.LayerInUse`, :class:`aufs.MaxDepthExceeded`,
    :class:`aufs.MountError`, :class:`aufs.BackendUnavailable`, :class:`aufs.StoreFormatMismatch`.

    **Example.**

    >>> d = Driver("/var/lib/layers", backend="overlay")    # doctest: +SKIP
    >>> d.create("base"); d.create("app", parent="base")    # doctest: +SKIP
    >>> with d.mount("app") as root:                        # doctest: +SKIP
    ...     open(f"{root}/hello", "w").write("hi")
    """

    def __init__(self, home: PathArg, *, backend: str = "auto") -> None:
        """Open the store under ``home``, creating it if needed.

        ``backend`` is ``"auto"`` (kernel AUFS if the kernel has it, else kernel overlayfs if
        this process may mount, else fuse-overlayfs if installed; for an existing store only
        backends that read its whiteout format qualify) or one backend name.
        Raises ``ValueError`` for an unknown name, :class:`aufs.StoreFormatMismatch` if the
        store's format cannot be read by ``backend``, :class:`aufs.BackendUnavailable` saying
        what is missing if no usable backend exists. Opening sweeps debris of dead processes.
        """
        if backend not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_NAMES)}")
        self._layout = Layout(home)
        self._holder_lock = threading.Lock()
        self._holder_pid = -1
        self._holder_name = ""
        layout = self._layout
        layout.home.mkdir(parents=True, exist_ok=True)
        with locks.hold(layout.store_lock):
            meta = self._read_store_meta()
            fmt = None if meta is None else WhiteoutFormat(meta["format"])
            backend_cls, fmt = self._choose_backend(backend, fmt)
            if meta is None:
                for directory in layout.directories():
                    directory.mkdir(mode=0o755, exist_ok=True)
                os.chmod(layout.layers_dir, 0o700)
                self._write_store_meta(fmt, backend_cls.name)
            else:
                for directory in layout.directories():
                    directory.mkdir(mode=0o755, exist_ok=True)
            self._format = fmt
            self._backend: Backend = backend_cls(layout, fmt)
            self._sweep()

    # ------------------------------------------------------------------ properties

    @property
    def home(self) -> pathlib.Path:
        """The store's home directory (absolute)."""
        return self._layout.home

    @property
    def backend(self) -> str:
        """The name of the backend in use: ``"aufs"``, ``"overlay"`` or ``"fuse-overlayfs"``."""
        return self._backend.name

    @property
    def whiteout_format(self) -> WhiteoutFormat:
        """The whiteout format of this store's diff dirs."""
        return self._format

    @property
    def max_depth(self) -> int:
        """The longest chain (a layer and its ancestors) the backend mounts; ``create`` enforces it."""
        return self._backend.max_depth

    @property
    def _holder(self) -> str:
        # per process: a forked child holding the parent's Driver is a different holder
        pid = os.getpid()
        if pid != self._holder_pid:
            with self._holder_lock:
                if pid != self._holder_pid:
                    self._holder_name = f"{ProcessToken.current()}:{uuid.uuid4().hex[:12]}"
                    self._holder_pid = pid
        return self._holder_name

    # ------------------------------------------------------------------ store metadata

    def _read_store_meta(self) -> dict[str, Any] | None:
        try:
            with open(self._layout.meta_file, "rb") as f:
                meta = json.load(f)
        except FileNotFoundError:
            return None
        if not isinstance(meta, dict) or meta.get("format") not in ("aufs", "overlay"):
            raise StoreFormatMismatch(
                f"{self._layout.meta_file} is not an aufs store description", path=self._layout.meta_file
            )
        return meta

    def _write_store_meta(self, fmt: WhiteoutFormat, backend: str) -> None:
        tmp = self._layout.meta_file.with_name(self._layout.meta_file.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            json.dump({"version": STORE_VERSION, "format": fmt.value, "created_with": backend}, f)
            f.write("\n")
        os.replace(tmp, self._layout.meta_file)

    @staticmethod
    def _choose_backend(
        name: str, fmt: WhiteoutFormat | None
    ) -> tuple[type[Backend], WhiteoutFormat]:
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
            return cls, fmt if fmt is not None else cls.formats[0]
        reasons = []
        for cls in BACKENDS.values():
            if fmt is not None and fmt not in cls.formats:
                reasons.append(f"{cls.name}: cannot read this store's {fmt.value} format")
                continue
            reason = cls.unavailable_reason()
            if reason is None:
                return cls, fmt if fmt is not None else cls.formats[0]
            reasons.append(f"{cls.name}: {reason}")
        raise BackendUnavailable("no usable union backend: " + "; ".join(reasons))

    # ------------------------------------------------------------------ layer metadata

    def _layer_meta(self, layer_id: str) -> dict[str, Any]:
        """The layer's recorded metadata; LayerNotFound if it does not exist."""
        try:
            with open(self._layout.meta_path(layer_id), "rb") as f:
                meta: dict[str, Any] = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            raise LayerNotFound(f"no layer {layer_id!r} in {self.home}", layer_id=layer_id) from None
        return meta

    def _require(self, layer_id: str) -> dict[str, Any]:
        return self._layer_meta(validate_layer_id(layer_id))

    # ------------------------------------------------------------------ queries

    def exists(self, layer_id: str) -> bool:
        """True if the layer exists (False for a malformed id)."""
        return is_valid_layer_id(layer_id) and os.path.isfile(self._layout.meta_path(layer_id))

    def parent(self, layer_id: str) -> str | None:
        """The layer's parent id, or None for a base layer. LayerNotFound if absent."""
        parent: str | None = self._require(layer_id)["parent"]
        return parent

    def layers(self) -> list[str]:
        """Ids of all layers, sorted. Work in progress (temporary names) is never listed."""
        try:
            names = os.listdir(self._layout.layers_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_valid_layer_id(n))

    def is_mounted(self, layer_id: str) -> bool:
        """True if the layer's union is mounted now (by any holder). LayerNotFound if absent."""
        self._require(layer_id)
        return _is_mount_point(self._layout.mountpoint(layer_id))

    def status(self) -> dict[str, str]:
        """Facts about the store, as strings: backend, home, format, layers, backing filesystem..."""
        home = str(self.home)
        backing = "unknown"
        best = -1
        for info in mounts.mount_table():
            point = info.mountpoint
            if (home == point or home.startswith(point.rstrip("/") + "/")) and len(point) > best:
                best, backing = len(point), info.fstype
        layer_ids = self.layers()
        mounted = sum(1 for i in layer_ids if _is_mount_point(self._layout.mountpoint(i)))
        return {
            "backend": self.backend,
            "home": home,
            "whiteout_format": self._format.value,
            "layers": str(len(layer_ids)),
            "mounted": str(mounted),
            "max_depth": str(self.max_depth),
            "backing_filesystem": backing,
        }

    # ------------------------------------------------------------------ create / remove

    @_reports_no_space("create")
    def create(self, layer_id: str, parent: str | None = None) -> None:
        """Create the empty layer ``layer_id`` on top of ``parent`` (None: a base layer).

        The new diff dir is an empty directory owned by uid/gid 0 with mode 0755 (a child
        takes its parent's root owner and mode, so the union's root looks the same). Raises
        :class:`aufs.InvalidLayerId` (a ``ValueError``) for a malformed id, :class:`aufs.LayerExists`, :class:`aufs.LayerNotFound`
        for a missing parent, :class:`aufs.MaxDepthExceeded` if the chain would be deeper than
        the backend mounts. Atomic: on any error nothing is left behind.
        """
        validate_layer_id(layer_id)
        if parent is not None:
            validate_layer_id(parent)
        layout = self._layout
        with locks.hold(layout.store_lock):
            if self.exists(layer_id):
                raise LayerExists(f"layer {layer_id!r} already exists in {self.home}", layer_id=layer_id)
            ancestors: list[str] = []
            if parent is not None:
                try:
                    parent_meta = self._layer_meta(parent)
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
                diff = stage / "diff"
                os.mkdir(diff)
                uid, gid, mode = 0, 0, 0o755
                if parent is not None:
                    root = os.lstat(layout.diff_dir(parent))
                    uid, gid, mode = root.st_uid, root.st_gid, root.st_mode & 0o7777
                if os.geteuid() == 0:
                    os.chown(diff, uid, gid)
                os.chmod(diff, mode)  # after chown (which clears setuid/setgid), despite the umask
                os.mkdir(stage / "work", 0o700)
                with open(stage / "layer.json", "w", encoding="ascii") as f:
                    json.dump({"parent": parent, "ancestors": ancestors}, f)
                _rename_noreplace(stage, layout.layer_dir(layer_id))
            except BaseException:
                _rmtree(stage)
                raise

    def _children(self, layer_id: str) -> list[str]:
        children = []
        for other in self.layers():
            try:
                if self._layer_meta(other)["parent"] == layer_id:
                    children.append(other)
            except LayerNotFound:
                continue
        return children

    def remove(self, layer_id: str) -> None:
        """Delete the layer, unmounting it first if it is mounted (whoever holds it).

        Raises :class:`aufs.LayerInUse` if other layers have it as parent,
        :class:`aufs.LayerNotFound` if absent. Atomic: the layer vanishes by one rename.
        """
        validate_layer_id(layer_id)
        layout = self._layout
        with locks.hold(layout.store_lock), locks.hold(layout.lock_file(layer_id)) as lock_fd:
            self._layer_meta(layer_id)
            children = self._children(layer_id)
            if children:
                raise LayerInUse(
                    f"layer {layer_id!r} is the parent of {', '.join(sorted(children)[:5])}"
                    f"{' ...' if len(children) > 5 else ''}: remove those first",
                    layer_id=layer_id,
                )
            self._unmount_layer(layer_id)
            trash = layout.temp_path("remove", ProcessToken.current(), layer_id)
            os.rename(layout.layer_dir(layer_id), trash)
            for path in (
                layout.refs_file(layer_id),
                layout.refs_file(layer_id).with_name(layout.refs_file(layer_id).name + ".tmp"),
                layout.backend_record(layer_id),
                layout.short_link(layer_id),
            ):
                _unlink_quietly(path)
            _rmdir_quietly(layout.mountpoint(layer_id))
            locks.unlink_held(layout.lock_file(layer_id), lock_fd)
        _rmtree(trash)

    # ------------------------------------------------------------------ mounts

    def _root_opaque(self, layer_id: str) -> bool:
        """True if the layer's root dir is opaque (see :func:`aufs.whiteouts.root_is_opaque`).

        The same answer in at most two syscalls, since ``get`` asks it of every layer of a chain.
        """
        diff = self._layout.diff_path(layer_id)
        try:
            if stat.S_ISREG(os.lstat(diff + "/" + OPAQUE_NAME).st_mode):
                return True
        except FileNotFoundError:
            pass
        if self._format is WhiteoutFormat.AUFS:
            return False
        try:
            names = os.listxattr(diff, follow_symlinks=False)
        except FileNotFoundError:
            return False  # a damaged layer: the mount itself reports it
        if not any(n in OPAQUE_XATTRS for n in names):
            return False
        return root_is_opaque(diff, self._format)

    def _cut_at_root_opaque(self, ancestors: list[str]) -> list[str]:
        """``ancestors`` down to and including the first whose root is opaque."""
        chain = []
        for ancestor in ancestors:
            chain.append(ancestor)
            if self._root_opaque(ancestor):
                break
        return chain

    def _mount_chain(self, layer_id: str, ancestors: list[str]) -> list[str]:
        """The layers to mount below ``layer_id`` (top-most first), cut at a root-opaque layer.

        Kernel overlayfs ignores the opaque flag on a layer's root directory, so a layer
        whose root is opaque must be the bottom of the mount: nothing below it is visible.
        """
        if self._root_opaque(layer_id):
            return []
        return self._cut_at_root_opaque(ancestors)

    def _lowers(self, chain: list[str]) -> tuple[str, ...]:
        if not chain:
            return (str(self._layout.empty_dir),)
        return self._backend.lower_paths(chain)

    def _settle(self, layer_id: str) -> None:
        record = self._layout.backend_record(layer_id)
        if record.exists():
            self._backend.settle(str(record), str(self._layout.diff_dir(layer_id)))

    def _settled_diff_dir(self, layer_id: str) -> str:
        """The layer's diff dir, holding only the store's whiteout format (caller holds the lock).

        Only a layer with a mount record (mounted now, or left by a crash or a lazy unmount)
        can hold a backend's own markers, so only such a layer costs a walk.
        """
        self._settle(layer_id)
        diff_dir = self._layout.diff_path(layer_id)
        if self._layout.backend_record(layer_id).exists():
            self._backend.tidy(diff_dir)
        return diff_dir

    def _unmount_layer(self, layer_id: str) -> None:
        """Take the layer's mount down (caller holds the layer lock) and tidy its mountpoint."""
        layout = self._layout
        target = layout.mountpoint(layer_id)
        # no mounted() check first: umount2 tells "not mounted" apart itself (EINVAL)
        self._backend.unmount(str(target), record=str(layout.backend_record(layer_id)), upper=layout.diff_path(layer_id))
        _rmdir_quietly(target)

    @_reports_no_space("mount")
    @_defers_signals
    def get(self, layer_id: str) -> str:
        """Mount the layer's chain (first reference) and return the union directory.

        Writes there land in the layer's diff dir. Every call takes one reference for this
        ``Driver``; give it back with :meth:`put`. A mount left by a dead process is adopted.
        Raises :class:`aufs.LayerNotFound`, :class:`aufs.MountError`.
        """
        meta = self._require(layer_id)
        layout = self._layout
        target = layout.mountpoint(layer_id)
        with locks.hold(layout.lock_file(layer_id)):
            if not self.exists(layer_id):  # removed while we waited for the lock
                raise LayerNotFound(f"no layer {layer_id!r} in {self.home}", layer_id=layer_id)
            refs = RefTable.load(layout.refs_file(layer_id))
            if _is_mount_point(target) and not _is_healthy(target):
                # its daemon died (killed, OOM): the mount is dead for every holder; replace it
                detach(str(target))
            if not _is_mount_point(target):
                self._settle(layer_id)
                try:
                    os.mkdir(target, 0o755)
                except FileExistsError:
                    pass
                request = MountRequest(
                    target=str(target),
                    lowers=self._lowers(self._mount_chain(layer_id, list(meta["ancestors"]))),
                    upper=layout.diff_path(layer_id),
                    work=str(layout.work_dir(layer_id)),
                    record=str(layout.backend_record(layer_id)),
                )
                try:
                    self._backend.mount(request)
                except BaseException:
                    _rmdir_quietly(target)
                    raise
                try:
                    refs.take(self._holder)
                    refs.save()
                except BaseException:
                    self._unmount_layer(layer_id)
                    raise
            else:
                refs.take(self._holder)
                refs.save()
        return str(target)

    @_reports_no_space("release a reference to")
    @_defers_signals
    def put(self, layer_id: str) -> None:
        """Give back one reference this ``Driver`` took with :meth:`get`; the last one unmounts.

        If this ``Driver`` holds no reference to the layer, nothing happens: a stray ``put``
        never unmounts a mount another holder uses. Raises :class:`aufs.LayerNotFound`.
        """
        self._require(layer_id)
        layout = self._layout
        with locks.hold(layout.lock_file(layer_id)):
            if not self.exists(layer_id):
                raise LayerNotFound(f"no layer {layer_id!r} in {self.home}", layer_id=layer_id)
            refs = RefTable.load(layout.refs_file(layer_id))
            if not refs.give_back(self._holder):
                return
            refs.save()
            if refs.total == 0:
                self._unmount_layer(layer_id)

    @contextlib.contextmanager
    def mount(self, layer_id: str) -> Iterator[str]:
        """``with driver.mount(layer_id) as path:`` -- :meth:`get` on entry, :meth:`put` on exit.

        A Ctrl-C at any moment leaves no reference behind (get and put hold signals back, and
        the reference get took is known here before a held-back signal is delivered).
        """
        path = None
        try:
            with _signals_deferred():
                path = self.get(layer_id)
            yield path
        finally:
            if path is not None:
                self.put(layer_id)

    @contextlib.contextmanager
    def _lower_view(self, layer_id: str) -> Iterator[str | None]:
        """A directory showing the union of the layer's parent chain, or None for a base layer.

        A read-only union mount of the ancestors (unmounted on exit), or, in the AUFS format,
        the parent's own diff dir when it is the only layer to show (no mount needed).
        """
        meta = self._require(layer_id)
        ancestors = list(meta["ancestors"])
        if not ancestors:
            yield None
            return
        chain = self._cut_at_root_opaque(ancestors)
        if len(chain) == 1 and self._format is WhiteoutFormat.AUFS:
            yield str(self._layout.diff_dir(chain[0]))
            return
        target = self._layout.temp_path("view", ProcessToken.current(), layer_id)
        os.mkdir(target, 0o755)
        try:
            self._backend.mount(MountRequest(target=str(target), lowers=self._lowers(chain)))
            try:
                yield str(target)
            finally:
                self._backend.unmount(str(target))
        finally:
            _rmdir_quietly(target)

    # ------------------------------------------------------------------ cleanup / sweep

    def cleanup(self) -> None:
        """Unmount everything below ``home`` (ours, other processes', dead ones') and tidy up.

        Afterwards no mount exists below ``home`` and no reference is held. Idempotent.
        (``home`` itself is left alone when it is a mount point: the store lives on it.)
        """
        layout = self._layout
        with locks.hold(layout.store_lock):
            self._unmount_all_below_home()
            for layer_id in self.layers():
                with locks.hold(layout.lock_file(layer_id)):
                    record = layout.backend_record(layer_id)
                    if record.exists():
                        wait_recorded_daemon(str(record))
                        self._backend.settle(str(record), str(layout.diff_dir(layer_id)))
                    _unlink_quietly(layout.refs_file(layer_id))
                    if not _is_mount_point(layout.mountpoint(layer_id)):
                        _rmdir_quietly(layout.mountpoint(layer_id))
            self._sweep()

    def _unmount_all_below_home(self) -> None:
        home = os.path.realpath(self.home)  # the mount table lists resolved paths
        # a mount may hide others, and lazily detached ones vanish late: repeat until clean
        for _ in range(10):
            points = [i.mountpoint for i in mounts.submounts(home) if i.mountpoint != home]
            if not points:
                return
            for point in points:
                try:
                    detach(point)
                except OSError as exc:
                    if getattr(exc, "errno", None) not in (errno.ENOENT, errno.EINVAL):
                        raise
        left = [i.mountpoint for i in mounts.submounts(home) if i.mountpoint != home]
        if left:
            raise MountError(f"cannot unmount {', '.join(left[:3])} under {home}", path=left[0])

    def _sweep(self) -> None:
        """Remove what dead processes left (caller holds the store lock)."""
        layout = self._layout
        try:
            entries = os.listdir(layout.tmp_dir)
        except FileNotFoundError:
            entries = []
        for name in entries:
            owner = Layout.temp_owner(name)
            if owner is not None and owner.alive():
                continue
            path = layout.tmp_dir / name
            for info in mounts.submounts(path):
                detach(info.mountpoint)
            if path.is_dir() and not path.is_symlink():
                _rmtree(path)
            else:
                _unlink_quietly(path)
        live = set(self.layers())
        try:
            points = os.listdir(layout.mnt_dir)
        except FileNotFoundError:
            points = []
        for name in points:
            # a live layer's mountpoint belongs to its get/put (under the layer lock): a get may
            # have just made it; only the mountpoints of layers that are gone are debris
            path = layout.mnt_dir / name
            if name not in live and not _is_mount_point(path):
                _rmdir_quietly(path)
        try:
            state = os.listdir(layout.state_dir)
        except FileNotFoundError:
            state = []
        for name in state:
            layer_id, _, kind = name.partition(".")
            if layer_id in live or kind not in ("refs", "refs.tmp", "backend"):
                continue
            _unlink_quietly(layout.state_dir / name)

    # ------------------------------------------------------------------ layer tars

    @_reports_no_space("apply a diff to")
    def apply_diff(self, layer_id: str, diff: DiffSource, *,
                   _before_copy_up: Callable[[], None] | None = None) -> int:
        """Apply the layer tar ``diff`` (path, bytes or readable binary file) onto the layer.

        Returns the layer's diff size. Refuses a mounted layer (:class:`aufs.LayerInUse`).
        Atomic: the tar is extracted into a hard-link clone of the diff dir, which replaces
        the diff dir in one ``rename_exchange``; on any error (KeyboardInterrupt included) the
        layer is exactly as before and nothing is left behind.

        Parent directories an entry implies but the tar does not list get the owner, mode and
        xattrs the parent chain shows at the same path (as if the tar had been extracted into
        a mount of the chain, where the kernel copies them up); 0755 root:root where the chain
        has no directory. ``_before_copy_up`` (private: the image importer) is called, only
        when there are such directories, before the parent chain is read for them: it waits
        until the chain is complete.
        """
        from . import apply as _apply
        from . import changes as _changes

        self._require(layer_id)
        layout = self._layout
        with locks.hold(layout.lock_file(layer_id)):
            self._layer_meta(layer_id)
            if _is_mount_point(layout.mountpoint(layer_id)):
                raise LayerInUse(f"layer {layer_id!r} is mounted: put it before applying a diff", layer_id=layer_id)
            self._settle(layer_id)
            diff_dir = layout.diff_dir(layer_id)
            stage = layout.temp_path("apply", ProcessToken.current(), layer_id)
            try:
                with os.scandir(diff_dir) as it:
                    empty = next(it, None) is None
                clone_tree(str(diff_dir), str(stage), empty=empty)
                implied = _apply.apply_tar(str(stage), diff, self._format)
                if implied and self._layer_meta(layer_id)["ancestors"]:
                    if _before_copy_up is not None:
                        _before_copy_up()
                    # a mount of the chain only when needed: most tars list every directory
                    with self._lower_view(layer_id) as lower:
                        if lower is not None:
                            _apply.copy_up_dirs(str(stage), implied, lower)
                # measured before the swap: after it, an error would wrongly say "not applied"
                size = int(_changes.diff_size(str(stage), self._format))
                _rename_exchange(stage, diff_dir)
            except AufsError as exc:
                _rmtree(stage)
                if exc.layer_id is None:  # apply_tar knows paths, not which layer they are for
                    exc.layer_id = layer_id
                raise
            except OSError as exc:
                _rmtree(stage)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace(
                        f"no space left in {self.home} while applying a diff to layer {layer_id!r}; "
                        "the layer is unchanged",
                        layer_id=layer_id,
                        path=exc.filename,
                    ) from exc
                raise
            except BaseException:
                _rmtree(stage)
                raise
            try:
                _rmtree(stage)  # the old tree, swapped out
            except OSError:
                pass  # applied all the same; the sweep removes it once this process is gone
            return size

    def diff(self, layer_id: str, out: DiffTarget) -> int:
        """Write the layer's own changes as an uncompressed pax tar to ``out``; bytes written."""
        from . import export as _export

        self._require(layer_id)
        with locks.hold(self._layout.lock_file(layer_id)):
            self._layer_meta(layer_id)
            diff_dir = self._settled_diff_dir(layer_id)
            try:
                return _export.write_diff(diff_dir, out, self._format)
            except PathTooLong as exc:
                raise _of_layer(exc, layer_id) from exc.__cause__

    def changes(self, layer_id: str) -> list[Change]:
        """The layer's changes against its parent chain, sorted by path (``aufs.Change``)."""
        from . import changes as _changes

        self._require(layer_id)
        with locks.hold(self._layout.lock_file(layer_id)):
            self._layer_meta(layer_id)
            diff_dir = self._settled_diff_dir(layer_id)
            with self._lower_view(layer_id) as lower:
                try:
                    return list(_changes.compute_changes(diff_dir, lower, self._format))
                except PathTooLong as exc:
                    raise _of_layer(exc, layer_id) from exc.__cause__

    def diff_size(self, layer_id: str) -> int:
        """Bytes of regular-file content in the layer's own changes, each inode once."""
        from . import changes as _changes

        self._require(layer_id)
        with locks.hold(self._layout.lock_file(layer_id)):
            self._layer_meta(layer_id)
            diff_dir = self._settled_diff_dir(layer_id)
            return int(_changes.diff_size(diff_dir, self._format))

    def __repr__(self) -> str:
        return f"Driver({str(self.home)!r}, backend={self.backend!r})"

    def check(self, *, repair: bool = False) -> CheckReport:
        """Report the store's inconsistencies (``aufs.check.CheckReport``); ``repair`` fixes them.

        Finds leftover temporaries, orphan directories, dangling parents, stale mounts and
        references, stacked mounts, stale state files (see :mod:`aufs.check` for the list).
        Safe while other threads and processes use the store.
        """
        from .check import check_store

        return check_store(self, repair=repair)
