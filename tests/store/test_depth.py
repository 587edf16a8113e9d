"""Deep chains: 128 layers on every backend, 500 on the ones that mount that deep, and the
depth limit enforced at create (never later inside mount)."""
from __future__ import annotations

from pathlib import Path
import os

import pytest

import aufs
from aufs.store import Driver


def _build_chain(driver: Driver, depth: int) -> str:
    """A chain of ``depth`` layers; layer i holds file-i and overwrites 'common' (written directly
    into the diff dirs: the mount path is exercised by the read below)."""
    parent = None
    for i in range(depth):
        layer = f"layer{i}"
        driver.create(layer, parent=parent)
        diff = Path(driver.diff_dir(layer))
        with open(diff / f"file-{i}", "w") as f:
            f.write(str(i))
        with open(diff / "common", "w") as f:
            f.write(str(i))
        parent = layer
    assert parent is not None
    return parent


def _check_read(driver: Driver, top: str, depth: int) -> None:
    with driver.mount(top) as root:
        names = set(os.listdir(root))
        assert names == {f"file-{i}" for i in range(depth)} | {"common"}
        for i in range(depth):
            with open(f"{root}/file-{i}") as f:
                assert f.read() == str(i)
        with open(f"{root}/common") as f:
            assert f.read() == str(depth - 1)


def test_deep_read_128_layers(driver: Driver) -> None:
    top = _build_chain(driver, 128)
    _check_read(driver, top, 128)


def test_max_depth_mounts_and_one_more_is_refused_at_create(driver: Driver) -> None:
    depth = driver.max_depth
    if depth > 501:
        pytest.skip(f"{driver.backend} reports {depth}")
    top = _build_chain(driver, depth)
    _check_read(driver, top, depth)
    with pytest.raises(aufs.MaxDepthExceeded) as info:
        driver.create("one-too-many", parent=top)
    assert isinstance(info.value, ValueError)
    assert not driver.exists("one-too-many") and os.listdir(Path(driver.layout.tmp_dir)) == []


def test_overlay_mounts_a_chain_of_501(driver: Driver) -> None:
    if driver.backend != "overlay":
        pytest.skip("kernel overlayfs only")
    assert driver.max_depth == 501  # 500 lower layers, the kernel's own limit


def test_lower_view_of_a_deep_chain(driver: Driver) -> None:
    top = _build_chain(driver, 130)
    with driver.diffs.lower_view(top) as lower:
        assert lower is not None
        assert len(os.listdir(lower)) == 130  # file-0..128 and common
        with open(f"{lower}/common") as f:
            assert f.read() == "128"


def test_overlay_without_lowerdir_plus_uses_short_links_and_one_page(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On kernels before 6.8 all lowers share one page of mount(2) data: the store names them
    by short links (as Docker's overlay2 does) and refuses at create what would not fit."""
    import dataclasses

    from aufs import kernel

    if driver.backend != "overlay":
        pytest.skip("kernel overlayfs only")
    legacy = dataclasses.replace(kernel.features(), overlay_lowerdir_plus=False, overlay_layer_fd=False)
    monkeypatch.setattr(kernel, "features", lambda: legacy)
    depth = driver.max_depth
    full_path = len(driver.layout.diff_dir("x" * 128)) + 1
    assert 2 * (4096 // full_path) < depth < 501  # short links: far more than full paths allow
    top = _build_chain(driver, depth)
    _check_read(driver, top, depth)  # a real legacy mount(2) with the data in one page
    with pytest.raises(aufs.MaxDepthExceeded):
        driver.create("one-too-many", parent=top)
