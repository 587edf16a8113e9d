"""The on-disk whiteout formats: writing markers and reading them back, on real files."""
from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Iterator

import pytest

from aufs.whiteouts import (
    AUFS_WHITEOUT_MODE,
    OPAQUE_NAME,
    OVERLAY_OPAQUE_XATTR,
    Entry,
    EntryKind,
    WhiteoutFormat,
    classify,
    classify_entry,
    is_metadata_name,
    is_opaque_dir,
    is_private_xattr,
    is_reserved_name,
    make_opaque,
    make_whiteout,
    root_is_opaque,
    whiteout_name,
    whiteout_target,
)

FORMATS = list(WhiteoutFormat)
O_PATH = getattr(os, "O_PATH", 0o10000000)  # PyPy 3.9's os lacks the constant (Linux value)


@pytest.fixture
def dir_fd(ramdir: pathlib.Path) -> Iterator[int]:
    fd = os.open(ramdir, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_format_values() -> None:
    assert WhiteoutFormat("aufs") is WhiteoutFormat.AUFS
    assert WhiteoutFormat("overlay") is WhiteoutFormat.OVERLAY


@pytest.mark.parametrize(
    "name, target",
    [
        (".wh.foo", "foo"),
        (".wh..foo", ".foo"),
        (".wh..wh..opq", None),
        (".wh..wh.plnk", None),
        (".wh.", None),
        (".wh..", None),
        (".wh...", None),
        ("foo", None),
        ("wh.foo", None),
    ],
)
def test_whiteout_target(name: str, target: str) -> None:
    assert whiteout_target(name) == target


def test_name_rules() -> None:
    assert whiteout_name("a b") == ".wh.a b"
    assert is_metadata_name(".wh..wh.plnk")
    assert is_metadata_name(".wh..wh.aufs")
    assert not is_metadata_name(OPAQUE_NAME)
    assert not is_metadata_name(".wh.foo")
    assert is_reserved_name(".wh.x") and not is_reserved_name("x.wh.")
    assert is_private_xattr("trusted.overlay.opaque")
    assert is_private_xattr("trusted.overlay.redirect")
    assert is_private_xattr("user.fuseoverlayfs.opaque")
    assert not is_private_xattr("security.capability")
    assert not is_private_xattr("trusted.foo")


@pytest.mark.parametrize("fmt", FORMATS)
def test_make_whiteout_is_idempotent_and_classified(ramdir: pathlib.Path, dir_fd: int, fmt: WhiteoutFormat) -> None:
    old_umask = os.umask(0o077)
    try:
        make_whiteout(dir_fd, "victim", fmt)
        make_whiteout(dir_fd, "victim", fmt)  # same whiteout again: fine
    finally:
        os.umask(old_umask)
    [entry] = list(os.scandir(ramdir))
    st = entry.stat(follow_symlinks=False)
    if fmt is WhiteoutFormat.AUFS:
        assert entry.name == ".wh.victim"
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0
        assert stat.S_IMODE(st.st_mode) == AUFS_WHITEOUT_MODE  # umask did not change the format
    else:
        assert entry.name == "victim"
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
        assert stat.S_IMODE(st.st_mode) == 0
    assert st.st_uid == 0
    assert classify_entry(entry, fmt) == Entry(EntryKind.WHITEOUT, "victim")
    assert classify(entry.name, st.st_mode, st.st_rdev, fmt) == Entry(EntryKind.WHITEOUT, "victim")


@pytest.mark.parametrize("fmt", FORMATS)
def test_make_whiteout_refuses_to_clobber_content(ramdir: pathlib.Path, dir_fd: int, fmt: WhiteoutFormat) -> None:
    occupied = whiteout_name("f") if fmt is WhiteoutFormat.AUFS else "f"
    (ramdir / occupied).write_bytes(b"content")
    with pytest.raises(FileExistsError):
        make_whiteout(dir_fd, "f", fmt)
    assert (ramdir / occupied).read_bytes() == b"content"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", ".wh.x"])
def test_make_whiteout_rejects_bad_names(dir_fd: int, fmt: WhiteoutFormat, bad: str) -> None:
    with pytest.raises(ValueError):
        make_whiteout(dir_fd, bad, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("o_path", [False, True])
def test_make_opaque(ramdir: pathlib.Path, fmt: WhiteoutFormat, o_path: bool) -> None:
    sub = ramdir / "sub"
    sub.mkdir()
    assert not is_opaque_dir(sub, fmt)
    fd = os.open(sub, (O_PATH if o_path else os.O_RDONLY) | os.O_DIRECTORY)
    try:
        make_opaque(fd, fmt)
        make_opaque(fd, fmt)
        assert is_opaque_dir(fd, fmt)
    finally:
        os.close(fd)
    assert is_opaque_dir(sub, fmt)
    assert is_opaque_dir(str(sub), fmt)
    if fmt is WhiteoutFormat.AUFS:
        assert os.listdir(sub) == [OPAQUE_NAME]
        marker = next(os.scandir(sub))
        assert classify_entry(marker, fmt).kind is EntryKind.OPAQUE_MARKER
    else:
        assert os.listdir(sub) == []
        assert os.getxattr(sub, OVERLAY_OPAQUE_XATTR) == b"y"
    assert not root_is_opaque(ramdir, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_root_is_opaque(ramdir: pathlib.Path, dir_fd: int, fmt: WhiteoutFormat) -> None:
    make_opaque(dir_fd, fmt)
    assert root_is_opaque(ramdir, fmt)
    assert root_is_opaque(dir_fd, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuse_overlayfs_markers_are_read_in_both_formats(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    """fuse-overlayfs as root leaves 0/0 devices, an opaque xattr, `.wh..wh..opq` and a
    stray `.wh..opq` device; unprivileged it uses user.* xattrs. All are read, never content."""
    os.mknod(ramdir / "gone", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(ramdir / ".wh..opq", stat.S_IFCHR, os.makedev(0, 0))
    (ramdir / ".wh.also-gone").write_bytes(b"")
    (ramdir / ".wh..wh.plnk").mkdir()
    (ramdir / "dir").mkdir()
    os.setxattr(ramdir / "dir", "user.fuseoverlayfs.opaque", b"y")
    kinds = {e.name: classify_entry(e, fmt) for e in os.scandir(ramdir)}
    assert kinds == {
        "gone": Entry(EntryKind.WHITEOUT, "gone"),
        ".wh..opq": Entry(EntryKind.METADATA),
        ".wh.also-gone": Entry(EntryKind.WHITEOUT, "also-gone"),
        ".wh..wh.plnk": Entry(EntryKind.METADATA),
        "dir": Entry(EntryKind.CONTENT),
    }
    assert is_opaque_dir(ramdir / "dir", fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_content_is_content(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    (ramdir / "file").write_bytes(b"x")
    (ramdir / "dir").mkdir()
    os.symlink(".wh.x", ramdir / "link")
    os.mkfifo(ramdir / "fifo")
    os.mknod(ramdir / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(ramdir / "blk00", stat.S_IFBLK | 0o600, os.makedev(0, 0))  # only char 0/0 is a whiteout
    (ramdir / ".wh..wh..opq").mkdir()  # a directory is never the opaque marker
    for entry in os.scandir(ramdir):
        expected = EntryKind.METADATA if entry.name.startswith(".wh.") else EntryKind.CONTENT
        assert classify_entry(entry, fmt).kind is expected, entry.name
    assert not is_opaque_dir(ramdir, fmt)


def test_opaque_xattr_other_value_is_not_opaque(ramdir: pathlib.Path) -> None:
    os.setxattr(ramdir, OVERLAY_OPAQUE_XATTR, b"n")
    assert not is_opaque_dir(ramdir, WhiteoutFormat.OVERLAY)
