"""Union backends the layer store can mount with, by name.

``BACKENDS`` maps each name accepted by ``aufs.Driver(backend=...)`` to its class, in the
order ``"auto"`` tries them: kernel AUFS, kernel overlayfs, fuse-overlayfs.
"""
from __future__ import annotations

from .aufs import AufsBackend
from .base import Backend
from .fuse_overlayfs import FuseOverlayfsBackend
from .overlay import OverlayBackend

__all__ = ["BACKENDS", "AufsBackend", "Backend", "FuseOverlayfsBackend", "OverlayBackend"]

BACKENDS: dict[str, type[Backend]] = {
    AufsBackend.name: AufsBackend,
    OverlayBackend.name: OverlayBackend,
    FuseOverlayfsBackend.name: FuseOverlayfsBackend,
}
