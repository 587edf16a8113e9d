"""Full disk: a store on a small tmpfs. An apply_diff that does not fit fails with
:class:`aufs.NoSpace` naming the layer, and that layer, every other layer and the free space are
exactly as before; the store keeps working afterwards."""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import shutil
from collections.abc import Iterator

import pytest

import aufs
from aufs import mounts

from .trees import build_tar, gzip_bytes, mounts_below, store_state

SIZE = 8 << 20


@pytest.fixture
def small_store(ramdir: pathlib.Path) -> Iterator[tuple[aufs.Driver, pathlib.Path]]:
    """A store with three layers on an 8 MiB tmpfs (4096 inodes)."""
    disk = ramdir / "small"
    disk.mkdir()
    mounts.mount("tmpfs", disk, "tmpfs", data=f"size={SIZE},nr_inodes=4096,mode=0755")
    try:
        d = aufs.Driver(disk / "store", backend="overlay")
        d.create("a")
        d.apply_diff("a", build_tar([("dir", "etc"), ("file", "etc/a", b"a" * 1_000_000)]))
        d.create("b", parent="a")
        d.apply_diff("b", build_tar([("dir", "srv")] + [("file", f"srv/{i}", b"b" * 5000) for i in range(60)]))
        d.create("victim", parent="b")
        d.apply_diff("victim", build_tar([("dir", "v"), ("file", "v/keep", b"keep" * 1000), ("file", "etc/a", b"new")]))
        yield d, disk
        shutil.rmtree(disk / "ballast", ignore_errors=True)  # a failed test may leave the disk full
        d.cleanup()
    finally:
        mounts.unmount(disk, lazy=True)


def _free(path: pathlib.Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_bavail, st.f_favail


def _assert_fails_cleanly(d: aufs.Driver, disk: pathlib.Path, source: object) -> aufs.NoSpace:
    before, free_before = store_state(d.home), _free(disk)
    with pytest.raises(aufs.NoSpace) as info:
        d.apply_diff("victim", source)  # type: ignore[arg-type]
    assert info.value.layer_id == "victim", f"NoSpace does not name the layer: {info.value!r}"
    assert "victim" in str(info.value)
    assert store_state(d.home) == before
    assert _free(disk) == free_before  # the staging clone and the partial files are gone
    assert os.listdir(d.home / "tmp") == []
    assert d.check().clean, str(d.check())
    assert mounts_below(d.home) == []
    # the store still works: a layer that fits goes in
    d.apply_diff("victim", build_tar([("file", "fits", b"f" * 1000)]))
    with d.mount("victim") as root:
        assert pathlib.Path(root, "fits").read_bytes() == b"f" * 1000
        assert pathlib.Path(root, "v", "keep").read_bytes() == b"keep" * 1000
    return info.value


def test_one_entry_larger_than_the_disk(small_store: tuple[aufs.Driver, pathlib.Path]) -> None:
    d, disk = small_store
    _assert_fails_cleanly(d, disk, build_tar([("file", "huge", b"h" * (2 * SIZE))]))


def test_many_entries_filling_the_disk(small_store: tuple[aufs.Driver, pathlib.Path]) -> None:
    d, disk = small_store
    entries = [("dir", "fill")] + [("file", f"fill/{i:03d}", bytes([i % 251]) * 400_000) for i in range(40)]
    _assert_fails_cleanly(d, disk, build_tar(entries))


def test_compressed_stream_through_a_pipe(small_store: tuple[aufs.Driver, pathlib.Path]) -> None:
    """The size is unknown until the end: gzip of 32 MiB of zeros, read from a file object."""
    d, disk = small_store
    data = gzip_bytes(build_tar([("file", f"z{i}", bytes(4 << 20)) for i in range(8)]))
    _assert_fails_cleanly(d, disk, io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]


def test_out_of_inodes_while_cloning(small_store: tuple[aufs.Driver, pathlib.Path]) -> None:
    """The staging clone itself cannot be built (no inodes left for its directories)."""
    d, disk = small_store
    d.create("wide")
    d.apply_diff("wide", build_tar([("dir", f"d{i}") for i in range(1500)]))
    ballast = disk / "ballast"
    ballast.mkdir()
    i = 0
    try:
        while True:  # eat the remaining inodes, then give a few hundred back
            os.mkdir(ballast / str(i))
            i += 1
    except OSError:
        pass
    for j in range(i - 1, i - 301, -1):
        os.rmdir(ballast / str(j))
    before, free_before = store_state(d.home), _free(disk)
    with pytest.raises(aufs.NoSpace) as info:
        d.apply_diff("wide", build_tar([("file", "x", b"x")]))
    assert info.value.layer_id == "wide"
    assert store_state(d.home) == before
    assert _free(disk) == free_before
    assert d.check().clean, str(d.check())


def _exhaust_inodes(disk: pathlib.Path) -> None:
    ballast = disk / "ballast"
    ballast.mkdir()
    i = 0
    try:
        while True:
            os.mkdir(ballast / str(i))
            i += 1
    except OSError:
        pass


def test_create_on_a_full_disk_leaves_nothing(small_store: tuple[aufs.Driver, pathlib.Path]) -> None:
    d, disk = small_store
    _exhaust_inodes(disk)
    before = store_state(d.home)
    with pytest.raises(aufs.NoSpace) as info:
        d.create("new", parent="b")
    assert info.value.layer_id == "new"
    assert store_state(d.home) == before and not d.exists("new")
    assert os.listdir(d.home / "tmp") == []
    assert d.check().clean, str(d.check())


def test_a_source_that_fails_midway(small_store: tuple[aufs.Driver, pathlib.Path]) -> None:
    """A reader that raises partway (a network stream dropping): its error, the layer unchanged."""
    d, _disk = small_store

    class Dropping(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.at = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
            if self.at > len(self.data) // 2:
                raise ConnectionResetError("peer went away")
            n = min(len(buf), 4096, len(self.data) - self.at)
            buf[:n] = self.data[self.at:self.at + n]
            self.at += n
            return n

    before = store_state(d.home)
    data = build_tar([("file", f"f{i}", b"d" * 10_000) for i in range(50)])
    with pytest.raises((ConnectionResetError, aufs.ArchiveError)):
        d.apply_diff("victim", io.BufferedReader(Dropping(data)))
    assert store_state(d.home) == before
    assert os.listdir(d.home / "tmp") == []


def test_get_on_a_full_disk(small_store: tuple[aufs.Driver, pathlib.Path]) -> None:
    """No inode left: get fails with NoSpace naming the layer (or works), leaving no mount, and
    works again once space is freed; check() still runs."""
    d, disk = small_store
    d.create("fresh", parent="b")  # never mounted: its lock and reference files do not exist yet
    _exhaust_inodes(disk)
    with contextlib.suppress(aufs.NoSpace):
        d.put("fresh")  # a stray put: nothing to give back, but NoSpace is no lie either
    try:
        path = d.get("fresh")
    except aufs.NoSpace as exc:
        assert exc.layer_id == "fresh"
        assert not d.is_mounted("fresh")
    else:
        assert pathlib.Path(path, "etc", "a").is_file()
        d.put("fresh")
    assert mounts_below(d.home) == []
    assert d.check().clean, str(d.check())
    shutil.rmtree(disk / "ballast")
    with d.mount("fresh") as root:
        assert pathlib.Path(root, "etc", "a").is_file()
