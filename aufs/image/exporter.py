"""``export_image``: a layer chain of the store written out as an OCI image layout.

Owns the writing side of images: each layer of the chain becomes one blob holding the layer's
``diff`` tar (uncompressed by default, or gzip), hashed while it is written; then the config
(``rootfs.diff_ids``, os, architecture), the manifest, ``index.json`` and ``oci-layout``.
Nothing time-dependent goes into the metadata, so exporting the same chain twice gives the
same manifest digest (with uncompressed layers). The layout is built under a temporary name
beside ``dest`` and renamed into place, so ``dest`` is either absent or complete.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from .manifests import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, host_platform

_gzip_zlib: Any
try:  # ISA-L deflates several times faster than zlib; optional (not on PyPy)
    from isal import isal_zlib

    _gzip_zlib = isal_zlib
except ImportError:  # pragma: no cover - depends on the environment
    _gzip_zlib = zlib

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Driver

__all__ = ["export_image", "write_oci_layout"]

_LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
}


class _BlobWriter(io.RawIOBase):
    """Takes a layer tar, writes it (optionally gzip-compressed) to a file; hashes both forms."""

    def __init__(self, path: Path, compression: str) -> None:
        super().__init__()
        self._file = open(path, "wb")  # noqa: SIM115 - closed by finish()/close()
        self._diff_hash = hashlib.sha256()
        self._blob_hash = hashlib.sha256()
        self.size = 0
        self._compressor: Any = _gzip_zlib.compressobj(wbits=31) if compression == "gzip" else None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._diff_hash.update(view)
        out = bytes(view) if self._compressor is None else self._compressor.compress(view)
        self._emit(out)
        return len(view)

    def _emit(self, out: bytes) -> None:
        if out:
            self._blob_hash.update(out)
            self._file.write(out)
            self.size += len(out)

    def finish(self) -> tuple[str, str, int]:
        """Close the file; return (diffID, blob digest, blob size)."""
        if self._compressor is not None:
            self._emit(self._compressor.flush())
        self._file.close()
        return ("sha256:" + self._diff_hash.hexdigest(), "sha256:" + self._blob_hash.hexdigest(), self.size)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        super().close()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _write_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return "sha256:" + hexdigest, len(data)


def _chain(driver: Driver, layer_id: str) -> list[str]:
    chain = [layer_id]
    parent = driver.parent(layer_id)
    while parent is not None:
        chain.append(parent)
        parent = driver.parent(parent)
    chain.reverse()
    return chain


def export_image(
    driver: Driver,
    layer_id: str,
    dest: str | os.PathLike[str],
    *,
    compression: str = "none",
    ref: str = "latest",
    config: dict[str, Any] | None = None,
    workers: int | None = None,
) -> str:
    """Write the chain ending at ``layer_id`` as an OCI image layout at ``dest``; return the
    manifest digest (``"sha256:<hex>"``), which is also the image's content address.

    :param dest: a path that does not exist yet, or an empty directory.
    :param compression: ``"none"`` (layer blobs are the plain diff tars; fastest, and
        deterministic) or ``"gzip"``.
    :param ref: the name recorded in ``index.json`` (``org.opencontainers.image.ref.name``),
        e.g. for ``umoci unpack --image dest:latest`` or ``skopeo copy oci:dest:latest ...``.
    :param config: extra fields for the image config's ``config`` section (Env, Cmd,
        WorkingDir, ...).

    The image has one layer per layer of the chain, base first; each blob is that layer's
    ``driver.diff``. Raises :class:`aufs.LayerNotFound` for an unknown layer, ``ValueError``
    for a bad argument, ``FileExistsError`` if ``dest`` exists and is not an empty directory.
    """
    if compression not in _LAYER_TYPES:
        raise ValueError(f"compression must be one of {sorted(_LAYER_TYPES)}, not {compression!r}")
    dest_path = Path(os.fspath(dest))
    if dest_path.exists() and not (dest_path.is_dir() and not any(dest_path.iterdir())):
        raise FileExistsError(f"{dest_path} exists and is not an empty directory")
    chain = _chain(driver, layer_id)
    staging = dest_path.parent / f".{dest_path.name}.tmp-{uuid.uuid4().hex[:8]}"
    blobs = staging / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    try:
        layers = _write_layers(driver, chain, blobs, compression, workers)
        described = [(diff_id, digest, size, _LAYER_TYPES[compression]) for diff_id, digest, size in layers]
        digest = _write_metadata(staging, blobs, described, ref, config or {})
        if dest_path.exists():
            dest_path.rmdir()  # empty, checked above; rename(2) cannot replace it atomically anyway
        os.rename(staging, dest_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return digest


def _write_layers(
    driver: Driver, chain: list[str], blobs: Path, compression: str, workers: int | None
) -> list[tuple[str, str, int]]:
    def one(index: int) -> tuple[str, str, int]:
        temporary = blobs / f".layer-{index}.tmp"
        writer = _BlobWriter(temporary, compression)
        try:
            driver.diff(chain[index], cast(BinaryIO, writer))
            diff_id, blob_digest, size = writer.finish()
        finally:
            writer.close()
        # Equal layers (empty ones, say) share one blob: replacing it with itself is harmless.
        os.replace(temporary, blobs / blob_digest[len("sha256:"):])
        return diff_id, blob_digest, size

    count = workers or max(1, min(len(chain), (os.cpu_count() or 2), 8))
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="aufs-export") as pool:
        return list(pool.map(one, range(len(chain))))


def _write_metadata(
    staging: Path,
    blobs: Path,
    layers: Sequence[tuple[str, str, int, str]],
    ref: str,
    extra_config: dict[str, Any],
) -> str:
    """Write config, manifest, index.json and oci-layout; ``layers`` are (diffID, blob digest,
    blob size, media type), base first, blobs already in place. Returns the manifest digest."""
    os_name, arch, variant = host_platform()
    config: dict[str, Any] = {
        "architecture": arch,
        "os": os_name,
        "config": dict(extra_config),
        "rootfs": {"type": "layers", "diff_ids": [diff_id for diff_id, _, _, _ in layers]},
        "history": [{"created_by": "aufs export"} for _ in layers],
    }
    if variant:
        config["variant"] = variant
    config_digest, config_size = _write_blob(blobs, _json_bytes(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": media_type, "digest": blob_digest, "size": size}
            for _, blob_digest, size, media_type in layers
        ],
    }
    manifest_digest, manifest_size = _write_blob(blobs, _json_bytes(manifest))
    platform: dict[str, str] = {"architecture": arch, "os": os_name}
    if variant:
        platform["variant"] = variant
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": platform,
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    (staging / "index.json").write_bytes(_json_bytes(index))
    (staging / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest


def write_oci_layout(
    dest: str | os.PathLike[str],
    layer_tars: Sequence[bytes],
    *,
    compression: str = "gzip",
    ref: str = "latest",
    config: dict[str, Any] | None = None,
) -> str:
    """Pack in-memory layer tars (base first) as a new OCI image layout; return the manifest digest.

    For small images built in code (the demo, tests); real layers go through
    :func:`export_image`, which streams.
    """
    if compression not in _LAYER_TYPES:
        raise ValueError(f"compression must be one of {sorted(_LAYER_TYPES)}, not {compression!r}")
    dest_path = Path(os.fspath(dest))
    blobs = dest_path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    described = []
    for tar in layer_tars:
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        blob = tar
        if compression == "gzip":
            compressor = _gzip_zlib.compressobj(wbits=31)
            blob = compressor.compress(tar) + compressor.flush()
        digest, size = _write_blob(blobs, blob)
        described.append((diff_id, digest, size, _LAYER_TYPES[compression]))
    return _write_metadata(dest_path, blobs, described, ref, config or {})
