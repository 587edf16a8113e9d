"""The store's core: what every part of the store shares, and nothing more.

A :class:`StoreCore` is built by :class:`aufs.Driver` when it opens a store and handed to the
parts that work on that store: the diff verbs (:mod:`aufs.diffs`) and the consistency check
(:mod:`aufs.check`). It owns

* the store's facts: its :class:`~aufs.layout.Layout`, whiteout format and backend;
* reading layer metadata (``layer.json``), and the layer and store locks;
* mount planning for a layer (gathering the facts :mod:`aufs.plan` turns into a
  :class:`~aufs.plan.Mount` description), performing it, and taking a layer's mount down;
* settling what a backend left in a diff dir, and the read-only *lower view* of a chain;
* the sweep of what dead processes left behind.

It never counts references and never decides lifecycle: the Driver does. Nothing here
imports the Driver, the diff verbs or the check.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from . import locks, mounts
from .backends import Backend
from .backends.base import detach
from .clone import remove_tree
from .errors import LayerNotFound, MountError, StoreReadOnly
from .layout import Layout, is_valid_layer_id, validate_layer_id
from .owners import ProcessToken
from .plan import Mount, mount_chain
from .whiteouts import OPAQUE_NAME, OPAQUE_XATTRS, WhiteoutFormat, root_is_opaque

__all__ = ["StoreCore", "mounted_or_dead", "rmdir_quietly", "unlink_quietly"]


def rmdir_quietly(path: str) -> None:
    """Remove an empty directory; absent, or still a mount point someone holds, is fine."""
    try:
        os.rmdir(path)
    except OSError:
        pass


def unlink_quietly(path: str) -> None:
    """Remove a file; absent is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def mounted_or_dead(path: str) -> bool:
    """:func:`aufs.mounts.mounted`, where a FUSE mount whose daemon died (ENOTCONN) counts."""
    try:
        return mounts.mounted(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return True
        raise


def is_healthy(path: str) -> bool:
    """False for a mount whose FUSE daemon is gone (every access fails with ENOTCONN)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return False
        raise
    return True


class StoreCore:
    """One open store's layout, format and backend, and the operations its parts share."""

    def __init__(self, layout: Layout, fmt: WhiteoutFormat, backend: Backend, *,
                 read_only: bool = False, tightened: Sequence[str] = (),
                 rootless_owner: tuple[int, int] | None = None, rootless_kind: str | None = None) -> None:
        self.layout = layout
        self.rootless_owner = rootless_owner
        """A rootless store's (uid, gid) owning its files (see :mod:`aufs.rootless`), else None."""
        self.rootless_kind = rootless_kind
        """``"override_stat"`` (:mod:`aufs.rootless`), ``"userns"`` (:mod:`aufs.userns`) or None."""
        self.format = fmt
        self.backend = backend
        self.read_only = read_only
        """The store's filesystem is read-only: readers work, writers get StoreReadOnly."""
        self.tightened = list(tightened)
        """Directories whose permissions opening the store tightened (older stores)."""
        self._links: set[str] = set()

    def require_writable(self, action: str) -> None:
        """Raise :class:`aufs.StoreReadOnly` naming ``action`` if the store cannot change."""
        if self.read_only:
            raise StoreReadOnly(f"cannot {action}: the store {self.home} is on a read-only filesystem",
                                path=self.home)

    @property
    def home(self) -> str:
        return self.layout.home

    # ------------------------------------------------------------------ layers

    def load_meta(self, layer_id: str) -> dict[str, Any]:
        """The layer's ``layer.json``; :class:`aufs.LayerNotFound` if it does not exist."""
        try:
            with open(self.layout.layer_meta(layer_id), "rb") as f:
                meta: dict[str, Any] = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            raise LayerNotFound(f"no layer {layer_id!r} in {self.home}", layer_id=layer_id) from None
        return meta

    def require(self, layer_id: str) -> dict[str, Any]:
        """:meth:`load_meta` of a validated id (:class:`aufs.InvalidLayerId` otherwise)."""
        return self.load_meta(validate_layer_id(layer_id))

    def exists(self, layer_id: str) -> bool:
        return is_valid_layer_id(layer_id) and os.path.isfile(self.layout.layer_meta(layer_id))

    def layers(self) -> list[str]:
        """Ids of all layers, sorted (temporary names are never valid ids)."""
        try:
            names = os.listdir(self.layout.layers_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_valid_layer_id(n))

    def store_lock(self) -> contextlib.AbstractContextManager[int]:
        """The store lock: creates, removes, cleanup, check and the sweep take it."""
        return locks.hold(self.layout.store_lock)

    def layer_lock(self, layer_id: str) -> contextlib.AbstractContextManager[int]:
        """The layer's lock: mounts, unmounts, applies and diffs of the layer take it."""
        return locks.hold(self.layout.lock_file(layer_id))

    @contextlib.contextmanager
    def locked_layer(self, layer_id: str) -> Iterator[dict[str, Any]]:
        """Hold the layer's lock and yield its metadata, checked again under the lock (a
        remove may have won the race for it)."""
        self.require(layer_id)
        with self.layer_lock(layer_id):
            yield self.load_meta(layer_id)

    # ------------------------------------------------------------------ mount planning

    def root_opaque(self, layer_id: str) -> bool:
        """True if the layer's root dir is opaque (see :func:`aufs.whiteouts.root_is_opaque`),
        in at most two syscalls for the common case, since a mount asks it of every layer."""
        diff = self.layout.diff_dir(layer_id)
        try:
            if stat.S_ISREG(os.lstat(diff + "/" + OPAQUE_NAME).st_mode):
                return True
        except FileNotFoundError:
            pass
        if self.format is WhiteoutFormat.AUFS:
            return False
        try:
            names = os.listxattr(diff, follow_symlinks=False)
        except FileNotFoundError:
            return False  # a damaged layer: the mount itself reports it
        if not any(n in OPAQUE_XATTRS for n in names):
            return False
        return root_is_opaque(diff, self.format)

    def forget_short_link(self, layer_id: str) -> None:
        """The layer is gone: its short link is removed and no longer remembered."""
        link = self.layout.short_link(layer_id)
        self._links.discard(link)
        unlink_quietly(link)

    def short_link(self, layer_id: str) -> str:
        """The layer's fixed-length short link, made on first use.

        Links this process has seen are remembered (a deep chain would otherwise cost a
        syscall per layer per mount); :meth:`mount_layer` forgets them and retries once if a
        mount finds one gone (a layer removed and made again by another process).
        """
        link = self.layout.short_link(layer_id)
        if link in self._links:
            return link
        if not os.path.islink(link):
            try:
                os.symlink(self.layout.short_link_target(layer_id), link)
            except FileExistsError:
                pass
        self._links.add(link)
        return link

    def describe(self, layer_id: str, ancestors: list[str], *, readonly: bool = False) -> list[Mount]:
        """The mounts showing the layer's chain: writable on the layer's diff dir, or the chain
        (the layer included) read-only."""
        chain = mount_chain(layer_id, ancestors, self.root_opaque, include_self=readonly)
        upper = work = None
        if not readonly:
            upper, work = self.layout.diff_dir(layer_id), self.layout.work_dir(layer_id)
        return self._describe_chain(chain, upper, work)

    def _describe_chain(self, chain: list[str], upper: str | None, work: str | None) -> list[Mount]:
        if not chain:
            lowers: list[str] = [self.layout.empty_dir]
        else:
            full = [self.layout.diff_dir(i) for i in chain]
            lowers = list(self.backend.pick_lowers(
                full, lambda: [self.short_link(i) for i in chain], upper, work))
        return self.backend.describe(lowers, upper, work)

    def mount_layer(self, layer_id: str, meta: dict[str, Any]) -> None:
        """Mount the layer's union on its mountpoint (caller holds the layer lock)."""
        target = self.layout.mountpoint(layer_id)
        self.settle(layer_id)
        try:
            os.mkdir(target, 0o755)
        except FileExistsError:
            pass
        try:
            try:
                described = self.describe(layer_id, list(meta["ancestors"]))
                self.backend.perform(described, target, self.layout.backend_record(layer_id))
            except MountError:
                # fuse-overlayfs reports a missing lower as its own exit, not as ENOENT
                if not self._links:
                    raise
                self._links.clear()  # a remembered short link may be gone: look again, once
                described = self.describe(layer_id, list(meta["ancestors"]))
                self.backend.perform(described, target, self.layout.backend_record(layer_id))
        except BaseException:
            rmdir_quietly(target)
            raise

    def unmount_layer(self, layer_id: str) -> None:
        """Take the layer's mount down (caller holds the layer lock) and tidy its mountpoint."""
        target = self.layout.mountpoint(layer_id)
        # no mounted() check first: umount2 tells "not mounted" apart itself (EINVAL)
        self.backend.unmount(target, record=self.layout.backend_record(layer_id),
                             upper=self.layout.diff_dir(layer_id))
        rmdir_quietly(target)

    def settle(self, layer_id: str, *, wait: bool = False) -> str:
        """Finish what an earlier mount's backend left (caller holds the layer lock); returns
        the diff dir. Only a layer with a mount record can hold a backend's own markers."""
        record = self.layout.backend_record(layer_id)
        diff_dir = self.layout.diff_dir(layer_id)
        if os.path.exists(record) and not self.read_only:
            self.backend.settle(record, diff_dir, wait=wait)
        return diff_dir

    def normalised_diff_dir(self, layer_id: str) -> str:
        """The layer's diff dir holding only the store's whiteout format, even while mounted
        (caller holds the layer lock)."""
        diff_dir = self.settle(layer_id)
        if os.path.exists(self.layout.backend_record(layer_id)) and not self.read_only:
            self.backend.normalise(diff_dir)
        return diff_dir

    @contextlib.contextmanager
    def lower_view(self, layer_id: str, ancestors: list[str]) -> Iterator[str | None]:
        """A directory showing the union of the layer's parent chain, or None for a base layer.

        A read-only union mount of the ancestors (unmounted on exit), or, in the AUFS format,
        the parent's own diff dir when it is the only layer to show (no mount needed).
        """
        if not ancestors:
            yield None
            return
        chain = mount_chain(ancestors[0], ancestors[1:], self.root_opaque, include_self=True)
        if len(chain) == 1 and self.format is WhiteoutFormat.AUFS:
            yield self.layout.diff_dir(chain[0])
            return
        if self.read_only:  # a view needs a mountpoint: outside a store that cannot change
            target = tempfile.mkdtemp(prefix=f"aufs-view.{layer_id}.")
        else:
            target = self.layout.temp_path("view", ProcessToken.current(), layer_id)
            os.mkdir(target, 0o700)
        try:
            self.backend.perform(self._describe_chain(chain, None, None), target)
            try:
                yield target
            finally:
                self.backend.unmount(target)
        finally:
            rmdir_quietly(target)

    # ------------------------------------------------------------------ debris

    def unmount_all_below_home(self) -> None:
        """Unmount every mount below ``home`` (not ``home`` itself)."""
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

    def sweep(self) -> None:
        """Remove what dead processes left (caller holds the store lock)."""
        layout = self.layout
        for name in _listdir(layout.tmp_dir):
            owner = Layout.temp_owner(name)
            if owner is not None and owner.alive():
                continue
            path = layout.tmp_dir + "/" + name
            for info in mounts.submounts(path):
                detach(info.mountpoint)
            if os.path.isdir(path) and not os.path.islink(path):
                remove_tree(path)
            else:
                unlink_quietly(path)
        live = set(self.layers())
        for name in _listdir(layout.mnt_dir):
            # a live layer's mountpoint belongs to its get/put (under the layer lock): a get may
            # have just made it; only the mountpoints of layers that are gone are debris
            path = layout.mnt_dir + "/" + name
            if name not in live and not mounted_or_dead(path):
                rmdir_quietly(path)
        for name in _listdir(layout.state_dir):
            layer_id, _, kind = name.partition(".")
            if layer_id in live or kind not in ("refs", "refs.tmp", "backend"):
                continue
            unlink_quietly(layout.state_dir + "/" + name)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
