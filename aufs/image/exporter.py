"""``export_image``: a layer chain of the store written out as an OCI image layout.

Owns the writing side of images: each layer of the chain becomes one blob holding the layer's
``diff`` tar (uncompressed by default, or gzip), hashed while it is written; then the config,
the manifest, ``index.json`` and ``oci-layout``. The config is the recorded image's own
(:mod:`aufs.image.records`) when the chain holds an imported image, else a new one for this
machine's platform; either way every history entry aufs writes has ``created`` (umoci and
others require it). Those stamps are each layer's last change in the store (or a fixed time
the caller gives), never the clock, so exporting an unchanged chain twice gives the same
manifest digest (with uncompressed layers). The layout is built under a temporary name
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
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from ..errors import ImageError, ImageNotFound, LayerNotFound
from ..layout import is_valid_layer_id
from . import records
from .manifests import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, host_platform, parse_platform

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


def _image_of_chain(driver: Driver, chain: list[str], image: str | None) -> records.ImageRecord | None:
    """The recorded image whose layers are the longest prefix of ``chain`` (None: no image)."""
    if image is not None:
        record = records.find_image(driver, image)
        if list(record.layers) != chain[: len(record.layers)]:
            raise ImageError(f"image {image!r} ({record.short_id}) is not below layer {chain[-1]}: "
                             "its layers are not the base of the chain")
        return record
    best: list[records.ImageRecord] = []
    for record in records.list_images(driver):
        if list(record.layers) == chain[: len(record.layers)]:
            if best and len(record.layers) < len(best[0].layers):
                continue
            if best and len(record.layers) > len(best[0].layers):
                best = []
            best.append(record)
    if len(best) > 1:
        names = ", ".join(f"{r.refs[0] if r.refs else r.short_id}" for r in best)
        raise ImageError(f"layer {best[0].top} is the top of several images ({names}): say which with "
                         "image= (aufs export --image NAME), or export an image by its name")
    return best[0] if best else None


def _resolve(
    driver: Driver, layer_id_or_ref: str, image: str | None
) -> tuple[list[str], records.ImageRecord | None]:
    """The chain to export and the recorded image it extends (if any)."""
    if is_valid_layer_id(layer_id_or_ref) and driver.exists(layer_id_or_ref):
        chain = _chain(driver, layer_id_or_ref)
        return chain, _image_of_chain(driver, chain, image)
    try:
        record = records.find_image(driver, layer_id_or_ref)
    except ImageNotFound:
        raise LayerNotFound(f"no layer or image named {layer_id_or_ref!r} in {driver.home}",
                            layer_id=layer_id_or_ref) from None
    if record.missing_layers:
        raise LayerNotFound(f"image {layer_id_or_ref!r} ({record.short_id}) cannot be exported: its layer "
                            f"{record.missing_layers[0]} was removed from the store; import it again",
                            layer_id=record.missing_layers[0])
    return list(record.layers), _image_of_chain(driver, list(record.layers), image or record.id)


def _created_stamp(created: str | datetime | None) -> str | None:
    """The time to stamp new history entries with, if fixed: ``created``, else $SOURCE_DATE_EPOCH."""
    if isinstance(created, datetime):
        if created.tzinfo is None:
            raise ValueError("created must be a timezone-aware datetime")
        return records.rfc3339(created.timestamp())
    if isinstance(created, str):
        try:
            parsed = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"created must be an RFC 3339 time, e.g. 2024-05-01T12:00:00Z: {created!r}") from None
        return _created_stamp(parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc))
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return records.rfc3339(int(epoch))
        except (ValueError, OverflowError, OSError):
            raise ValueError(f"SOURCE_DATE_EPOCH must be a number of seconds: {epoch!r}") from None
    return None


def _last_change(path: str) -> float:
    """The newest inode change time in the tree at ``path``: when the layer's content last
    changed in this store. ctime, unlike mtime, cannot come from an archive, and an unchanged
    layer gives the same answer every time, which keeps exports deterministic."""
    newest = os.lstat(path).st_ctime
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_ctime)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except FileNotFoundError:  # deleted meanwhile through a mount: that change is newer still
            continue
    return newest


def export_image(
    driver: Driver,
    layer_id_or_ref: str,
    dest: str | os.PathLike[str],
    *,
    compression: str = "none",
    ref: str = "latest",
    config: dict[str, Any] | None = None,
    image: str | None = None,
    created: str | datetime | None = None,
    workers: int | None = None,
) -> str:
    """Write a layer chain as an OCI image layout at ``dest``; return the manifest digest
    (``"sha256:<hex>"``), which is also the image's content address.

    :param layer_id_or_ref: a layer id (the chain ending there is exported), or the name or
        id of an imported image (see :func:`aufs.find_image`; its layers are exported). A
        layer id wins when both exist.
    :param dest: a path that does not exist yet, or an empty directory.
    :param compression: ``"none"`` (layer blobs are the plain diff tars; fastest, and
        deterministic) or ``"gzip"``.
    :param ref: the name recorded in ``index.json`` (``org.opencontainers.image.ref.name``),
        e.g. for ``umoci unpack --image dest:latest`` or ``skopeo copy oci:dest:latest ...``.
    :param config: extra fields for the image config's ``config`` section (Env, Cmd,
        WorkingDir, ...), over the imported image's own.
    :param image: the imported image the chain extends (name or id); default: the recorded
        image whose layers are the longest base of the chain.
    :param created: the time for new history entries (RFC 3339 string or aware datetime);
        default ``$SOURCE_DATE_EPOCH`` if set, else each layer's last change in the store.

    The image has one layer per layer of the chain, base first; each blob is that layer's
    ``driver.diff``. When the chain holds an imported image, its config is the image's own
    (architecture, os, variant, env, cmd, labels, history entries as they were), with
    ``rootfs.diff_ids`` of the exported layers, one stamped history entry (``created``,
    ``created_by``) per layer above the image, and ``created`` of the newest one; exported
    unchanged, it is written byte for byte as imported whenever the diff_ids come out the
    same (an image aufs exported before, say). A chain with no recorded image gets this
    machine's platform and one stamped history entry per layer. Exporting an unchanged chain
    twice gives the same manifest digest (with uncompressed layers).

    Raises :class:`aufs.LayerNotFound` for a name that is neither a layer nor an image (or an
    image whose layers were removed), :class:`aufs.ImageError` when the chain's image is
    ambiguous or ``image`` is not below the chain, ``ValueError`` for a bad argument,
    ``FileExistsError`` if ``dest`` exists and is not an empty directory.
    """
    if compression not in _LAYER_TYPES:
        raise ValueError(f"compression must be one of {sorted(_LAYER_TYPES)}, not {compression!r}")
    fixed_stamp = _created_stamp(created)
    dest_path = Path(os.fspath(dest))
    if dest_path.exists() and not (dest_path.is_dir() and not any(dest_path.iterdir())):
        raise FileExistsError(f"{dest_path} exists and is not an empty directory")
    chain, record = _resolve(driver, layer_id_or_ref, image)
    base = len(record.layers) if record is not None else 0
    staging = dest_path.parent / f".{dest_path.name}.tmp-{uuid.uuid4().hex[:8]}"
    blobs = staging / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    try:
        # stamps for the layers above the image; for all of them when history must be made up
        stamp_from = 0 if record is not None and base < len(chain) and not _has_history(record) else base
        layers = _write_layers(driver, chain, blobs, compression, workers, stamp_from, fixed_stamp)
        described = [(diff_id, digest, size, _LAYER_TYPES[compression]) for diff_id, digest, size, _ in layers]
        if record is None:
            entries = [_history_entry(stamp, layer_id) for (_, _, _, stamp), layer_id in zip(layers, chain)]
            config_bytes = _json_bytes(_new_config(described, entries, config or {}))
            platform = host_platform()
        else:
            config_bytes = _image_config(record, chain, layers, config)
            platform = parse_platform(record.platform)
        digest = _write_metadata(staging, blobs, described, ref, config_bytes, platform)
        if dest_path.exists():
            dest_path.rmdir()  # empty, checked above; rename(2) cannot replace it atomically anyway
        os.rename(staging, dest_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return digest


def _has_history(record: records.ImageRecord) -> bool:
    return bool(record.config_json.get("history"))


def _history_entry(stamp: str | None, layer_id: str) -> dict[str, str]:
    assert stamp is not None
    return {"created": stamp, "created_by": f"aufs export (layer {layer_id})"}


def _new_config(
    layers: Sequence[tuple[str, str, int, str]], history: list[dict[str, str]], extra_config: dict[str, Any]
) -> dict[str, Any]:
    """The config of a chain with no recorded image: this machine's platform, stamped history."""
    os_name, arch, variant = host_platform()
    config: dict[str, Any] = {
        "architecture": arch,
        "os": os_name,
        "config": dict(extra_config),
        "rootfs": {"type": "layers", "diff_ids": [diff_id for diff_id, _, _, _ in layers]},
        "history": history,
    }
    if history:
        config["created"] = max(entry["created"] for entry in history)
    if variant:
        config["variant"] = variant
    return config


def _image_config(
    record: records.ImageRecord,
    chain: list[str],
    layers: list[tuple[str, str, int, str | None]],
    extra_config: dict[str, Any] | None,
) -> bytes:
    """The recorded image's config for ``chain``: diff_ids of the export, new layers stamped."""
    original = record.config_json
    config = record.config_json
    base = len(record.layers)
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id for diff_id, _, _, _ in layers]}
    if extra_config:
        section = config.get("config")
        config["config"] = {**(section if isinstance(section, dict) else {}), **extra_config}
    if base < len(chain):
        history = config.get("history") if isinstance(config.get("history"), list) else []
        if not history:
            # The image recorded no history: one entry per imported layer keeps history and
            # layers in step for the tools that pair them (docker history, buildah).
            history = [
                {"created": original.get("created") or stamp, "created_by": "",
                 "comment": "imported layer; the image recorded no history"}
                for _, _, _, stamp in layers[:base]
            ]
        new = [_history_entry(stamp, layer_id) for (_, _, _, stamp), layer_id in zip(layers[base:], chain[base:])]
        config["history"] = history + new
        config["created"] = max(entry["created"] for entry in new)
    if config == original:
        return record.config  # nothing changed: the exact bytes, so the digest is the image's id
    return json.dumps(config, separators=(",", ":")).encode()


def _write_layers(
    driver: Driver,
    chain: list[str],
    blobs: Path,
    compression: str,
    workers: int | None,
    stamp_from: int,
    fixed_stamp: str | None,
) -> list[tuple[str, str, int, str | None]]:
    """Write each layer's blob; return (diffID, blob digest, blob size, created stamp or None)
    per layer, base first. Layers from ``stamp_from`` up get a stamp."""

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

    def stamp(index: int) -> str | None:
        if index < stamp_from:
            return None
        return fixed_stamp or records.rfc3339(_last_change(driver.diff_dir(chain[index])))

    count = workers or max(1, min(len(chain), (os.cpu_count() or 2), 8))
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="aufs-export") as pool:
        # the walks are short and mostly syscalls: they overlap with the diffs
        stamps = [pool.submit(stamp, index) for index in range(len(chain))]
        blobs_written = list(pool.map(one, range(len(chain))))
        return [(*written, future.result()) for written, future in zip(blobs_written, stamps)]


def _write_metadata(
    staging: Path,
    blobs: Path,
    layers: Sequence[tuple[str, str, int, str]],
    ref: str,
    config_bytes: bytes,
    platform: tuple[str, str, str | None],
) -> str:
    """Write config, manifest, index.json and oci-layout; ``layers`` are (diffID, blob digest,
    blob size, media type), base first, blobs already in place. Returns the manifest digest."""
    os_name, arch, variant = platform
    config_digest, config_size = _write_blob(blobs, config_bytes)
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
    described: dict[str, str] = {"architecture": arch, "os": os_name}
    if variant:
        described["variant"] = variant
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": described,
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
    # fixed stamps: the same tars give the same image
    history = [{"created": "1970-01-01T00:00:00Z", "created_by": "aufs write_oci_layout"} for _ in described]
    config_bytes = _json_bytes(_new_config(described, history, config or {}))
    return _write_metadata(dest_path, blobs, described, ref, config_bytes, host_platform())
