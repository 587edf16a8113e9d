"""Container images in and out of a layer store.

:func:`import_image` reads a ``docker save`` tarball or an OCI image layout (directory or
tarball), verifies every digest, and stores each layer under its OCI chainID;
:func:`export_image` writes a layer chain back out as an OCI image layout that umoci, skopeo
and other OCI tools read.

Modules: :mod:`.sources` (files of an image directory or tarball), :mod:`.manifests`
(index/manifest/config resolution and platform choice), :mod:`.digests` (sha256 and chainIDs),
:mod:`.streams` (decompression with hashing), :mod:`.importer`, :mod:`.exporter`.
"""
from __future__ import annotations

from .digests import chain_ids
from .exporter import export_image
from .importer import ProgressCallback, import_image

__all__ = ["ProgressCallback", "chain_ids", "export_image", "import_image"]
