"""The C walker (csrc/walk.c) behind ``diff`` and ``changes``: directory scans, the change list
against its pure-Python twin, and tar entries written in one C call each, on odd trees."""
from __future__ import annotations

import io
import os
import pathlib
import shutil
import stat
import subprocess
import tarfile
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aufs import _fastpaths
from aufs.changes import Change, ChangeKind, compute_changes, compute_changes_py
from aufs.export import write_diff
from aufs.whiteouts import WhiteoutFormat, make_opaque, make_whiteout

from .test_changes import overlay

FORMATS = list(WhiteoutFormat)
A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE

NEWLINE = "new\nline"
NOT_UTF8 = os.fsdecode(b"bad\xff\xfename")
LONG = "L" * 255


def _odd_entries(d: pathlib.Path) -> None:
    """One of every inode type, under names that break naive code."""
    (d / NEWLINE).write_bytes(b"nl")
    (d / NOT_UTF8).write_bytes(b"raw")
    (d / LONG).write_bytes(b"long")
    os.link(d / LONG, d / "hardlink")
    os.symlink("/nowhere/at/all", d / "dangling")
    os.mkfifo(d / "fifo")
    os.mknod(d / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(d / "block", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    (d / "dir").mkdir()


def _open_dir(path: pathlib.Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


# ----------------------------------------------------------------------------- scan


def test_scan_reports_what_lstat_reports(ramdir: pathlib.Path) -> None:
    _odd_entries(ramdir)
    fd = _open_dir(ramdir)
    try:
        records = _fastpaths.DirScanner(size=128).scan(fd)  # tiny buffer: it must grow
    finally:
        os.close(fd)
    names = sorted(os.listdir(os.fsencode(ramdir)))
    assert sorted(r[0] for r in records) == names
    for name, mode, uid, gid, sec, nsec, size, rdev, nlink, ino, dev in records:
        st = os.lstat(os.path.join(os.fsencode(ramdir), name))
        assert (mode, uid, gid, size, rdev, nlink, ino, dev) == (
            st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_rdev, st.st_nlink, st.st_ino,
            st.st_dev)
        assert sec * 1_000_000_000 + nsec == st.st_mtime_ns


def test_scan_of_an_empty_directory(ramdir: pathlib.Path) -> None:
    fd = _open_dir(ramdir)
    try:
        assert _fastpaths.DirScanner().scan(fd) == []
        assert _fastpaths.DirScanner().scan(fd) == []  # rescans from the start
    finally:
        os.close(fd)


# -------------------------------------------------------------------------- changes


def _same_as_twin(layer: pathlib.Path, lower: pathlib.Path | None,
                  fmt: WhiteoutFormat) -> list[Change]:
    got = compute_changes(layer, lower, fmt)
    assert got == compute_changes_py(layer, lower, fmt)
    assert [type(c.kind) for c in got] == [ChangeKind] * len(got)
    return got


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("width", [3, 40])  # below and above the whole-directory lower scan
def test_changes_match_the_twin_on_odd_trees(ramdir: pathlib.Path, fmt: WhiteoutFormat,
                                             width: int) -> None:
    parent, layer = ramdir / "parent", ramdir / "layer"
    for root in (parent, layer):
        root.mkdir()
        _odd_entries(root)
        for sub in ("same", "opaque", "replaced", "gone"):
            (root / sub).mkdir()
            for i in range(width):
                (root / sub / f"f{i}").write_bytes(b"x")
            os.utime(root / sub, (1_000_000_000, 1_000_000_000))
    (parent / "only-below").mkdir()
    (parent / "only-below" / NEWLINE).write_bytes(b"")
    (parent / "file-then-dir").write_bytes(b"")
    (layer / "file-then-dir").mkdir()
    (layer / "file-then-dir" / NOT_UTF8).write_bytes(b"")
    fd = os.open(layer / "opaque", os.O_RDONLY | os.O_DIRECTORY)
    try:
        make_opaque(fd, fmt)
    finally:
        os.close(fd)
    for name in (NEWLINE, "f1"):  # a whiteout of an odd name, and one inside a directory
        target = layer if name == NEWLINE else layer / "gone"
        os.unlink(target / name)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            make_whiteout(fd, name, fmt)
        finally:
            os.close(fd)
    shutil.rmtree(layer / "replaced")
    (layer / "replaced").write_bytes(b"now a file")
    for sub in ("same", "gone"):
        os.utime(layer / sub, (1_000_000_000, 1_000_000_000))
    with overlay(ramdir / "view", [parent]) as view:
        got = _same_as_twin(layer, view, fmt)
    paths = {c.path: c.kind for c in got}
    assert paths["/" + NEWLINE] is D and paths["/" + NOT_UTF8] is C and paths["/" + LONG] is C
    assert paths["/gone/f1"] is D and paths["/gone"] is C  # rule 4
    assert "/same" not in paths and paths["/same/f0"] is C  # rule 3
    assert paths["/opaque"] is C and paths["/replaced"] is C
    assert paths["/file-then-dir/" + NOT_UTF8] is A
    _same_as_twin(layer, None, fmt)


def test_changes_deep_tree_reopens_directories(ramdir: pathlib.Path) -> None:
    """Deeper than the C walker keeps fds open: both sides are reopened by name, and no fd
    is left behind."""
    parent, layer = ramdir / "parent", ramdir / "layer"
    for root in (parent, layer):
        deep = os.fsencode(root)
        os.mkdir(deep)
        dirs = []
        for i in range(300):
            deep += b"/" + (b"d\n" if i % 2 else b"d\xff")
            os.mkdir(deep)
            dirs.append(deep)
        with open(deep + b"/f", "wb") as f:
            f.write(b"x")
        if root == layer:
            with open(dirs[149] + b"/new", "wb"):
                pass
        for d in dirs:
            os.utime(d, (5, 5))
    fds = len(os.listdir("/proc/self/fd"))
    with overlay(ramdir / "view", [parent]) as view:
        got = _same_as_twin(layer, view, WhiteoutFormat.OVERLAY)
    assert len(os.listdir("/proc/self/fd")) == fds
    # the new file's directory (rule 4), the bottom file (it sorts before "new"), the file
    assert [c.kind for c in got] == [C, C, A]
    assert got[1].path.endswith("/f") and got[2].path == got[0].path + "/new"


def test_changes_never_follow_a_symlink_out(ramdir: pathlib.Path) -> None:
    outside, parent, layer = ramdir / "outside", ramdir / "parent", ramdir / "layer"
    for d in (outside, parent, layer):
        d.mkdir()
    for i in range(20):
        (outside / f"secret{i}").write_bytes(b"s")
    (parent / "d").mkdir()
    (parent / "d" / "x").write_bytes(b"")
    os.symlink(outside, layer / "d")  # a directory below, a symlink to elsewhere here
    (layer / "e").mkdir()  # a symlink to elsewhere below, a directory here
    os.symlink(outside, parent / "e")
    (layer / "e" / "secret1").write_bytes(b"")
    with overlay(ramdir / "view", [parent]) as view:
        got = _same_as_twin(layer, view, WhiteoutFormat.OVERLAY)
    assert [(c.path, c.kind) for c in got] == [("/d", C), ("/e", C), ("/e/secret1", A)]


def test_changes_aufs_whiteout_beside_the_same_name(ramdir: pathlib.Path) -> None:
    """``.wh.x`` beside ``x`` (debris of an AUFS layer): the entry wins, never a DELETE."""
    parent, layer = ramdir / "parent", ramdir / "layer"
    for d in (parent, layer):
        (d / "x").mkdir(parents=True)
        (d / "y").write_bytes(b"")
        os.utime(d / "x", (7, 7))
    (layer / ".wh.x").write_bytes(b"")
    (layer / ".wh.y").write_bytes(b"")
    (layer / ".wh.z").write_bytes(b"")
    with overlay(ramdir / "view", [parent]) as view:
        got = compute_changes(layer, view, WhiteoutFormat.AUFS)
    assert [(c.path, c.kind) for c in got] == [("/x", C), ("/y", C), ("/z", D)]


def test_changes_buffers_grow(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    for i in range(3000):
        (layer / (f"{i:04d}-" + "n" * 100)).write_bytes(b"")
    fd = _open_dir(layer)
    try:
        paths, kinds = _fastpaths.walk_changes(fd, None, expected=1)
    finally:
        os.close(fd)
    assert sorted(paths) == sorted("/" + n for n in os.listdir(layer))
    assert kinds == bytes([_fastpaths.W_ADD]) * 3000


def test_changes_of_an_empty_layer(ramdir: pathlib.Path) -> None:
    assert compute_changes(ramdir, None, WhiteoutFormat.OVERLAY) == []
    assert compute_changes(ramdir, ramdir, WhiteoutFormat.OVERLAY) == []


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_odd_names_links_and_xattrs(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    _odd_entries(layer)
    os.unlink(layer / "null")  # a 1/3 device is fine in a tar, but keep the listing short
    os.setxattr(layer / LONG, "user.b", b"2")
    os.setxattr(layer / LONG, "user.a", b"\x00\x01binary")
    os.setxattr(layer / "dir", "user.dir", b"d")
    os.setxattr(layer / "dir", "trusted.overlay.opaque", b"y")  # private: becomes a marker
    os.setxattr(layer / "dir", "trusted.overlay.origin", b"o")  # private: never written
    fd = _open_dir(layer)
    try:
        make_whiteout(fd, NOT_UTF8 + "-gone", fmt)
    finally:
        os.close(fd)
    out = io.BytesIO()
    n = write_diff(layer, out, fmt)
    data = out.getvalue()
    assert n == len(data) and n % 10240 == 0
    again = io.BytesIO()
    write_diff(layer, again, fmt)
    assert again.getvalue() == data  # deterministic
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members[NEWLINE]).read() == b"nl"  # type: ignore[union-attr]
        assert tar.extractfile(members[NOT_UTF8]).read() == b"raw"  # type: ignore[union-attr]
    assert set(members) == {NEWLINE, NOT_UTF8, LONG, "hardlink", "dangling", "fifo", "block",
                            "dir", "dir/.wh..wh..opq", ".wh." + NOT_UTF8 + "-gone"}
    first, second = sorted([LONG, "hardlink"])
    assert members[second].islnk() and members[second].linkname == first
    assert members["dangling"].linkname == "/nowhere/at/all"
    assert (members["block"].devmajor, members["block"].devminor) == (7, 200)
    assert members["fifo"].isfifo()
    # xattrs as SCHILY records, binary values intact, none of the union filesystem's, in a
    # fixed order: added sorted by name, and libarchive writes the last added first
    assert members[first].pax_headers["SCHILY.xattr.user.a"].encode(
        "utf-8", "surrogateescape") == b"\x00\x01binary"
    assert data.index(b"SCHILY.xattr.user.b=") < data.index(b"SCHILY.xattr.user.a=")
    assert b"SCHILY.xattr.user.dir=d" in data and b"trusted.overlay" not in data
    listing = subprocess.run(["tar", "-tvf", "-"], input=data, capture_output=True, check=True)
    assert listing.stdout.count(b"\n") == len(members)


def test_export_deep_tree_with_hardlinks(ramdir: pathlib.Path) -> None:
    """Deeper than the exporter keeps directory fds open (they are reopened by name)."""
    layer = ramdir / "layer"
    deep = os.fsencode(layer)
    os.mkdir(deep)
    for _ in range(200):
        deep += b"/d"
        os.mkdir(deep)
    with open(deep + b"/f", "wb") as f:
        f.write(b"bottom")
    os.link(deep + b"/f", os.fsencode(layer) + b"/top-link")
    fds = len(os.listdir("/proc/self/fd"))
    out = io.BytesIO()
    write_diff(layer, out, WhiteoutFormat.OVERLAY)
    assert len(os.listdir("/proc/self/fd")) == fds
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
        link = tar.getmember("top-link")
    assert len(names) == 202 and names[-1] == "top-link"
    assert link.islnk() and link.linkname == "d/" * 200 + "f"


def test_export_whiteouts_are_the_same_in_both_formats(ramdir: pathlib.Path) -> None:
    tars = []
    for fmt in FORMATS:
        layer = ramdir / fmt.value
        (layer / "sub").mkdir(parents=True)
        (layer / "sub" / "kept").write_bytes(b"k")
        for d in (layer, layer / "sub"):
            fd = _open_dir(d)
            try:
                make_whiteout(fd, NEWLINE, fmt)
                if d != layer:
                    make_opaque(fd, fmt)
            finally:
                os.close(fd)
            os.utime(d, (9, 9))
        out = io.BytesIO()
        write_diff(layer, out, fmt)
        tars.append(out.getvalue())
    assert tars[0] == tars[1]
    with tarfile.open(fileobj=io.BytesIO(tars[0])) as tar:
        # the whiteout in the opaque sub is redundant and left out; the root's stays
        assert tar.getnames() == [".wh." + NEWLINE, "sub", "sub/.wh..wh..opq", "sub/kept"]


# ------------------------------------------------------------------- the C vs its twin

_NAMES = ["a", "a-b", NEWLINE, NOT_UTF8, ".wh.a", ".wh..wh..opq", ".wh..wh.plnk"]
_KINDS = ["file", "dir", "link", "device-whiteout"]


@st.composite
def _trees(draw: st.DrawFn) -> list[tuple[str, str]]:
    paths = draw(st.lists(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3)
                          .map("/".join), max_size=10, unique=True))
    return [(p, draw(st.sampled_from(_KINDS))) for p in sorted(paths)]


def _build(root: pathlib.Path, tree: list[tuple[str, str]], wide: bool) -> None:
    root.mkdir()
    for path, kind in tree:
        target = root / path
        if not target.parent.is_dir():
            continue  # its parent is no directory here: drawn out of order
        if os.path.lexists(target):
            continue
        if kind == "file":
            target.write_bytes(path.encode("utf-8", "surrogateescape"))
        elif kind == "dir":
            target.mkdir()
            if wide:  # past the count from which the lower directory is read whole
                for i in range(20):
                    (target / f"w{i}").write_bytes(b"")
        elif kind == "link":
            os.symlink("/elsewhere", target)
        else:
            os.mknod(target, 0o600 | stat.S_IFCHR, 0)
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            os.utime(os.path.join(dirpath, d), (3, 3), follow_symlinks=False)


@pytest.mark.parametrize("fmt", FORMATS)
@given(top=_trees(), below=_trees(), wide=st.booleans())
def test_changes_equal_the_python_twin(ram_root: pathlib.Path, fmt: WhiteoutFormat,
                                       top: list[tuple[str, str]],
                                       below: list[tuple[str, str]], wide: bool) -> None:
    work = ram_root / ("walk-" + uuid.uuid4().hex[:8])
    work.mkdir()
    try:
        _build(work / "top", top, wide)
        _build(work / "below", below, wide)
        for lower in (work / "below", None):
            got = compute_changes(work / "top", lower, fmt)
            if any(".wh.a" in p.split("/") for p, _ in top):
                # ".wh.a" beside "a": the twin's answer depends on readdir order
                continue
            assert got == compute_changes_py(work / "top", lower, fmt)
    finally:
        shutil.rmtree(work)
