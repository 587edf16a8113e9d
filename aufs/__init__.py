"""aufs: a union-filesystem layer store.

Container image layers live on disk under one *home* directory; any chain of them mounts as a
single root filesystem with a writable top (kernel AUFS, kernel overlayfs or fuse-overlayfs).

Public names are imported lazily (PEP 562) so ``import aufs`` stays cheap for the CLI and never
loads libarchive or the native module before they are needed.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (
    AufsError,
    ArchiveError,
    BackendUnavailable,
    DigestMismatch,
    ImageError,
    ImageNotFound,
    InvalidLayerId,
    LayerExists,
    LayerInUse,
    LayerNotFound,
    MaxDepthExceeded,
    MountDataTooLong,
    MountError,
    NoSpace,
    PathTooLong,
    StoreFormatMismatch,
    StoreLocked,
    StoreNotFound,
    StoreReadOnly,
    UnsafeArchive,
)

# public name -> module that defines it
_LAZY = {
    "mounted": "aufs.mounts",
    "mount": "aufs.mounts",
    "unmount": "aufs.mounts",
    "mount_table": "aufs.mounts",
    "submounts": "aufs.mounts",
    "MountInfo": "aufs.mounts",
    "kernel_features": "aufs.mounts",
    "KernelFeatures": "aufs.mounts",
    "mount_overlay": "aufs.mounts",
    "mount_described": "aufs.mounts",
    "Mount": "aufs.plan",
    "Driver": "aufs.store",
    "CheckReport": "aufs.check",
    "Change": "aufs.changes",
    "ChangeKind": "aufs.changes",
    "import_image": "aufs.image",
    "export_image": "aufs.image",
    "list_images": "aufs.image",
    "remove_image": "aufs.image",
    "find_image": "aufs.image",
    "ImageRecord": "aufs.image",
    "RemovedImage": "aufs.image",
    "serve_containerd": "aufs.serve.containerd",
}

__all__ = [
    "__version__",
    "AufsError",
    "ArchiveError",
    "BackendUnavailable",
    "DigestMismatch",
    "ImageError",
    "ImageNotFound",
    "InvalidLayerId",
    "LayerExists",
    "LayerInUse",
    "LayerNotFound",
    "MaxDepthExceeded",
    "MountDataTooLong",
    "MountError",
    "NoSpace",
    "PathTooLong",
    "StoreFormatMismatch",
    "StoreLocked",
    "StoreNotFound",
    "StoreReadOnly",
    "UnsafeArchive",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'aufs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from .changes import Change as Change
    from .changes import ChangeKind as ChangeKind
    from .image import export_image as export_image
    from .image import import_image as import_image
    from .image import ImageRecord as ImageRecord
    from .image import RemovedImage as RemovedImage
    from .image import find_image as find_image
    from .image import list_images as list_images
    from .image import remove_image as remove_image
    from .mounts import KernelFeatures as KernelFeatures
    from .mounts import MountInfo as MountInfo
    from .mounts import kernel_features as kernel_features
    from .mounts import mount as mount
    from .mounts import mount_described as mount_described
    from .mounts import mount_overlay as mount_overlay
    from .plan import Mount as Mount
    from .mounts import mount_table as mount_table
    from .mounts import mounted as mounted
    from .mounts import submounts as submounts
    from .mounts import unmount as unmount
    from .check import CheckReport as CheckReport
    from .store import Driver as Driver
    from .serve.containerd import serve_containerd as serve_containerd
