"""A tiny runnable image for the engine tests, built here from Debian's static busybox.

Two layers: a base holding ``/bin/busybox`` and its applet links, and a second layer that adds
``/etc/greeting`` and deletes ``/etc/obsolete`` (a whiteout), so an import exercises parents
and deletions. Written as an OCI image layout by hand (independent of aufs's own exporter),
then packed by skopeo as an OCI archive or a docker-archive, as ``ctr images import`` takes them.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
GREETING = b"hello from an aufs layer\n"
APPLETS = ("sh", "cat", "echo", "rm", "ls", "true", "sleep", "mkdir", "touch", "test")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _add(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o644,
         kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 1_600_000_000
    info.type = kind
    info.mode = mode
    info.linkname = link
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _tar(build) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return buf.getvalue()


def _base_layer(tar: tarfile.TarFile) -> None:
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "run"):
        _add(tar, d, kind=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
    with open(BUSYBOX, "rb") as f:
        _add(tar, "bin/busybox", data=f.read(), mode=0o755)
    for applet in APPLETS:
        _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
    _add(tar, "etc/obsolete", data=b"deleted by the second layer\n")
    _add(tar, "etc/base-only", data=b"from the base layer\n")


def _top_layer(tar: tarfile.TarFile) -> None:
    _add(tar, "etc", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tar, "etc/greeting", data=GREETING)
    _add(tar, "etc/.wh.obsolete", data=b"")


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return "sha256:" + digest


def write_oci_layout(layout: Path, ref: str = "latest") -> Path:
    """Write the image as an OCI layout directory ``layout``; return it."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layers = [_tar(_base_layer), _tar(_top_layer)]
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _blob(layout, config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": _blob(layout, t), "size": len(t)} for t in layers],
    }).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": _blob(layout, manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": ref},
    }]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def oci_archive(workdir: Path, name: str) -> Path:
    """The image as an OCI archive made by skopeo (``oci-archive:``), named ``name``."""
    layout = workdir / "oci-layout"
    if not layout.exists():
        write_oci_layout(layout)
    archive = workdir / "image-oci.tar"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:latest", f"oci-archive:{archive}:{name}"],
                   check=True, capture_output=True)
    return archive


def docker_archive(workdir: Path, name: str) -> Path:
    """The image as a docker-archive (``docker save`` format) made by skopeo, tagged ``name``."""
    layout = workdir / "oci-layout"
    if not layout.exists():
        write_oci_layout(layout)
    archive = workdir / "image-docker.tar"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:latest", f"docker-archive:{archive}:{name}"],
                   check=True, capture_output=True)
    return archive
