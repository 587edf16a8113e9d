"""``aufs.kernel``: the one place that knows the running kernel's facts."""
from __future__ import annotations

import dataclasses
import os
import mmap
import pathlib

import pytest

from aufs import _fastpaths, kernel, mounts, whiteouts


def test_filesystems_from_a_recorded_file(tmp_path: pathlib.Path) -> None:
    recorded = tmp_path / "filesystems"
    recorded.write_text("nodev\tsysfs\nnodev\toverlay\n\text4\nnodev\tfuse\n")
    assert kernel.filesystems(str(recorded)) == {"sysfs", "overlay", "ext4", "fuse"}
    assert kernel.filesystems(str(tmp_path / "missing")) == frozenset()
    assert "proc" in kernel.filesystems()


def test_cap_sys_admin_from_a_recorded_status(tmp_path: pathlib.Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000200000\n")  # bit 21 only
    assert kernel.has_cap_sys_admin(str(status))
    status.write_text("Name:\tx\nCapEff:\t00000000001fffff\n")  # everything below it
    assert not kernel.has_cap_sys_admin(str(status))


def test_page_size_is_the_kernels() -> None:
    assert kernel.page_size() == mmap.PAGESIZE


def test_fsconfig_takes_short_plain_paths_only() -> None:
    assert kernel.fsconfig_takes("/" + "a" * 254)  # 255 bytes
    assert not kernel.fsconfig_takes("/" + "a" * 255)
    assert not kernel.fsconfig_takes("/store\\with-backslash")
    assert not kernel.fsconfig_takes("/" + "é" * 128)  # 257 bytes, 129 characters


def test_lowerdir_plus_follows_the_features(monkeypatch: pytest.MonkeyPatch) -> None:
    real = kernel.features()
    assert mounts.kernel_features is kernel.features and mounts.MS_REMOUNT == kernel.MS_REMOUNT
    for plus, fd in ((False, False), (True, False), (True, True)):
        fake = dataclasses.replace(real, overlay_lowerdir_plus=plus, overlay_layer_fd=fd)
        monkeypatch.setattr(kernel, "features", lambda fake=fake: fake)
        assert kernel.lowerdir_plus() is plus
        assert kernel.lowerdir_plus(strings_only=False) is (plus and fd)


def test_the_c_spells_the_reserved_names_as_python_does() -> None:
    lib, ffi = _fastpaths.lib, _fastpaths.ffi
    spelled = [ffi.string(lib.aufs_name(i)).decode() for i in range(lib.AUFS_NAME_COUNT)]
    assert spelled == [whiteouts.WHITEOUT_PREFIX, whiteouts.META_PREFIX, whiteouts.OPAQUE_NAME,
                       *whiteouts.PRIVATE_XATTR_PREFIXES]
    assert lib.aufs_name(lib.AUFS_NAME_COUNT) == ffi.NULL
    assert lib.aufs_name(-1) == ffi.NULL


def test_grow_pipe_grows_pipes_only(tmp_path: pathlib.Path) -> None:
    import fcntl
    import os

    read_fd, write_fd = os.pipe()
    try:
        assert kernel.grow_pipe(write_fd, 1 << 20)
        assert fcntl.fcntl(write_fd, kernel.F_GETPIPE_SZ) == 1 << 20
        assert kernel.grow_pipe(write_fd, 4096)  # already larger: left as it is
        assert fcntl.fcntl(write_fd, kernel.F_GETPIPE_SZ) == 1 << 20
    finally:
        os.close(read_fd)
        os.close(write_fd)
    with open(tmp_path / "file", "wb") as f:
        assert not kernel.grow_pipe(f.fileno(), 1 << 20)


def test_in_user_namespace_reads_the_uid_map(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from aufs.kernel import in_user_namespace
    initial = tmp_path / "initial"
    initial.write_text("         0          0 4294967295\n")
    mapped = tmp_path / "mapped"
    mapped.write_text("         0       1002          1\n         1     100000      65536\n")
    assert not in_user_namespace(str(initial))
    assert in_user_namespace(str(mapped))
    assert not in_user_namespace(str(tmp_path / "missing"))  # no procfs: assume the initial one
    assert in_user_namespace() is False  # this test runs as root of the initial namespace


def test_userns_overlay_needs_5_11() -> None:
    assert kernel.userns_overlay_reason((5, 10)) == \
        "kernel overlayfs in a user namespace needs Linux 5.11 or later (userxattr)"
    assert kernel.userns_overlay_reason((5, 11)) is None
    assert kernel.userns_overlay_reason((6, 1)) is None
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    assert kernel.release() == (major, minor)
