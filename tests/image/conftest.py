"""Fixtures for image tests: stores on tmpfs, and real images built once per session with
umoci, skopeo and buildah (the reference tools), skipped with a reason when a tool is missing."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs

from .helpers import have, run


@pytest.fixture
def driver(ramdir: Path) -> Iterator[aufs.Driver]:
    """A fresh store on tmpfs; every mount is taken down afterwards."""
    store = aufs.Driver(ramdir / "store")
    try:
        yield store
    finally:
        store.cleanup()


def _write(path: Path, data: bytes, mode: int = 0o644, owner: tuple = (0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)  # before chmod: chown clears setuid/setgid
    os.chmod(path, mode)


def _repack(layout: Path, bundle: Path) -> None:
    # --refresh-bundle: without it umoci 0.4.7 diffs every later layer against the first unpack
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:t", str(bundle))


def build_umoci_image(work: Path) -> Path:
    """A three-layer image made by umoci from a real tree: owners, modes, xattrs, hardlinks,
    symlinks, a fifo, deletions (files, a directory, one name of a hardlink pair), metadata-only
    changes and type changes (dir -> symlink, file -> dir)."""
    layout, bundle = work / "oci", work / "bundle"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:t")
    run("umoci", "unpack", "--image", f"{layout}:t", str(bundle))
    root = bundle / "rootfs"

    # layer 1: a small system
    _write(root / "etc" / "passwd", b"root:x:0:0::/root:/bin/sh\n")  # umoci unpack reads it
    _write(root / "etc" / "hosts", b"127.0.0.1 localhost\n")
    _write(root / "etc" / "app.conf", b"level=1\n", 0o640, (1000, 1000))
    os.setxattr(root / "etc" / "app.conf", "user.comment", b"hello")
    _write(root / "usr" / "bin" / "tool", os.urandom(70_000), 0o4755)
    os.link(root / "usr" / "bin" / "tool", root / "usr" / "bin" / "tool-hard")
    os.symlink("tool", root / "usr" / "bin" / "tool-sym")
    os.symlink("/usr/bin/tool", root / "usr" / "bin" / "tool-abs")
    (root / "srv").mkdir()
    for name in "abc":
        _write(root / "srv" / "data" / name, name.encode() * 1000, owner=(1234, 5678))
    os.chown(root / "srv", 1234, 5678)
    os.chmod(root / "srv", 0o2750)
    os.setxattr(root / "srv", "user.dir", b"1")
    _write(root / "var" / "lib" / "state" / "one", b"1")
    _write(root / "var" / "lib" / "state" / "sub" / "x", b"x")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "run").mkdir()
    os.mkfifo(root / "run" / "fifo")
    _write(root / "empty", b"")
    _write(root / "big.bin", os.urandom(1 << 20))
    _repack(layout, bundle)

    # layer 2: deletions and modifications
    shutil.rmtree(root / "var" / "lib" / "state" / "sub")
    _write(root / "etc" / "app.conf", b"level=2\n", 0o640, (1000, 1000))
    os.setxattr(root / "etc" / "app.conf", "user.comment", b"hello")
    (root / "srv" / "data" / "b").unlink()
    (root / "usr" / "bin" / "tool-hard").unlink()
    _write(root / "srv" / "data" / "d", b"new", owner=(1234, 5678))
    os.chmod(root / "srv" / "data" / "a", 0o600)
    os.chown(root / "srv" / "data" / "c", 42, 42)
    _repack(layout, bundle)

    # layer 3: type changes and a new hardlink pair
    shutil.rmtree(root / "var" / "lib" / "state")
    os.symlink("/srv", root / "var" / "lib" / "state")
    (root / "etc" / "hosts").unlink()
    _write(root / "etc" / "hosts" / "now-a-dir", b"surprise")
    _write(root / "opt" / "x" / "one", b"shared inode")
    os.link(root / "opt" / "x" / "one", root / "opt" / "x" / "two")
    _repack(layout, bundle)
    shutil.rmtree(bundle)
    return layout


def umoci_unpack(layout: Path, tag: str, dest: Path) -> Path:
    """The reference root filesystem: ``umoci unpack``; returns the rootfs path."""
    run("umoci", "unpack", "--image", f"{layout}:{tag}", str(dest))
    return dest / "rootfs"


@pytest.fixture(scope="session")
def umoci_image(ram_root: Path) -> dict[str, Path]:
    """{"oci": layout (tag t, gzip), "rootfs": umoci's unpack of it, "docker": docker-save tar,
    "zstd": the same image with zstd layers}."""
    for tool in ("umoci", "skopeo"):
        if not have(tool):
            pytest.skip(f"{tool} is not installed (scripts/bootstrap installs it)")
    if os.geteuid() != 0:
        pytest.skip("building images with owners needs root")
    work = ram_root / "umoci-image"
    work.mkdir()
    layout = build_umoci_image(work)
    rootfs = umoci_unpack(layout, "t", work / "reference")
    docker = work / "docker.tar"
    run("skopeo", "copy", "-q", f"oci:{layout}:t", f"docker-archive:{docker}:demo:1")
    zstd = work / "zstd"
    run("skopeo", "copy", "-q", "--dest-compress", "--dest-compress-format", "zstd", f"oci:{layout}:t", f"oci:{zstd}:t")
    return {"oci": layout, "rootfs": rootfs, "docker": docker, "zstd": zstd}


@pytest.fixture(scope="session")
def buildah_image(ram_root: Path) -> dict[str, Path]:
    """A two-layer image committed by buildah with its overlay storage (uncompressed layers,
    a real ``.wh..wh..opq`` opaque marker and a whiteout), plus skopeo copies of it as gzip
    OCI and docker-save."""
    for tool in ("buildah", "skopeo"):
        if not have(tool):
            pytest.skip(f"{tool} is not installed (scripts/bootstrap installs it)")
    if os.geteuid() != 0:
        pytest.skip("buildah with overlay storage needs root")
    work = ram_root / "buildah-image"
    work.mkdir()
    base = ["buildah", "--root", str(work / "root"), "--runroot", str(work / "run"), "--storage-driver", "overlay"]
    try:
        first = run(*base, "from", "scratch").stdout.strip()
        mnt = Path(run(*base, "mount", first).stdout.strip())
        _write(mnt / "d" / "old" / "f", b"old")
        _write(mnt / "d" / "keep-not", b"hidden by the opaque dir")
        _write(mnt / "etc" / "gone", b"whited out later")
        _write(mnt / "etc" / "stays", b"stays")
        run(*base, "unmount", first)
        run(*base, "commit", "-q", first, "img1")
        second = run(*base, "from", "img1").stdout.strip()
        mnt = Path(run(*base, "mount", second).stdout.strip())
        shutil.rmtree(mnt / "d")
        _write(mnt / "d" / "new", b"new")
        (mnt / "etc" / "gone").unlink()
        run(*base, "unmount", second)
        layout = work / "oci"
        run(*base, "commit", "-q", second, f"oci:{layout}:t")
    finally:
        subprocess_quiet(*base, "rm", "-a")
        subprocess_quiet(*base, "rmi", "-a", "-f")
        subprocess_quiet("umount", "-R", str(work / "root" / "overlay"))
    gzip_form = work / "gzip"
    run("skopeo", "copy", "-q", "--dest-compress", "--dest-compress-format", "gzip", f"oci:{layout}:t", f"oci:{gzip_form}:t")
    docker = work / "docker.tar"
    run("skopeo", "copy", "-q", f"oci:{layout}:t", f"docker-archive:{docker}:bh:1")
    rootfs = umoci_unpack(layout, "t", work / "reference")
    return {"oci": layout, "gzip": gzip_form, "docker": docker, "rootfs": rootfs}


def subprocess_quiet(*argv: str) -> None:
    import subprocess

    subprocess.run(argv, capture_output=True, check=False)
