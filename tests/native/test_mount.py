"""mount() and unmount() on real mounts: no truncation, no symlink following, busy retries."""
from __future__ import annotations

import errno
import os
import pathlib

import pytest

import aufs
from aufs import _syscalls, mounts

from .conftest import Mounter


def test_mount_and_unmount_tmpfs(root: pathlib.Path) -> None:
    (root / "t").mkdir()
    mounts.mount("tmpfs", root / "t", "tmpfs", 0, "size=1m,mode=0700")
    try:
        assert mounts.mounted(root / "t")
        (info,) = [i for i in mounts.mount_table() if i.mountpoint == str(root / "t")]
        assert info.fstype == "tmpfs" and "mode=700" in info.super_options
    finally:
        assert mounts.unmount(root / "t") is True
    assert not mounts.mounted(root / "t")


def test_mount_refuses_data_that_does_not_fit_a_page(root: pathlib.Path) -> None:
    (root / "t").mkdir()
    page = _syscalls.page_size()
    data = "size=1m," + "x" * page
    with pytest.raises(aufs.MountDataTooLong) as info:
        mounts.mount("tmpfs", root / "t", "tmpfs", 0, data)
    assert str(len(data)) in str(info.value) and info.value.path == str(root / "t")
    assert isinstance(info.value, ValueError) and isinstance(info.value, aufs.MountError)
    assert not mounts.mounted(root / "t")


def test_data_exactly_one_page_minus_nul_is_refused_by_the_kernel_not_truncated(
        root: pathlib.Path) -> None:
    # page-1 bytes + NUL fit: the kernel sees all of it and rejects the bogus option itself.
    (root / "t").mkdir()
    data = "size=1m,x" + "y" * (_syscalls.page_size() - 10)
    assert len(data) == _syscalls.page_size() - 1
    with pytest.raises(aufs.MountError) as info:
        mounts.mount("tmpfs", root / "t", "tmpfs", 0, data)
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value.__cause__, OSError)
    # One byte more is ours to refuse.
    with pytest.raises(aufs.MountDataTooLong):
        mounts.mount("tmpfs", root / "t", "tmpfs", 0, data + "y")


def test_mount_error_carries_errno_and_path(root: pathlib.Path) -> None:
    with pytest.raises(aufs.MountError) as info:
        mounts.mount("tmpfs", root / "missing", "tmpfs")
    assert info.value.errno == errno.ENOENT
    assert info.value.path == str(root / "missing")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert info.value.__cause__.filename == str(root / "missing")


def test_unmount_not_mounted_is_false(root: pathlib.Path) -> None:
    (root / "d").mkdir()
    assert mounts.unmount(root / "d") is False
    assert mounts.unmount(root / "does-not-exist") is False


def test_unmount_does_not_follow_a_symlink(root: pathlib.Path, mounter: Mounter) -> None:
    (root / "t").mkdir()
    mounter.tmpfs(root / "t")
    (root / "link").symlink_to(root / "t")
    assert mounts.unmount(root / "link") is False
    assert mounts.mounted(root / "t")


def test_busy_is_retried_then_raised_and_lazy_detaches(root: pathlib.Path,
                                                       mounter: Mounter) -> None:
    (root / "t").mkdir()
    mounter.tmpfs(root / "t")
    fd = os.open(root / "t" / "held", os.O_CREAT | os.O_RDWR)
    try:
        with pytest.raises(aufs.MountError) as info:
            mounts.unmount(root / "t", busy_retries=2)
        assert info.value.errno == errno.EBUSY
        assert "lazy" in str(info.value)
        assert mounts.mounted(root / "t")
        assert mounts.unmount(root / "t", lazy=True) is True
        assert not mounts.mounted(root / "t")
        os.write(fd, b"still usable after a lazy detach")
    finally:
        os.close(fd)


def test_busy_retry_succeeds_once_released(root: pathlib.Path, mounter: Mounter) -> None:
    import threading

    (root / "t").mkdir()
    mounter.tmpfs(root / "t")
    fd = os.open(root / "t" / "held", os.O_CREAT | os.O_RDWR)
    timer = threading.Timer(0.05, os.close, (fd,))
    timer.start()
    try:
        assert mounts.unmount(root / "t", busy_retries=8) is True
    finally:
        timer.join()
    assert not mounts.mounted(root / "t")


def test_bind_mount_and_recursive_unmount_order(root: pathlib.Path, mounter: Mounter) -> None:
    (root / "a" / "b").mkdir(parents=True)
    mounter.tmpfs(root / "a")
    (root / "a" / "b").mkdir()
    mounter.tmpfs(root / "a" / "b")
    subs = mounts.submounts(root / "a")
    assert [s.mountpoint for s in subs] == [str(root / "a" / "b"), str(root / "a")]
    for s in subs:
        assert mounts.unmount(s.mountpoint)
    assert mounts.submounts(root / "a") == []


def test_rename_exchange_and_noreplace(root: pathlib.Path) -> None:
    (root / "x").mkdir()
    (root / "x" / "from-x").touch()
    (root / "y").write_text("y")
    _syscalls.rename_exchange(root / "x", root / "y")
    assert (root / "y" / "from-x").exists() and (root / "x").read_text() == "y"
    with pytest.raises(FileExistsError) as info:
        _syscalls.rename_noreplace(root / "x", root / "y")
    assert info.value.filename == str(root / "x") and info.value.filename2 == str(root / "y")
    _syscalls.rename_noreplace(root / "x", root / "z")
    assert (root / "z").read_text() == "y" and not (root / "x").exists()
    with pytest.raises(FileNotFoundError):
        _syscalls.rename_exchange(root / "x", root / "y")


def test_kernel_features_probed_once_and_frozen() -> None:
    features = mounts.kernel_features()
    assert features is mounts.kernel_features()
    # This machine's kernel (6.18) has all of these; aufs is not loaded.
    assert features.statx_mount_root and features.openat2 and features.new_mount_api
    assert features.overlay and features.overlay_lowerdir_plus
    with pytest.raises(AttributeError):
        features.openat2 = False  # type: ignore[misc]


def test_kernel_features_match_proc_filesystems() -> None:
    with open("/proc/filesystems") as f:
        known = {line.split()[-1] for line in f if line.strip()}
    features = mounts.kernel_features()
    assert features.overlay == ("overlay" in known)
    assert features.aufs == ("aufs" in known)
    assert mounts.kernel_features.cache_info().misses == 1  # type: ignore[attr-defined]


def test_mount_error_without_source_or_fstype(root: pathlib.Path) -> None:
    with pytest.raises(aufs.MountError) as info:
        mounts.mount(None, root / "missing", "tmpfs")
    assert "(no source)" in str(info.value) and info.value.errno == errno.ENOENT
    with pytest.raises(aufs.MountError) as info:
        mounts.mount(None, root / "missing", None, mounts.MS_REMOUNT | mounts.MS_RDONLY)
    assert "flags 0x21" in str(info.value)
