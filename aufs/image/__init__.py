"""Container images in and out of a layer store.

:func:`import_image` reads a ``docker save`` tarball or an OCI image layout (directory or
tarball), verifies every digest, stores each layer under its OCI chainID and records the
image (config, manifest, platform, names); :func:`export_image` writes a layer chain back out
as an OCI image layout that umoci, skopeo and other OCI tools read, with the recorded image's
own config and history when the chain holds an imported image. :func:`list_images`,
:func:`find_image` and :func:`remove_image` work on the records.

Modules: :mod:`.sources` (files of an image directory or tarball), :mod:`.manifests`
(index/manifest/config resolution and platform choice), :mod:`.digests` (sha256 and chainIDs),
:mod:`.streams` (decompression with hashing), :mod:`.importer`, :mod:`.exporter`,
:mod:`.records` (the image records), :mod:`.journal` (crash safety of imports).

Names are imported lazily, so ``aufs.check`` can use :mod:`.records` without loading the
import and export machinery.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "ProgressCallback": "aufs.image.importer",
    "import_image": "aufs.image.importer",
    "chain_ids": "aufs.image.digests",
    "export_image": "aufs.image.exporter",
    "ImageRecord": "aufs.image.records",
    "RemovedImage": "aufs.image.records",
    "find_image": "aufs.image.records",
    "list_images": "aufs.image.records",
    "remove_image": "aufs.image.records",
}

__all__ = [
    "ImageRecord",
    "ProgressCallback",
    "RemovedImage",
    "chain_ids",
    "export_image",
    "find_image",
    "import_image",
    "list_images",
    "remove_image",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'aufs.image' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from .digests import chain_ids as chain_ids
    from .exporter import export_image as export_image
    from .importer import ProgressCallback as ProgressCallback
    from .importer import import_image as import_image
    from .records import ImageRecord as ImageRecord
    from .records import RemovedImage as RemovedImage
    from .records import find_image as find_image
    from .records import list_images as list_images
    from .records import remove_image as remove_image
