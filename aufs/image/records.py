"""Image records: what an import knew about the image, kept beside its layers.

Layers alone do not make an image: its config (architecture, env, command, history) and its
names live in the image's metadata, which an import reads and verifies. This module keeps
that metadata, one file per image, so that :func:`aufs.export_image` can write the image back
out as it was (plus any new layers) and ``aufs images`` / ``aufs rmi`` can list and remove
images by name.

::

    HOME/images/HEX.json          one image: HEX is its id, the sha256 of its config blob
    HOME/images/.lock             taken while a record is written or removed
    HOME/images/.HEX.OWNER.tmp    a record being written (renamed over HEX.json when complete)

An image's id is the digest of its config blob, as Docker's image id is: the same image read
from an OCI layout, a ``docker save`` tarball or a differently compressed copy is one record.
A record holds the exact config bytes (so an unchanged re-export is byte-identical), the
manifest it came with, its platform, its layer ids base first, and its names (*refs*: OCI
``org.opencontainers.image.ref.name`` / ``io.containerd.image.name`` annotations, Docker
``RepoTags``). A ref names one image at a time: importing another image under the same name
moves the name, as ``docker load`` does; the old image stays, unnamed.

Crash safety: a record is written under a temporary name and renamed into place, and only
after its import finished, so a killed import leaves no record (and no layer: see
:mod:`aufs.image.journal`); temporaries of dead processes are swept by the next write.
Readers take no lock (a record appears or changes by one rename), so listing works on a
read-only store.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from .. import locks
from ..durable import fsync_directory, replace_file
from ..errors import ImageNotFound, LayerInUse, LayerNotFound, StoreLocked, StoreReadOnly
from ..layout import Layout
from ..owners import ProcessToken

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Driver

__all__ = [
    "ImageRecord",
    "RemovedImage",
    "check_images",
    "find_image",
    "list_images",
    "remove_image",
    "save_record",
]

_RECORD_VERSION = 1


@dataclass(frozen=True)
class ImageRecord:
    """One imported image, as :func:`list_images` returns it.

    ``id`` is ``"sha256:<hex>"`` of the config blob (Docker's image id); ``refs`` the names it
    was imported under, oldest first; ``platform`` ``"os/arch[/variant]"`` from its config;
    ``layers`` its layer ids, base first (``top`` is the last); ``config`` and ``manifest``
    the exact blobs read at import (``manifest`` is None for a legacy ``docker save``, which
    has none); ``imported`` when it was first imported (RFC 3339, UTC); ``missing_layers``
    the layers of ``layers`` no longer in the store (removed with ``Driver.remove``): such a
    record cannot be exported, and ``aufs check`` reports it as ``dangling-image``.
    """

    id: str
    refs: tuple[str, ...]
    platform: str
    layers: tuple[str, ...]
    config: bytes = field(repr=False)
    manifest: bytes | None = field(repr=False)
    manifest_digest: str | None
    format: str
    imported: str
    missing_layers: tuple[str, ...] = ()

    @property
    def top(self) -> str:
        """The image's top layer id (a ``Driver.create`` parent for a writable layer over it)."""
        return self.layers[-1]

    @property
    def config_json(self) -> dict[str, Any]:
        """The image config, parsed (a new dict on every call)."""
        value = json.loads(self.config)
        assert isinstance(value, dict)
        return value

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the id, as ``docker images`` shows it."""
        return self.id[len("sha256:"):][:12]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no blobs): what ``aufs images --json`` prints."""
        config = self.config_json
        return {
            "id": self.id,
            "refs": list(self.refs),
            "platform": self.platform,
            "layers": list(self.layers),
            "top": self.top,
            "manifest_digest": self.manifest_digest,
            "format": self.format,
            "imported": self.imported,
            "created": config.get("created"),
            "missing_layers": list(self.missing_layers),
        }


@dataclass(frozen=True)
class RemovedImage:
    """What :func:`remove_image` did: ``untagged`` names removed; ``deleted`` whether the
    image's record went (its last name, or removal by id); ``removed_layers`` layer ids
    deleted, top first; ``kept_layers`` (layer id, reason) for each layer that stayed."""

    image: ImageRecord
    untagged: tuple[str, ...]
    deleted: bool
    removed_layers: tuple[str, ...] = ()
    kept_layers: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.image.id,
            "untagged": list(self.untagged),
            "deleted": self.deleted,
            "removed_layers": list(self.removed_layers),
            "kept_layers": [{"id": layer_id, "reason": reason} for layer_id, reason in self.kept_layers],
        }


def utc_now() -> str:
    """The current time in RFC 3339, UTC, whole seconds (``2024-05-01T12:00:00Z``)."""
    return rfc3339(datetime.now(timezone.utc).timestamp())


def rfc3339(timestamp: float) -> str:
    """A POSIX timestamp in RFC 3339, UTC, whole seconds."""
    return datetime.fromtimestamp(int(timestamp), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ the files


def _hex(image_id: str) -> str:
    return image_id[len("sha256:"):] if image_id.startswith("sha256:") else image_id  # noqa: FURB188 - 3.9


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes | None:
    return None if text is None else base64.b64decode(str(text), validate=True)


def _encode(record: ImageRecord) -> bytes:
    return json.dumps(
        {
            "version": _RECORD_VERSION,
            "id": record.id,
            "refs": list(record.refs),
            "platform": record.platform,
            "layers": list(record.layers),
            "config": _b64(record.config),
            "manifest": _b64(record.manifest),
            "manifest_digest": record.manifest_digest,
            "format": record.format,
            "imported": record.imported,
        },
        indent=1,
    ).encode()


def _decode(data: bytes, path: str) -> ImageRecord:
    """Parse a record file; ValueError (naming ``path``) if it is not one of ours."""
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != _RECORD_VERSION:
            raise ValueError("not an image record of this version")
        config = _unb64(raw["config"])
        assert config is not None
        record = ImageRecord(
            id=str(raw["id"]),
            refs=tuple(str(r) for r in raw["refs"]),
            platform=str(raw["platform"]),
            layers=tuple(str(i) for i in raw["layers"]),
            config=config,
            manifest=_unb64(raw.get("manifest")),
            manifest_digest=raw.get("manifest_digest"),
            format=str(raw.get("format", "")),
            imported=str(raw.get("imported", "")),
        )
        if "sha256:" + hashlib.sha256(config).hexdigest() != record.id or not record.layers:
            raise ValueError("its config does not match its id, or it lists no layers")
    except (ValueError, KeyError, TypeError, AssertionError, binascii.Error) as exc:
        raise ValueError(f"{path}: unreadable image record: {exc}") from exc
    return record


def _record_files(layout: Layout) -> list[str]:
    try:
        names = os.listdir(layout.images_dir)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.endswith(".json") and not name.startswith("."))


def _read_all(layout: Layout) -> tuple[list[ImageRecord], list[tuple[str, str]]]:
    """(records, [(path, problem)] of files that are not readable records)."""
    records: list[ImageRecord] = []
    broken: list[tuple[str, str]] = []
    for name in _record_files(layout):
        path = layout.image_record(name[: -len(".json")])
        try:
            with open(path, "rb") as f:
                records.append(_decode(f.read(), path))
        except FileNotFoundError:
            continue  # removed since the listing
        except ValueError as exc:
            broken.append((path, str(exc)))
    return records, broken


def _write(layout: Layout, record: ImageRecord) -> None:
    """Write ``record`` durably: a temporary name, fsync, rename (caller holds the lock)."""
    replace_file(layout.image_record(_hex(record.id)), _encode(record),
                 f"{layout.images_dir}/.{_hex(record.id)}.{ProcessToken.current()}.tmp", mode=0o644)


def _delete(layout: Layout, record: ImageRecord) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(layout.image_record(_hex(record.id)))
    fsync_directory(layout.images_dir)


def _dead_temporaries(layout: Layout) -> list[str]:
    """Paths of record temporaries whose writer is dead."""
    try:
        names = os.listdir(layout.images_dir)
    except FileNotFoundError:
        return []
    dead = []
    for name in sorted(names):
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        parts = name.split(".")
        owner = ProcessToken.parse(parts[2]) if len(parts) == 4 else None
        if owner is None or not owner.alive():
            dead.append(f"{layout.images_dir}/{name}")
    return dead


@contextlib.contextmanager
def _locked(driver: Driver, action: str) -> Iterator[None]:
    """Hold the records lock to ``action``; sweep the temporaries of dead writers first."""
    if driver.read_only:
        raise StoreReadOnly(f"cannot {action}: the store {driver.home} is on a read-only filesystem",
                            path=str(driver.home))
    layout = driver.layout
    os.makedirs(layout.images_dir, mode=0o700, exist_ok=True)
    with locks.hold(layout.images_lock):
        for path in _dead_temporaries(layout):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        yield


# ------------------------------------------------------------------ names


def _short_name(ref: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def _ref_matches(asked: str, stored: str) -> bool:
    """``debian`` matches ``debian:latest``, ``debian:12`` matches ``docker.io/library/debian:12``."""
    if asked == stored:
        return True
    short_asked, short_stored = _short_name(asked), _short_name(stored)
    if short_asked == short_stored:
        return True
    untagged = "@" not in short_asked and ":" not in short_asked.rsplit("/", 1)[-1]
    return untagged and short_asked + ":latest" == short_stored


def _is_id_prefix(text: str) -> bool:
    hex_part = _hex(text)
    return 4 <= len(hex_part) <= 64 and all(c in "0123456789abcdef" for c in hex_part)


def _match(records: list[ImageRecord], ref: str) -> tuple[ImageRecord | None, bool]:
    """(the record ``ref`` names, whether it was named by id); raises ImageNotFound if ambiguous."""
    by_name = [r for r in records if any(stored == ref for stored in r.refs)]
    if not by_name:
        by_name = [r for r in records if any(_ref_matches(ref, stored) for stored in r.refs)]
    if len(by_name) == 1:
        return by_name[0], False
    if len(by_name) > 1:
        raise ImageNotFound(f"the name {ref!r} matches several images: "
                            + ", ".join(sorted(f"{r.short_id} ({', '.join(r.refs)})" for r in by_name)))
    if _is_id_prefix(ref):
        by_id = [r for r in records if _hex(r.id).startswith(_hex(ref))]
        if len(by_id) > 1:
            raise ImageNotFound(f"the image id prefix {ref!r} is ambiguous: "
                                + ", ".join(sorted(r.short_id for r in by_id)))
        if by_id:
            return by_id[0], True
    return None, False


# ------------------------------------------------------------------ public functions


def list_images(driver: Driver) -> list[ImageRecord]:
    """The images imported into ``driver``'s store, sorted by first name (unnamed ones last).

    Each record's ``missing_layers`` lists its layers that were removed since (see
    :class:`ImageRecord`). Takes no lock; works on a read-only store. Files in ``images/``
    that are not readable records are skipped here and reported by ``aufs check``.
    """
    layout = driver.layout
    records, _ = _read_all(layout)
    present = set(driver.layers())
    out = [replace(r, missing_layers=tuple(i for i in r.layers if i not in present)) for r in records]
    return sorted(out, key=lambda r: (not r.refs, r.refs[0] if r.refs else "", r.id))


def find_image(driver: Driver, ref: str) -> ImageRecord:
    """The image named ``ref``: a name it was imported under (``debian:12`` also matches
    ``docker.io/library/debian:12``, ``debian`` matches ``debian:latest``), or its id
    (``sha256:<hex>`` or a unique prefix of at least 4 hex digits).

    Raises :class:`aufs.ImageNotFound` (a ``LookupError``) if no image or several match.
    """
    record, _ = _match(list_images(driver), ref)
    if record is None:
        raise ImageNotFound(f"no image named {ref!r} in {driver.home} (see `aufs images`)")
    return record


def save_record(driver: Driver, record: ImageRecord) -> ImageRecord:
    """Record an imported image (the importer's last step); return the record as stored.

    An image already recorded keeps its record and first-import time and gains the new
    names; each of ``record.refs`` is taken from any other image that had it. Raises
    :class:`aufs.LayerNotFound` if one of the image's layers is not in the store (removed
    while the import finished): the caller imports again.
    """
    layout = driver.layout
    with _locked(driver, f"record image {record.id}"):
        missing = [layer_id for layer_id in record.layers if not driver.exists(layer_id)]
        if missing:
            raise LayerNotFound(f"layer {missing[0]} of image {record.id} was removed during the import",
                                layer_id=missing[0])
        records, _ = _read_all(layout)
        stored = record
        for other in records:
            if other.id == record.id:
                stored = replace(other, refs=other.refs + tuple(r for r in record.refs if r not in other.refs),
                                 layers=record.layers, platform=record.platform)
            elif any(r in other.refs for r in record.refs):
                _write(layout, replace(other, refs=tuple(r for r in other.refs if r not in record.refs)))
        _write(layout, stored)
        return stored


def remove_image(driver: Driver, ref: str, *, keep_layers: bool = False) -> RemovedImage:
    """Remove the image ``ref`` names, as ``docker rmi`` does.

    Given one of several names, only that name goes (``untagged``). Given its last name or
    its id, the record goes, and then its layers, top first, unless ``keep_layers``. A layer
    stays when another image uses it, when it is mounted or held by a live process, or when
    it has a child layer that is not the image's (a container's writable layer, say); the
    layers below it stay with it, and :attr:`RemovedImage.kept_layers` says why.

    Raises :class:`aufs.ImageNotFound`, :class:`aufs.StoreReadOnly`. Takes the records lock,
    and the store's locks for each layer removed.
    """
    layout = driver.layout
    with _locked(driver, f"remove image {ref!r}"):
        records, _ = _read_all(layout)
        record, by_id = _match(records, ref)
        if record is None:
            raise ImageNotFound(f"no image named {ref!r} in {driver.home} (see `aufs images`)")
        if not by_id:
            name = next((r for r in record.refs if r == ref), None) or next(
                r for r in record.refs if _ref_matches(ref, r))
            if len(record.refs) > 1:
                _write(layout, replace(record, refs=tuple(r for r in record.refs if r != name)))
                return RemovedImage(record, (name,), False)
        _delete(layout, record)
        result = RemovedImage(record, record.refs, True)
        if keep_layers:
            return result
        others = [r for r in records if r.id != record.id]
        removed, kept = _remove_layers(driver, record, others)
        return replace(result, removed_layers=tuple(removed), kept_layers=tuple(kept))


def _remove_layers(
    driver: Driver, record: ImageRecord, others: list[ImageRecord]
) -> tuple[list[str], list[tuple[str, str]]]:
    removed: list[str] = []
    kept: list[tuple[str, str]] = []
    used_by: dict[str, ImageRecord] = {}
    for other in others:
        for layer_id in other.layers:
            used_by.setdefault(layer_id, other)
    children: dict[str, list[str]] = {}
    for layer_id in driver.layers():
        try:
            children.setdefault(driver.parent(layer_id) or "", []).append(layer_id)
        except LayerNotFound:
            continue  # removed meanwhile
    layers = list(reversed(record.layers))
    for index, layer_id in enumerate(layers):
        reason = None
        if not driver.exists(layer_id):
            continue  # removed by hand already
        if layer_id in used_by:
            user = used_by[layer_id]
            reason = f"used by image {user.refs[0] if user.refs else user.short_id}"
        elif driver.is_mounted(layer_id):
            reason = "mounted (aufs umount it, or put() it, first)"
        else:
            # (a child created since the listing makes remove raise LayerInUse: kept too)
            kids = sorted(set(children.get(layer_id, ())) - set(removed))
            if kids:
                reason = f"parent of layer {kids[0]}" + (f" and {len(kids) - 1} more" if len(kids) > 1 else "")
            else:
                try:
                    driver.remove(layer_id)
                    removed.append(layer_id)
                    continue
                except LayerInUse as exc:
                    reason = f"in use: {exc}"
        kept.append((layer_id, reason))
        kept.extend((below, f"below kept layer {layer_id}") for below in layers[index + 1:] if driver.exists(below))
        break
    return removed, kept


def check_images(
    layout: Layout,
    layers: set[str],
    found: Callable[[str, str, str, str | None, Callable[[], None] | None], None],
) -> None:
    """The image records' part of ``aufs check`` (``layers``: the ids of the store's layers).

    Reports through ``found(kind, path, detail, layer_id, fix)``: ``dangling-image``, a record
    naming a layer that is not in ``layers`` (fix: drop the record; the image must be imported
    again), ``corrupt-image-record``, a file in ``images/`` that is no readable record (fix:
    delete it), and ``leftover-temporary``, a record half written by a dead process (fix:
    delete it).

    The caller holds the store lock, and ``remove_image`` takes the records lock before the
    store lock: so the records lock is only tried here, never waited for. When another
    process holds it (or the store is read-only) the findings come without a fix.
    """
    if not os.path.isdir(layout.images_dir):
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locks.hold(layout.images_lock, timeout=0))
            can_fix = True
        except (StoreLocked, OSError):
            can_fix = False
        records, broken = _read_all(layout)
        for record in records:
            missing = [i for i in record.layers if i not in layers]
            if missing:
                names = ", ".join(record.refs) or "no name"
                found("dangling-image", layout.image_record(_hex(record.id)),
                      f"image {record.short_id} ({names}) names {len(missing)} layer(s) no longer in the "
                      f"store, e.g. {missing[0]}; import it again", missing[0],
                      (lambda r=record: _delete(layout, r)) if can_fix else None)  # type: ignore[misc]
        for path, problem in broken:
            found("corrupt-image-record", path, problem, None, (lambda p=path: _unlink(p)) if can_fix else None)  # type: ignore[misc]
        for path in _dead_temporaries(layout):
            found("leftover-temporary", path, "image record half written by a dead process", None,
                  (lambda p=path: _unlink(p)) if can_fix else None)  # type: ignore[misc]


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
