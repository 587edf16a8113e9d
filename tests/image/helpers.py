"""Test helpers for images: layer tars and OCI layouts built by hand, tree snapshots, tools.

The layouts written here are deliberately independent of aufs's own writer, so a bug in
``aufs.image.exporter`` cannot hide a bug in the importer.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """Run a real tool, failing the test with its stderr if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc


def layer_tar(entries: Iterable[tuple[str, Any]]) -> bytes:
    """A layer tar from (name, value): bytes = file, None = directory, ("sym", target), ("link", target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, value in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            data: bytes | None = None
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif isinstance(value, tuple) and value[0] == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, value[1]
            elif isinstance(value, tuple) and value[0] == "link":
                info.type, info.linkname = tarfile.LNKTYPE, value[1]
            else:
                data = bytes(value)
                info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    digest = sha(data)
    (blobs / digest[7:]).write_bytes(data)
    return digest, len(data)


def write_layout(
    layout: Path,
    tars: Sequence[bytes],
    *,
    compress: str = "gzip",
    arch: str = "amd64",
    diff_ids: list[str] | None = None,
    extra_index: Sequence[dict[str, Any]] = (),
    ref: str | None = "latest",
    platform_in_index: bool = False,
) -> dict[str, Any]:
    """A minimal OCI layout; returns {"manifest": digest, "config": digest, "layers": [digests]}."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layer_descs = []
    for tar in tars:
        if compress == "gzip":
            blob, media = gzip.compress(tar, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
        elif compress == "zstd":
            import zstandard

            blob, media = zstandard.ZstdCompressor().compress(tar), "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            blob, media = tar, "application/vnd.oci.image.layer.v1.tar"
        digest, size = put_blob(layout, blob)
        layer_descs.append({"mediaType": media, "digest": digest, "size": size})
    config = {
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids if diff_ids is not None else [sha(t) for t in tars]},
        "config": {},
    }
    config_digest, config_size = put_blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    }
    manifest_digest, manifest_size = put_blob(layout, json.dumps(manifest).encode())
    descriptor: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size}
    if ref is not None:
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": ref}
    if platform_in_index:
        descriptor["platform"] = {"os": "linux", "architecture": arch}
    index = {"schemaVersion": 2, "manifests": [descriptor, *extra_index]}
    (layout / "index.json").write_text(json.dumps(index))
    return {
        "manifest": manifest_digest,
        "descriptor": descriptor,
        "config": config_digest,
        "layers": [d["digest"] for d in layer_descs],
    }


def tar_directory(src: Path, dest: Path) -> None:
    """Pack a directory as an uncompressed tarball (an "OCI layout tarball")."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)


# ------------------------------------------------------------------ tree snapshots

_IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.", "security.selinux")


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(_IGNORED_XATTR_PREFIXES):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Entry-by-entry description of a tree: path -> (type, mode, uid, gid, size, sha256 or link
    target or rdev, xattrs, hardlink group). Hardlink groups are named by the first path of the
    group in sorted order, so two trees compare equal when they link the same names together."""
    entries: dict[str, tuple[Any, ...]] = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            group = ""
            if stat.S_ISREG(kind):
                with open(full, "rb") as f:
                    detail: Any = hashlib.sha256(f.read()).hexdigest()
                if st.st_nlink > 1:
                    group = inodes.setdefault((st.st_dev, st.st_ino), rel)
            elif stat.S_ISLNK(kind):
                detail = os.readlink(full)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                detail = st.st_rdev
            else:
                detail = ""
            size = st.st_size if stat.S_ISREG(kind) else 0
            entries[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, detail, _xattrs(full), group)
    # name groups by their smallest member so the name does not depend on walk order
    members: dict[str, list[str]] = {}
    for rel, entry in entries.items():
        if entry[7]:
            members.setdefault(entry[7], []).append(rel)
    rename = {g: min(paths) for g, paths in members.items() if len(paths) > 1}
    return {
        rel: entry[:7] + (rename.get(entry[7], ""),) for rel, entry in entries.items()
    }


def diff_snapshots(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> list[str]:
    """Human-readable differences (empty when equal)."""
    problems = []
    for path in sorted(set(a) | set(b)):
        if path not in a:
            problems.append(f"only in second: {path} {b[path]}")
        elif path not in b:
            problems.append(f"only in first: {path} {a[path]}")
        elif a[path] != b[path]:
            problems.append(f"differs: {path}\n   {a[path]}\n   {b[path]}")
    return problems
