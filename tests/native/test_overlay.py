"""mount_overlay(): the new mount API shows every layer, long paths go by fd, options pass."""
from __future__ import annotations

import dataclasses
import errno
import os
import pathlib

import pytest

import aufs
from aufs import kernel, mounts

from .conftest import Mounter


def make_layers(base: pathlib.Path, count: int, name_len: int = 8) -> list[str]:
    """count lower dirs, each holding one file named after it; top-most first."""
    layers = []
    for i in range(count):
        layer = base / f"{i:03d}-{'l' * name_len}"
        layer.mkdir(parents=True)
        (layer / f"file-{i:03d}").write_text(str(i))
        (layer / "shared").write_text(str(i))
        layers.append(str(layer))
    return layers


def test_200_lower_layers_all_visible(root: pathlib.Path, mounter: Mounter) -> None:
    # 200 layers of ~100-byte paths is ~20 KB of legacy mount data: five pages.
    layers = make_layers(root / ("deep" * 20), 200, name_len=80)
    assert len(":".join(layers)) > 4 * 4096
    (root / "mnt").mkdir()
    mounter.overlay(root / "mnt", layers)
    names = set(os.listdir(root / "mnt"))
    assert names == {f"file-{i:03d}" for i in range(200)} | {"shared"}
    # The top-most (first) layer wins.
    assert (root / "mnt" / "shared").read_text() == "0"
    (info,) = [i for i in mounts.mount_table() if i.mountpoint == str(root / "mnt")]
    assert info.fstype == "overlay" and info.source == "overlay"


def test_paths_of_256_bytes_and_more_go_by_fd(root: pathlib.Path, mounter: Mounter) -> None:
    base = root
    while len(str(base)) < 300:
        base = base / ("d" * 60)
    lowers = make_layers(base / "lower", 3)
    assert all(len(os.fsencode(p)) >= 256 for p in lowers)
    (base / "upper").mkdir()
    (base / "work").mkdir()
    (root / "mnt").mkdir()
    mounter.overlay(root / "mnt", lowers, str(base / "upper"), str(base / "work"))
    (root / "mnt" / "new").write_text("top")
    assert (base / "upper" / "new").read_text() == "top"
    assert sorted(os.listdir(root / "mnt")) == ["file-000", "file-001", "file-002", "new",
                                                "shared"]


def test_writable_overlay_with_extra_options(root: pathlib.Path, mounter: Mounter) -> None:
    lowers = make_layers(root / "l", 2)
    for d in ("upper", "work", "mnt"):
        (root / d).mkdir()
    options = ("index=on", "xino=off", "redirect_dir=on", "volatile")
    mounter.overlay(root / "mnt", lowers, str(root / "upper"), str(root / "work"),
                    options=options)
    (info,) = [i for i in mounts.mount_table() if i.mountpoint == str(root / "mnt")]
    # overlayfs lists only what differs from its defaults; volatile shows as fsync=volatile.
    for option in ("index=on", "redirect_dir=on", "fsync=volatile"):
        assert option in info.super_options.split(","), info.super_options
    os.unlink(root / "mnt" / "shared")
    assert not (root / "mnt" / "shared").exists()
    assert (pathlib.Path(lowers[0]) / "shared").exists()


def test_userxattr_option(root: pathlib.Path, mounter: Mounter) -> None:
    lowers = make_layers(root / "l", 2)
    for d in ("upper", "work", "mnt"):
        (root / d).mkdir()
    mounter.overlay(root / "mnt", lowers, str(root / "upper"), str(root / "work"),
                    options=("userxattr",))
    (info,) = [i for i in mounts.mount_table() if i.mountpoint == str(root / "mnt")]
    assert "userxattr" in info.super_options.split(",")


def test_kernel_explains_a_refused_mount(root: pathlib.Path) -> None:
    (root / "mnt").mkdir()
    with pytest.raises(aufs.MountError) as info:
        mounts.mount_overlay(root / "mnt", [str(root / "missing-layer")])
    assert info.value.errno == errno.ENOENT
    assert "overlay" in str(info.value)
    with pytest.raises(aufs.MountError) as info:
        mounts.mount_overlay(root / "mnt", make_layers(root / "l", 1),
                             options=("no_such_option=1",))
    # The fs-context log names the parameter the kernel did not know.
    assert "no_such_option" in str(info.value)
    assert not mounts.mounted(root / "mnt")


def test_argument_checks(root: pathlib.Path) -> None:
    with pytest.raises(ValueError):
        mounts.mount_overlay(root, [])
    with pytest.raises(ValueError):
        mounts.mount_overlay(root, [str(root)], upperdir=str(root))
    with pytest.raises(ValueError):
        mounts.mount_overlay(root, [str(root)], options=("a=1,b=2",))


@pytest.fixture
def legacy_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the kernel lacks lowerdir+, to exercise the legacy mount(2) path for real."""
    real = kernel.features()
    old = dataclasses.replace(real, overlay_lowerdir_plus=False, overlay_layer_fd=False)
    monkeypatch.setattr(kernel, "features", lambda: old)


def test_legacy_fallback_when_data_fits(root: pathlib.Path, mounter: Mounter,
                                        legacy_only: None) -> None:
    lowers = make_layers(root / "l", 5)
    for d in ("upper", "work", "mnt"):
        (root / d).mkdir()
    mounter.overlay(root / "mnt", lowers, str(root / "upper"), str(root / "work"),
                    options=("redirect_dir=on",))
    assert len(os.listdir(root / "mnt")) == 6
    (info,) = [i for i in mounts.mount_table() if i.mountpoint == str(root / "mnt")]
    # legacy data shows as one "lowerdir=a:b:..." rather than lowerdir+ entries
    assert "lowerdir=" + ":".join(lowers) in info.super_options
    assert "redirect_dir=on" in info.super_options


def test_legacy_fallback_refuses_what_does_not_fit(root: pathlib.Path,
                                                   legacy_only: None) -> None:
    layers = make_layers(root / "l", 200, name_len=40)
    (root / "mnt").mkdir()
    with pytest.raises(aufs.MountDataTooLong) as info:
        mounts.mount_overlay(root / "mnt", layers)
    assert "200 lower layers" in str(info.value)
    assert not mounts.mounted(root / "mnt")


def test_legacy_fallback_refuses_unrepresentable_paths(root: pathlib.Path,
                                                       legacy_only: None) -> None:
    (root / "a:b").mkdir()
    (root / "mnt").mkdir()
    with pytest.raises(aufs.MountError):
        mounts.mount_overlay(root / "mnt", [str(root / "a:b"), str(root / "a:b")])


def test_kernel_layer_limit_reached_and_explained(root: pathlib.Path, mounter: Mounter) -> None:
    layers = make_layers(root / "l", 501)
    (root / "mnt").mkdir()
    mounter.overlay(root / "mnt", layers[:500])
    assert len(os.listdir(root / "mnt")) == 501  # 500 files + "shared"
    mounts.unmount(root / "mnt")
    with pytest.raises(aufs.MountError) as info:
        mounts.mount_overlay(root / "mnt", layers)
    assert info.value.errno == errno.EINVAL
    assert "limit is 500" in str(info.value)
