"""Backend choice, the store's recorded whiteout format, and refusals."""
from __future__ import annotations

import json
import pathlib

import pytest

import aufs
from aufs.backends import BACKENDS
from aufs.store import Driver

needs_overlay = pytest.mark.skipif(
    BACKENDS["overlay"].unavailable_reason() is not None, reason=str(BACKENDS["overlay"].unavailable_reason())
)
needs_fuse = pytest.mark.skipif(
    BACKENDS["fuse-overlayfs"].unavailable_reason() is not None,
    reason=str(BACKENDS["fuse-overlayfs"].unavailable_reason()),
)


def _format_of(home: pathlib.Path) -> str:
    return str(json.loads((home / "aufs-store.json").read_text())["format"])


@needs_overlay
def test_overlay_store_records_the_overlay_format(home: pathlib.Path) -> None:
    Driver(home, backend="overlay")
    assert _format_of(home) == "overlay"


@needs_fuse
def test_fuse_store_records_the_aufs_format(home: pathlib.Path) -> None:
    Driver(home, backend="fuse-overlayfs")
    assert _format_of(home) == "aufs"


@needs_overlay
@needs_fuse
def test_aufs_format_store_refuses_kernel_overlay(home: pathlib.Path) -> None:
    Driver(home, backend="fuse-overlayfs").create("a")
    with pytest.raises(aufs.StoreFormatMismatch) as info:
        Driver(home, backend="overlay")
    assert isinstance(info.value, ValueError) and "aufs" in str(info.value)
    # auto picks a backend that reads the store's format
    assert Driver(home).backend in ("aufs", "fuse-overlayfs")


@needs_overlay
@needs_fuse
def test_fuse_overlayfs_reads_an_overlay_format_store(home: pathlib.Path) -> None:
    d = Driver(home, backend="overlay")
    d.create("base")
    with d.mount("base") as root:
        (pathlib.Path(root) / "f").write_text("x")
    d.create("top", parent="base")
    with d.mount("top") as root:
        (pathlib.Path(root) / "f").unlink()
        (pathlib.Path(root) / "g").write_text("y")
    f = Driver(home, backend="fuse-overlayfs")
    try:
        with f.mount("top") as root:
            assert sorted(p.name for p in pathlib.Path(root).iterdir()) == ["g"]
            (pathlib.Path(root) / "h").write_text("z")
    finally:
        f.cleanup()
    with d.mount("top") as root:  # still readable by kernel overlayfs after fuse wrote to it
        assert sorted(p.name for p in pathlib.Path(root).iterdir()) == ["g", "h"]


@needs_overlay
def test_auto_prefers_kernel_overlay_here(home: pathlib.Path) -> None:
    if BACKENDS["aufs"].unavailable_reason() is None:
        pytest.skip("the kernel has AUFS, auto picks it")
    assert Driver(home).backend == "overlay"


def test_unavailable_backend_says_what_is_missing(home: pathlib.Path) -> None:
    reason = BACKENDS["aufs"].unavailable_reason()
    if reason is None:
        pytest.skip("AUFS is available here")
    with pytest.raises(aufs.BackendUnavailable) as info:
        Driver(home, backend="aufs")
    assert "AUFS" in str(info.value) and isinstance(info.value, RuntimeError)


def test_unknown_backend_is_a_value_error(home: pathlib.Path) -> None:
    with pytest.raises(ValueError):
        Driver(home, backend="zfs")


def test_garbage_metadata_is_refused(home: pathlib.Path) -> None:
    home.mkdir()
    (home / "aufs-store.json").write_text('{"format": "btrfs"}')
    with pytest.raises(aufs.StoreFormatMismatch):
        Driver(home)
