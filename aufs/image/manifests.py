"""Resolving an image source to one verified config and its ordered layer blobs.

Owns the reading of the image *metadata*: OCI ``index.json`` (with nested indexes / manifest
lists and platform selection), OCI and Docker v2 manifests, image configs, and the
``manifest.json`` of ``docker save``. Every JSON blob that has a declared digest is verified
before it is trusted; a ``docker save`` config is verified against the digest its file name
carries. The result, :class:`ResolvedImage`, lists each layer's blob name, declared blob digest
(when the format declares one) and diffID from the config: what the importer must verify.
"""
from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from dataclasses import dataclass
from typing import Any

from ..errors import DigestMismatch, ImageError
from .digests import parse_digest
from .sources import ImageSource

__all__ = ["LayerBlob", "ResolvedImage", "host_platform", "parse_platform", "resolve_image"]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
REF_ANNOTATIONS = ("org.opencontainers.image.ref.name", "io.containerd.image.name")
# Layer media types aufs can apply (compression is detected from content, not trusted from these).
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
_MAX_INDEX_DEPTH = 4

_MACHINE_TO_GOARCH = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True)
class LayerBlob:
    """One layer of the image, base first."""

    name: str  # file name inside the image source
    digest: str | None  # declared sha256 of the blob as stored (None: docker save, legacy name)
    size: int  # bytes of the blob as stored
    diff_id: str  # sha256 of the uncompressed tar, from the config


@dataclass(frozen=True)
class ResolvedImage:
    """The image chosen from a source: verified config and its layers."""

    format: str  # "oci" or "docker-save"
    manifest_digest: str | None
    config_digest: str
    config: dict[str, Any]
    layers: tuple[LayerBlob, ...]
    config_bytes: bytes = b""  # the config blob exactly as read (its sha256 is config_digest)
    manifest_bytes: bytes | None = None  # the manifest blob (None: legacy docker save)
    refs: tuple[str, ...] = ()  # the names the source gives the image (annotations, RepoTags)

    @property
    def platform(self) -> str:
        """``os/architecture[/variant]`` as the config declares it."""
        parts = [str(self.config.get("os", "?")), str(self.config.get("architecture", "?"))]
        if self.config.get("variant"):
            parts.append(str(self.config["variant"]))
        return "/".join(parts)


def host_platform() -> tuple[str, str, str | None]:
    """(os, architecture, variant) of this machine in OCI/Go terms, e.g. ("linux", "amd64", None)."""
    machine = _platform.machine().lower()
    arch, variant = _MACHINE_TO_GOARCH.get(machine, (machine, None))
    return ("linux", arch, variant)


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """``"linux/arm64"`` or ``"linux/arm/v7"`` -> (os, architecture, variant)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform must look like os/arch[/variant], e.g. linux/arm64: {text!r}")
    return (parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _load_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{what}: not valid JSON: {exc}") from exc


def _expect_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _expect_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ImageError(f"{what}: expected a JSON array, got {type(value).__name__}")
    return value


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest[len("sha256:"):]


def _read_verified_blob(source: ImageSource, descriptor: dict[str, Any], what: str) -> bytes:
    """Read a small blob named by a descriptor and check its size and digest."""
    digest = descriptor.get("digest")
    parse_digest(digest, what=f"{what} descriptor")
    assert isinstance(digest, str)
    data = source.read_json_bytes(_blob_name(digest))
    seen = "sha256:" + hashlib.sha256(data).hexdigest()
    if seen != digest:
        raise DigestMismatch(f"{source.description}: {what} {_blob_name(digest)} has sha256 {seen}, declared {digest}")
    size = descriptor.get("size")
    if isinstance(size, int) and size != len(data):
        raise DigestMismatch(f"{source.description}: {what} is {len(data)} bytes, declared {size}")
    return data


def _descriptor_platform(descriptor: dict[str, Any]) -> tuple[str, str, str | None] | None:
    plat = descriptor.get("platform")
    if not isinstance(plat, dict):
        return None
    variant = plat.get("variant")
    return (str(plat.get("os", "")), str(plat.get("architecture", "")), str(variant) if variant else None)


def _platform_text(plat: tuple[str, str, str | None]) -> str:
    return "/".join(p for p in plat if p)


def _matches(have: tuple[str, str, str | None], want: tuple[str, str, str | None]) -> bool:
    if have[0] != want[0] or have[1] != want[1]:
        return False
    # No variant asked for: any variant will do (arm64 images say v8 or nothing).
    return want[2] is None or have[2] is None or have[2] == want[2]


def _media_type(descriptor: dict[str, Any], data: bytes | None = None) -> str:
    media = descriptor.get("mediaType")
    return media if isinstance(media, str) else ""


def _collect_manifests(
    source: ImageSource, index: dict[str, Any], what: str, depth: int
) -> list[dict[str, Any]]:
    """Flatten an index into image-manifest descriptors (nested indexes expanded)."""
    if depth > _MAX_INDEX_DEPTH:
        raise ImageError(f"{source.description}: {what}: indexes nested too deep")
    found: list[dict[str, Any]] = []
    for i, entry in enumerate(_expect_list(index.get("manifests"), f"{what} manifests")):
        descriptor = _expect_dict(entry, f"{what} manifests[{i}]")
        media = _media_type(descriptor)
        if media in INDEX_TYPES:
            nested = _expect_dict(
                _load_json(_read_verified_blob(source, descriptor, f"{what} manifests[{i}]"), what),
                f"{what} manifests[{i}]",
            )
            found.extend(_collect_manifests(source, nested, f"{what} -> {descriptor['digest']}", depth + 1))
        elif media in MANIFEST_TYPES or media == "":
            found.append(descriptor)
        # anything else (attestations, signatures, artifacts) is not an image: skip it
    return found


def _refs_of(descriptor: dict[str, Any]) -> list[str]:
    annotations = descriptor.get("annotations")
    if not isinstance(annotations, dict):
        return []
    return [str(annotations[k]) for k in REF_ANNOTATIONS if k in annotations]


def _name_of(descriptor: dict[str, Any]) -> list[str]:
    """The name to record for an image: containerd's full name (``docker.io/library/debian:12``)
    when present, of which the OCI ref name (``12``) is only the tag; else the OCI ref name."""
    annotations = descriptor.get("annotations")
    if not isinstance(annotations, dict):
        return []
    for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
        if isinstance(annotations.get(key), str) and annotations[key]:
            return [annotations[key]]
    return []


def _names_leading_to(source: ImageSource, index: dict[str, Any], digest: Any) -> tuple[str, ...]:
    """The names of the top-level entries of ``index.json`` that are, or lead to, ``digest``."""
    names: list[str] = []
    for entry in index.get("manifests", []):
        if not isinstance(entry, dict):
            continue
        hit = entry.get("digest") == digest
        if not hit and _media_type(entry) in INDEX_TYPES:
            try:
                nested = _expect_dict(_load_json(_read_verified_blob(source, entry, "index"), "index"), "index")
                hit = any(d.get("digest") == digest for d in _collect_manifests(source, nested, "index", 1))
            except ImageError:
                hit = False  # a broken index that was not chosen does not name the image
        if hit:
            names.extend(n for n in _name_of(entry) if n not in names)
    return tuple(names)


def _choose(
    candidates: list[dict[str, Any]],
    platform: str | None,
    description: str,
) -> dict[str, Any]:
    if not candidates:
        raise ImageError(f"{description}: the image index lists no image manifest")
    want = parse_platform(platform) if platform else None
    with_platform = [c for c in candidates if _descriptor_platform(c) is not None]
    if with_platform:
        order = [want] if want else [host_platform(), ("linux", "amd64", None)]
        for wanted in order:
            for candidate in with_platform:
                have = _descriptor_platform(candidate)
                assert have is not None
                if _matches(have, wanted):
                    return candidate
        available = ", ".join(sorted({_platform_text(_descriptor_platform(c) or ("?", "?", None)) for c in with_platform}))
        asked = platform or f"{_platform_text(host_platform())} or linux/amd64"
        raise ImageError(f"{description}: no image for platform {asked}; available: {available}")
    distinct = {c.get("digest") for c in candidates}
    if len(distinct) > 1:
        refs = sorted({r for c in candidates for r in _refs_of(c)})
        raise ImageError(
            f"{description}: the layout holds {len(distinct)} images; choose one with ref= "
            f"(available: {', '.join(refs) or 'no names'})"
        )
    return candidates[0]


def _resolve_oci(source: ImageSource, platform: str | None, ref: str | None) -> ResolvedImage:
    what = f"{source.description}: index.json"
    index = _expect_dict(_load_json(source.read_json_bytes("index.json"), what), what)
    candidates = _collect_manifests(source, index, "index.json", 0)
    if ref is not None:
        top_level = [d for d in index.get("manifests", []) if isinstance(d, dict) and ref in _refs_of(d)]
        if not top_level:
            raise ImageError(f"{source.description}: no image named {ref!r} in index.json")
        candidates = []
        for i, descriptor in enumerate(top_level):
            if _media_type(descriptor) in INDEX_TYPES:
                nested = _expect_dict(_load_json(_read_verified_blob(source, descriptor, "index"), what), what)
                candidates.extend(_collect_manifests(source, nested, f"index.json[{ref}]", 1))
            else:
                candidates.append(descriptor)
    chosen = _choose(candidates, platform, source.description)
    manifest_digest = chosen.get("digest")
    manifest_bytes = _read_verified_blob(source, chosen, "manifest")
    manifest = _expect_dict(_load_json(manifest_bytes, "manifest"), f"manifest {manifest_digest}")
    if _media_type(manifest) in INDEX_TYPES or "manifests" in manifest:
        raise ImageError(f"{source.description}: manifest {manifest_digest} is an index, not an image manifest")
    config_desc = _expect_dict(manifest.get("config"), f"manifest {manifest_digest} config")
    config_digest = str(config_desc.get("digest"))
    config_bytes = _read_verified_blob(source, config_desc, "config")
    config = _expect_dict(_load_json(config_bytes, "config"), f"config {config_digest}")
    layer_descs = _expect_list(manifest.get("layers"), f"manifest {manifest_digest} layers")
    diff_ids = _diff_ids(config, config_digest)
    if len(diff_ids) != len(layer_descs):
        raise ImageError(
            f"{source.description}: manifest {manifest_digest} has {len(layer_descs)} layers "
            f"but its config lists {len(diff_ids)} diff_ids"
        )
    layers = []
    for i, (entry, diff_id) in enumerate(zip(layer_descs, diff_ids)):
        descriptor = _expect_dict(entry, f"manifest layers[{i}]")
        media = _media_type(descriptor)
        if media and media not in LAYER_TYPES:
            raise ImageError(f"{source.description}: layer {i} has unsupported media type {media!r}")
        digest = str(descriptor.get("digest"))
        parse_digest(digest, what=f"manifest layers[{i}]")
        size = descriptor.get("size")
        name = _blob_name(digest)
        if not source.exists(name):
            raise ImageError(f"{source.description}: layer {i} blob {name} is missing")
        actual = source.size(name)
        if isinstance(size, int) and size != actual:
            raise DigestMismatch(f"{source.description}: layer {i} blob {name} is {actual} bytes, declared {size}")
        layers.append(LayerBlob(name=name, digest=digest, size=actual, diff_id=diff_id))
    _check_platform(config, platform, source.description)
    refs = _names_leading_to(source, index, manifest_digest)
    return ResolvedImage("oci", str(manifest_digest), config_digest, config, tuple(layers),
                         config_bytes, manifest_bytes, refs)


def _diff_ids(config: dict[str, Any], config_digest: str) -> list[str]:
    rootfs = _expect_dict(config.get("rootfs"), f"config {config_digest} rootfs")
    diff_ids = _expect_list(rootfs.get("diff_ids"), f"config {config_digest} rootfs.diff_ids")
    for i, diff_id in enumerate(diff_ids):
        parse_digest(diff_id, what=f"config rootfs.diff_ids[{i}]")
    return [str(d) for d in diff_ids]


def _check_platform(config: dict[str, Any], platform: str | None, description: str) -> None:
    if platform is None:
        return
    want = parse_platform(platform)
    have = (str(config.get("os", "")), str(config.get("architecture", "")), config.get("variant") or None)
    if not _matches(have, want):
        raise ImageError(f"{description}: the image is for {_platform_text(have)}, not {platform}")


_LEGACY_CONFIG = re.compile(r"(?:.*/)?([0-9a-f]{64})(?:\.json)?\Z")


def _tag_matches(ref: str, tags: Any) -> bool:
    """``debian:12`` matches ``docker.io/library/debian:12`` (how skopeo and docker write tags)."""
    if not isinstance(tags, list):
        return False
    for tag in tags:
        if not isinstance(tag, str):
            continue
        short = tag
        for prefix in ("docker.io/library/", "docker.io/"):
            if short.startswith(prefix):
                short = short[len(prefix):]
                break
        if ref in (tag, short):
            return True
    return False


def _resolve_docker(source: ImageSource, platform: str | None, ref: str | None) -> ResolvedImage:
    what = f"{source.description}: manifest.json"
    entries = _expect_list(_load_json(source.read_json_bytes("manifest.json"), what), what)
    if not entries:
        raise ImageError(f"{what}: lists no image")
    if ref is not None:
        entries = [e for e in entries if isinstance(e, dict) and _tag_matches(ref, e.get("RepoTags"))]
        if not entries:
            raise ImageError(f"{what}: no image tagged {ref!r}")
    if len(entries) > 1:
        tags = sorted(str(t) for e in entries if isinstance(e, dict) for t in (e.get("RepoTags") or []))
        raise ImageError(f"{what}: holds {len(entries)} images; choose one with ref= ({', '.join(tags)})")
    entry = _expect_dict(entries[0], what)
    config_name = entry.get("Config")
    if not isinstance(config_name, str):
        raise ImageError(f"{what}: entry has no Config file name")
    match = _LEGACY_CONFIG.match(config_name)
    if match is None:
        raise ImageError(f"{what}: config file name {config_name!r} does not carry its sha256")
    config_digest = "sha256:" + match.group(1)
    data = source.read_json_bytes(config_name)
    seen = "sha256:" + hashlib.sha256(data).hexdigest()
    if seen != config_digest:
        raise DigestMismatch(f"{source.description}: config {config_name} has sha256 {seen}, its name says {config_digest}")
    config = _expect_dict(_load_json(data, config_name), config_name)
    diff_ids = _diff_ids(config, config_digest)
    names = _expect_list(entry.get("Layers"), f"{what} Layers")
    if len(names) != len(diff_ids):
        raise ImageError(f"{what}: {len(names)} layer files but the config lists {len(diff_ids)} diff_ids")
    layers = []
    for i, (name, diff_id) in enumerate(zip(names, diff_ids)):
        if not isinstance(name, str):
            raise ImageError(f"{what}: Layers[{i}] is not a file name")
        if not source.exists(name):
            raise ImageError(f"{source.description}: layer {i} file {name} is missing")
        blob = _LEGACY_CONFIG.match(name)
        # Only content-addressed names ("blobs/sha256/<hex>") declare a blob digest; the legacy
        # "<id>/layer.tar" names are random ids, checked through the diffID alone.
        digest = "sha256:" + blob.group(1) if blob is not None and name.startswith("blobs/sha256/") else None
        layers.append(LayerBlob(name=name, digest=digest, size=source.size(name), diff_id=diff_id))
    _check_platform(config, platform, source.description)
    repo_tags = entry.get("RepoTags")
    refs = tuple(str(t) for t in repo_tags if isinstance(t, str)) if isinstance(repo_tags, list) else ()
    return ResolvedImage("docker-save", None, config_digest, config, tuple(layers), data, None, refs)


def resolve_image(source: ImageSource, *, platform: str | None = None, ref: str | None = None) -> ResolvedImage:
    """Pick the image in ``source`` (by ``ref`` and platform) and verify its metadata.

    OCI layouts (``index.json``) win over ``manifest.json`` when a tarball has both (Docker 25+
    writes both). Raises ImageError for anything malformed, DigestMismatch for wrong digests.
    """
    if platform is not None:
        parse_platform(platform)
    if source.exists("index.json"):
        return _resolve_oci(source, platform, ref)
    if source.exists("manifest.json"):
        return _resolve_docker(source, platform, ref)
    raise ImageError(
        f"{source.description}: neither an OCI image layout (index.json) nor a docker save image (manifest.json)"
    )
