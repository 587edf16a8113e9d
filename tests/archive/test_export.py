"""``write_diff``: the layer directory as a deterministic pax tar that GNU tar and bsdtar read."""
from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import pathlib
import stat
import subprocess
import threading
from collections.abc import Iterator

import libarchive
import pytest

from aufs.errors import NoSpace
from aufs.export import write_diff
from aufs.whiteouts import WhiteoutFormat, make_opaque, make_whiteout

FORMATS = list(WhiteoutFormat)
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep
MTIME = 1_600_000_000


def _fd(path: pathlib.Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def _settle_times(root: pathlib.Path) -> None:
    """Give every entry the same mtime, deepest first (so directories keep theirs)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(MTIME * 10**9, MTIME * 10**9), follow_symlinks=False)
    os.utime(root, ns=(MTIME * 10**9, MTIME * 10**9))


def build_layer(root: pathlib.Path, fmt: WhiteoutFormat) -> None:
    """One layer with every kind of entry, whiteouts and an opaque directory, in ``fmt``."""
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"hello\n")
    os.setxattr(root / "d" / "f", "user.comment", b"kept")
    os.setxattr(root / "d" / "f", "security.capability", CAPABILITY)
    os.setxattr(root / "d" / "f", "trusted.overlay.origin", b"\x00private")
    os.link(root / "d" / "f", root / "d" / "g")
    os.link(root / "d" / "f", root / "a-first")  # sorts before d/: the link target
    os.setxattr(root / "d", "trusted.note", b"dir xattr")
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)
    (root / "owned").mkdir(mode=0o1777)
    os.chmod(root / "owned", 0o1777)
    os.chown(root / "owned", 1000, 1001)
    os.symlink("/etc/passwd", root / "abs-link")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    (root / "é-utf8").write_bytes(b"x")
    dfd = _fd(root)
    subfd = _fd(root / "d")
    try:
        make_whiteout(dfd, "gone", fmt)
        make_whiteout(subfd, "x", fmt)
        make_opaque(subfd, fmt)
    finally:
        os.close(dfd)
        os.close(subfd)
    if fmt is WhiteoutFormat.AUFS:
        # AUFS bookkeeping that must never leave the layer
        (root / ".wh..wh.plnk").mkdir()
        (root / ".wh..wh.plnk" / "123.456").write_bytes(b"pseudo-link")
        (root / ".wh..wh.aufs").write_bytes(b"")
    else:
        os.mknod(root / "d" / ".wh..opq", stat.S_IFCHR, os.makedev(0, 0))  # fuse-overlayfs stray
    _settle_times(root)


def listing(tar: pathlib.Path, tool: str = "tar") -> list[str]:
    out = subprocess.run([tool, "-tf", str(tar)], check=True, capture_output=True).stdout
    return out.decode().splitlines()


EXPECTED_NAMES = [
    ".wh.gone",
    "a-first",
    "abs-link",
    "blk",
    "d/",
    "d/.wh..wh..opq",  # and no d/.wh.x: d is opaque, a whiteout in it is redundant (issue 9, item 11)
    "d/f",
    "d/g",
    "fifo",
    "null",
    "owned/",
    "suid",
    "é-utf8",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_listing_order_and_tools(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    build_layer(layer, fmt)
    out = ramdir / "out.tar"
    written = write_diff(layer, out, fmt)
    assert written == out.stat().st_size
    assert written % 10240 == 0
    assert listing(out, "tar") == EXPECTED_NAMES
    assert listing(out, "bsdtar") == EXPECTED_NAMES
    verbose = subprocess.run(["tar", "-tvf", str(out)], check=True, capture_output=True, text=True).stdout
    assert "d/g link to a-first" in verbose
    assert "d/f link to a-first" in verbose


def test_both_formats_give_identical_bytes(ramdir: pathlib.Path) -> None:
    tars = []
    for fmt in FORMATS:
        layer = ramdir / fmt.value
        layer.mkdir()
        build_layer(layer, fmt)
        buf = io.BytesIO()
        assert write_diff(layer, buf, fmt) == len(buf.getvalue())
        tars.append(buf.getvalue())
    assert tars[0] == tars[1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_deterministic(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    build_layer(layer, fmt)
    first = ramdir / "1.tar"
    write_diff(layer, first, fmt)
    os.utime(layer / "d" / "f", ns=(1, MTIME * 10**9))  # atime changes must not matter
    second = io.BytesIO()
    write_diff(layer, second, fmt)
    assert first.read_bytes() == second.getvalue()


def _entries(data: bytes) -> list[libarchive.ArchiveEntry]:
    with libarchive.memory_reader(data) as archive:
        return [
            {
                "name": e.pathname,
                "type": e.filetype,
                "perm": e.perm,
                "uid": e.uid,
                "gid": e.gid,
                "uname": e.uname,
                "mtime": e.mtime,
                "size": e.size,
                "link": e.linkpath,
                "rdev": (e.rdevmajor, e.rdevminor),
                "atime": e.atime,
                "ctime": e.ctime,
            }
            for e in archive
        ]


def test_headers(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    build_layer(layer, WhiteoutFormat.OVERLAY)
    buf = io.BytesIO()
    write_diff(layer, buf, WhiteoutFormat.OVERLAY)
    by_name = {e["name"]: e for e in _entries(buf.getvalue())}
    assert by_name[".wh.gone"]["type"] == stat.S_IFREG and by_name[".wh.gone"]["size"] == 0
    assert by_name["d/.wh..wh..opq"]["size"] == 0
    assert by_name["suid"]["perm"] == 0o4755
    assert by_name["owned/"]["perm"] == 0o1777
    assert (by_name["owned/"]["uid"], by_name["owned/"]["gid"]) == (1000, 1001)
    assert by_name["owned/"]["uname"] in (None, "")  # numeric only
    assert by_name["null"]["rdev"] == (1, 3)
    assert by_name["blk"]["rdev"] == (7, 0)
    assert by_name["abs-link"]["link"] == "/etc/passwd"
    assert by_name["a-first"]["size"] == 6
    assert by_name["d/f"]["link"] == "a-first"
    assert by_name["suid"]["mtime"] == MTIME
    assert all(not e["atime"] and not e["ctime"] for e in by_name.values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_gnu_tar_extracts_xattrs_and_data(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    build_layer(layer, fmt)
    big = os.urandom(3 * 1024 * 1024 + 17)  # several data blocks, odd tail
    (layer / "big").write_bytes(big)
    out = ramdir / "out.tar"
    write_diff(layer, out, fmt)
    dest = ramdir / "dest"
    dest.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "-xpf", str(out), "-C", str(dest)],
        check=True,
        capture_output=True,
    )
    assert (dest / "big").read_bytes() == big
    assert os.getxattr(dest / "d" / "f", "security.capability") == CAPABILITY
    assert os.getxattr(dest / "d" / "f", "user.comment") == b"kept"
    assert os.getxattr(dest / "d", "trusted.note") == b"dir xattr"
    assert "trusted.overlay.origin" not in os.listxattr(dest / "d" / "f")
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "d")
    assert os.stat(dest / "d" / "g").st_ino == os.stat(dest / "a-first").st_ino
    assert (dest / ".wh.gone").stat().st_size == 0
    assert stat.S_ISCHR(os.lstat(dest / "null").st_mode)
    assert os.readlink(dest / "abs-link") == "/etc/passwd"


def test_root_opaque_is_first(ramdir: pathlib.Path) -> None:
    for fmt in FORMATS:
        layer = ramdir / fmt.value
        layer.mkdir()
        (layer / "a").write_bytes(b"")
        fd = _fd(layer)
        try:
            make_opaque(fd, fmt)
        finally:
            os.close(fd)
        out = ramdir / f"{fmt.value}.tar"
        write_diff(layer, out, fmt)
        assert listing(out) == [".wh..wh..opq", "a"]


def test_sort_is_by_name_bytes_per_directory(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    for name in ["a/b", "a-b", "B", "a/c/d", "ab", "\u00e9", "z"]:
        path = layer / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    out = ramdir / "out.tar"
    write_diff(layer, out, WhiteoutFormat.OVERLAY)
    assert listing(out) == ["B", "a/", "a/b", "a/c/", "a/c/d", "a-b", "ab", "z", "\u00e9"]


def test_empty_layer(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    out = ramdir / "out.tar"
    assert write_diff(layer, out, WhiteoutFormat.AUFS) == 10240
    assert listing(out) == []


def _sized_layer(root: pathlib.Path) -> None:
    """Files that cross the output buffer (256 KiB) and libarchive's 1 MiB blocks in every
    way: larger than both, a little under, many small ones, empty ones."""
    rng = __import__("random").Random(7)
    blob = rng.randbytes(3 << 20)
    root.mkdir()
    sizes = [0, 1, 511, 512, 513, 10240, (1 << 18) - 1, 1 << 18, (1 << 18) + 1, (1 << 20) + 7,
             3 << 20] + [rng.randrange(1, 40000) for _ in range(150)]
    for i, size in enumerate(sizes):
        d = root / f"d{i % 7}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:03d}").write_bytes(blob[:size])
    _settle_times(root)


def _pipe_bytes(layer: pathlib.Path, close_reader: bool = False) -> tuple[int, bytes]:
    read_fd, write_fd = os.pipe()
    received = bytearray()

    def drain() -> None:
        with os.fdopen(read_fd, "rb") as r:
            while not close_reader:
                chunk = r.read(65536)
                if not chunk:
                    return
                received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    if close_reader:
        reader.join()
    try:
        with os.fdopen(write_fd, "wb") as w:
            written = write_diff(layer, w, WhiteoutFormat.OVERLAY)
    finally:
        reader.join()
    return written, bytes(received)


def test_every_output_gives_the_same_bytes(ramdir: pathlib.Path) -> None:
    """A path, a pipe and a plain file (written straight to their fd) and a file object
    without an fd (libarchive's own blocks) get the same bytes, padded the same way."""
    layer = ramdir / "layer"
    _sized_layer(layer)
    buffered = io.BytesIO()
    total = write_diff(layer, buffered, WhiteoutFormat.OVERLAY)
    expected = buffered.getvalue()
    # padded as libarchive pads with 1 MiB blocks: the last block to a multiple of 10240
    assert total == len(expected) and total % (1 << 20) % 10240 == 0 and total > 6 << 20
    assert write_diff(layer, ramdir / "out.tar", WhiteoutFormat.OVERLAY) == total
    assert (ramdir / "out.tar").read_bytes() == expected
    assert _pipe_bytes(layer) == (total, expected)
    # a file object already holding data: the archive follows it, and the object knows
    # where its next byte goes
    with open(ramdir / "appended", "wb") as f:
        f.write(b"header bytes, still in the object's buffer")
        assert write_diff(layer, f, WhiteoutFormat.OVERLAY) == total
        f.write(b"trailer")
    assert (ramdir / "appended").read_bytes() == (
        b"header bytes, still in the object's buffer" + expected + b"trailer")
    assert listing(ramdir / "out.tar") == sorted(listing(ramdir / "out.tar"), key=lambda n: n)


def test_streams_into_a_pipe(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    (layer / "data").write_bytes(os.urandom(2_500_000))
    expected = io.BytesIO()
    write_diff(layer, expected, WhiteoutFormat.OVERLAY)
    assert _pipe_bytes(layer) == (len(expected.getvalue()), expected.getvalue())


def test_a_wrapping_file_object_is_not_bypassed(ramdir: pathlib.Path) -> None:
    """GzipFile hands out its underlying file's fd: the archive must still go through it."""
    import gzip

    layer = ramdir / "layer"
    _sized_layer(layer)
    expected = io.BytesIO()
    write_diff(layer, expected, WhiteoutFormat.OVERLAY)
    with open(ramdir / "out.tar.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as gz:
        write_diff(layer, gz, WhiteoutFormat.OVERLAY)
    assert gzip.decompress((ramdir / "out.tar.gz").read_bytes()) == expected.getvalue()


def test_a_pipe_whose_reader_left_raises_broken_pipe(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    _sized_layer(layer)
    with pytest.raises(BrokenPipeError):
        _pipe_bytes(layer, close_reader=True)


def test_a_pipe_is_grown(ramdir: pathlib.Path) -> None:
    """So the reader drains one write while the next is made (see BENCHMARKS.md)."""
    import fcntl

    layer = ramdir / "layer"
    layer.mkdir()
    (layer / "f").write_bytes(b"x")
    for size, expected in ((4096, 1 << 20), (1 << 20, 1 << 20)):
        read_fd, write_fd = os.pipe()
        try:
            fcntl.fcntl(write_fd, 1031, size)  # F_SETPIPE_SZ
            with os.fdopen(os.dup(write_fd), "wb") as w:
                write_diff(layer, w, WhiteoutFormat.OVERLAY)
            assert fcntl.fcntl(write_fd, 1032) == expected  # F_GETPIPE_SZ
            assert len(os.read(read_fd, 1 << 20)) == 10240
        finally:
            os.close(read_fd)
            os.close(write_fd)


class _Broken(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise BrokenPipeError(32, "reader went away")


def test_file_object_errors_propagate(ramdir: pathlib.Path) -> None:
    (ramdir / "f").write_bytes(os.urandom(2_500_000))
    with pytest.raises(BrokenPipeError):
        write_diff(ramdir, _Broken(), WhiteoutFormat.OVERLAY)


@pytest.fixture
def tiny_fs(ramdir: pathlib.Path) -> Iterator[pathlib.Path]:
    target = ramdir / "tiny"
    target.mkdir()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", 0, b"size=64k") != 0:
        pytest.skip("cannot mount a small tmpfs")
    try:
        yield target
    finally:
        libc.umount2(os.fsencode(target), 2)


def test_no_space_is_nospace(ramdir: pathlib.Path, tiny_fs: pathlib.Path) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    (layer / "big").write_bytes(os.urandom(1_000_000))
    with pytest.raises(NoSpace):
        write_diff(layer, tiny_fs / "out.tar", WhiteoutFormat.OVERLAY)


def test_no_space_through_a_file_object(ramdir: pathlib.Path, tiny_fs: pathlib.Path) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    (layer / "big").write_bytes(os.urandom(1_000_000))
    with open(tiny_fs / "out.tar", "wb") as f, pytest.raises(NoSpace):
        write_diff(layer, f, WhiteoutFormat.OVERLAY)


def test_missing_layer_dir(ramdir: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_diff(ramdir / "nope", io.BytesIO(), WhiteoutFormat.OVERLAY)


def test_awkward_names_links_and_ids(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    long_dir = layer / ("d" * 120)
    long_dir.mkdir()
    (long_dir / ("f" * 200)).write_bytes(b"long")
    raw = os.fsencode(layer) + b"/not-utf8-\xff\xfe"
    with open(raw, "wb") as f:
        f.write(b"bytes")
    (layer / "new\nline").write_bytes(b"")
    os.symlink("t" * 300, layer / "long-target")
    (layer / "big-ids").write_bytes(b"")
    os.chown(layer / "big-ids", 3_000_000, 4_000_000)  # beyond ustar's 7 octal digits
    out = ramdir / "out.tar"
    write_diff(layer, out, WhiteoutFormat.OVERLAY)
    for tool in ("tar", "bsdtar"):
        dest = ramdir / f"x-{tool}"
        dest.mkdir()
        subprocess.run([tool, "-xpf", str(out), "-C", str(dest)], check=True, capture_output=True)
        assert (dest / ("d" * 120) / ("f" * 200)).read_bytes() == b"long"
        with open(os.fsencode(dest) + b"/not-utf8-\xff\xfe", "rb") as f:
            assert f.read() == b"bytes"
        assert (dest / "new\nline").exists()
        assert os.readlink(dest / "long-target") == "t" * 300
        st = os.lstat(dest / "big-ids")
        assert (st.st_uid, st.st_gid) == (3_000_000, 4_000_000)


def test_deep_tree_does_not_recurse(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    deep = str(layer)
    os.mkdir(deep)
    for _ in range(1500):  # deeper than Python's recursion limit (os.makedirs would recurse)
        with open(os.path.join(deep, "z"), "wb") as f:  # written after the way down and back
            f.write(b"z")
        deep += "/a"
        os.mkdir(deep)
    with open(os.path.join(deep, "f"), "wb") as f:
        f.write(b"bottom")
    buf = io.BytesIO()
    write_diff(layer, buf, WhiteoutFormat.OVERLAY)
    names = [e["name"] for e in _entries(buf.getvalue())]
    assert len(names) == 3001
    assert names[1499] == "a/" * 1500
    assert names[1500] == "a/" * 1500 + "f"
    assert names[1501] == "a/" * 1499 + "z"
    assert names[-1] == "z"
    assert len(os.listdir("/proc/self/fd")) < 64  # no descriptor left open
