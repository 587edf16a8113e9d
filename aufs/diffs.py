"""The diff verbs of a store: apply a layer tar, write a layer's diff, list its changes, size it.

Like moby's DiffDriver beside its ProtoDriver, these work on layers without managing their
lifecycle: :class:`LayerDiffs` is built on the :class:`~aufs.core.StoreCore` the Driver hands
it, takes each layer's lock itself, and calls the layer-tar modules (:mod:`aufs.apply`,
:mod:`aufs.export`, :mod:`aufs.changes`). ``Driver.apply_diff``, ``diff``, ``changes`` and
``diff_size`` are these methods; the image importer uses :meth:`LayerDiffs.apply_diff`
directly for its ``before_copy_up`` hook.

Applying is atomic: the tar is extracted into a hard-link clone of the diff dir
(:mod:`aufs.clone`), which replaces the diff dir in one ``rename_exchange``.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from typing import BinaryIO, Union

from . import _syscalls
from . import apply as _apply
from . import changes as _changes
from . import export as _export
from .changes import Change
from .clone import clone_tree, remove_tree
from .core import StoreCore, mounted_or_dead
from .errors import AufsError, LayerInUse, NoSpace, PathTooLong
from .interrupts import reports_no_space
from .owners import ProcessToken

__all__ = ["DiffSource", "DiffTarget", "LayerDiffs"]

DiffSource = Union[str, "os.PathLike[str]", bytes, BinaryIO]
DiffTarget = Union[str, "os.PathLike[str]", BinaryIO]


def _of_layer(exc: PathTooLong, layer_id: str) -> PathTooLong:
    """``exc`` said of the layer ``layer_id``."""
    return PathTooLong(f"layer {layer_id!r}: {exc.message}", layer_id=layer_id, path=exc.path)


class LayerDiffs:
    """The diff verbs over one open store (see the module docstring)."""

    def __init__(self, core: StoreCore) -> None:
        self._core = core

    @property
    def home(self) -> str:
        return self._core.home

    @reports_no_space("apply a diff to")
    def apply_diff(self, layer_id: str, diff: DiffSource, *,
                   before_copy_up: Callable[[], None] | None = None) -> int:
        """Apply the layer tar ``diff`` onto the layer; returns the layer's diff size.

        See ``Driver.apply_diff``. ``before_copy_up`` (the image importer's) is called, only
        when the tar implies parent directories it does not list, before the parent chain is
        read for their owner, mode and xattrs: it waits until the chain is complete.
        """
        core = self._core
        core.require_writable(f"apply a diff to layer {layer_id!r}")
        layout = core.layout
        with core.locked_layer(layer_id) as meta:
            if mounted_or_dead(layout.mountpoint(layer_id)):
                raise LayerInUse(f"layer {layer_id!r} is mounted: put it before applying a diff", layer_id=layer_id)
            diff_dir = core.settle(layer_id)
            stage = layout.temp_path("apply", ProcessToken.current(), layer_id)
            try:
                with os.scandir(diff_dir) as it:
                    empty = next(it, None) is None
                clone_tree(diff_dir, stage, empty=empty)
                implied = _apply.apply_tar(stage, diff, core.format,
                                           rootless=core.rootless_kind or False)
                if implied and meta["ancestors"]:
                    if before_copy_up is not None:
                        before_copy_up()
                    # a mount of the chain only when needed: most tars list every directory
                    with self.lower_view(layer_id) as lower:
                        if lower is not None:
                            _apply.copy_up_dirs(stage, implied, lower)
                if implied:
                    _apply.stamp_implied_dirs(stage, implied)
                # measured before the swap: after it, an error would wrongly say "not applied"
                size = int(_changes.diff_size(stage, core.format))
                _syscalls.rename_exchange(stage, diff_dir)
            except AufsError as exc:
                remove_tree(stage)
                if exc.layer_id is None:  # apply_tar knows paths, not which layer they are for
                    exc.layer_id = layer_id
                raise
            except OSError as exc:
                remove_tree(stage)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace(
                        f"no space left in {core.home} while applying a diff to layer {layer_id!r}; "
                        "the layer is unchanged",
                        layer_id=layer_id,
                        path=exc.filename,
                    ) from exc
                raise
            except BaseException:
                remove_tree(stage)
                raise
            try:
                remove_tree(stage)  # the old tree, swapped out
            except OSError:
                pass  # applied all the same; the sweep removes it once this process is gone
            return size

    def lower_view(self, layer_id: str) -> contextlib.AbstractContextManager[str | None]:
        """``with diffs.lower_view(layer_id) as lower:`` a directory showing the union of the
        layer's parent chain (a read-only mount, taken down on exit), or None for a base layer.
        Raises :class:`aufs.LayerNotFound`, :class:`aufs.MountError`. Takes no lock: call it
        under the layer's lock, or on a chain nobody changes."""
        meta = self._core.require(layer_id)
        return self._core.lower_view(layer_id, list(meta["ancestors"]))

    def diff(self, layer_id: str, out: DiffTarget) -> int:
        """Write the layer's own changes as an uncompressed pax tar to ``out``; bytes written."""
        with self._core.locked_layer(layer_id):
            diff_dir = self._core.normalised_diff_dir(layer_id)
            try:
                return _export.write_diff(diff_dir, out, self._core.format, self._core.rootless_owner)
            except PathTooLong as exc:
                raise _of_layer(exc, layer_id) from exc.__cause__

    def changes(self, layer_id: str) -> list[Change]:
        """The layer's changes against its parent chain, sorted by path."""
        core = self._core
        with core.locked_layer(layer_id):
            diff_dir = core.normalised_diff_dir(layer_id)
            with self.lower_view(layer_id) as lower:
                try:
                    return list(_changes.compute_changes(diff_dir, lower, core.format))
                except PathTooLong as exc:
                    raise _of_layer(exc, layer_id) from exc.__cause__

    def diff_size(self, layer_id: str) -> int:
        """Bytes of regular-file content in the layer's own changes, each inode once."""
        with self._core.locked_layer(layer_id):
            diff_dir = self._core.normalised_diff_dir(layer_id)
            return int(_changes.diff_size(diff_dir, self._core.format))
