"""Archives as the field test met them (issue 9, items 7, 10 and 12), applied through the store.

* item 7: uid/gid 4294967295 in a GNU base-256 header (CPython's testtar.tar has such a
  member, `gnu/regtype-gnu-uid`; the same header is built here with tarfile's GNU format) is
  extracted as GNU tar and bsdtar extract it: the id is left as the extracting process made it;
* item 10: the malformed whiteouts `.wh.`, `.wh..` and `.wh...`, at the root or below, are an
  ArchiveError and the layer is left exactly as it was;
* item 12: an error names the entry that failed, not the one before it, and a header libarchive
  cannot parse is an ArchiveError, never an UnsafeArchive.
"""
from __future__ import annotations

import io
import os
import pathlib
import shutil
import subprocess
import tarfile
from collections.abc import Iterator

import pytest

import aufs
from aufs import ArchiveError, UnsafeArchive

from .apply_helpers import entry, make_tar, snapshot

BASE = [entry("etc", "dir"), entry("etc/keep", data=b"kept"), entry("d", "dir"), entry("d/x", data=b"x")]


@pytest.fixture
def driver(ramdir: pathlib.Path) -> Iterator[aufs.Driver]:
    d = aufs.Driver(ramdir / "store")
    try:
        d.create("base")
        d.apply_diff("base", make_tar(BASE))
        yield d
    finally:
        d.cleanup()


def diff_dir(d: aufs.Driver, layer_id: str) -> str:
    return str(d.diff_dir(layer_id)) if hasattr(d, "diff_dir") else str(
        d._layout.diff_dir(layer_id))  # before issue 13's Driver.diff_dir


# --- item 7 ---------------------------------------------------------------------------------

MAX_ID = 4294967295


def gnu_uid_tar() -> bytes:
    """A GNU-format tar whose ids need base-256 (too big for the 7 octal digits)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, uid, gid in (("gnu/regtype-gnu-uid", MAX_ID, MAX_ID), ("gnu/uid-only", MAX_ID, 7),
                               ("gnu/gid-only", 1000, MAX_ID), ("gnu/big-but-fine", 3000000, 3000001)):
            ti = tarfile.TarInfo(name)
            ti.uid, ti.gid, ti.size, ti.mode, ti.mtime = uid, gid, 3, 0o644, 1_600_000_000
            tar.addfile(ti, io.BytesIO(b"abc"))
    data = buf.getvalue()
    assert b"\x80" in data[:512][108:124] or b"\xff" in data[:512][108:124]  # base-256 fields
    return data


def owners(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {p.name: (os.lstat(p).st_uid, os.lstat(p).st_gid) for p in (root / "gnu").iterdir()}


def test_uid_4294967295_in_gnu_base256_header(driver: aufs.Driver, ramdir: pathlib.Path) -> None:
    data = gnu_uid_tar()
    driver.create("top", parent="base")
    driver.apply_diff("top", data)
    layer = pathlib.Path(diff_dir(driver, "top"))
    assert (layer / "gnu" / "regtype-gnu-uid").read_bytes() == b"abc"
    got = owners(layer)
    assert got["big-but-fine"] == (3000000, 3000001)
    # (uid_t)-1 leaves the id as the writer made it: this process's own
    me = (os.geteuid(), os.getegid())
    assert got["regtype-gnu-uid"] == me
    assert got["uid-only"] == (me[0], 7)
    assert got["gid-only"] == (1000, me[1])
    # the same as GNU tar, extracting as root with the archive's owners
    if shutil.which("tar"):
        ref = ramdir / "gnutar"
        ref.mkdir()
        subprocess.run(["tar", "-xpf", "-", "--same-owner", "--numeric-owner", "-C", str(ref)],
                       input=data, check=True)
        assert owners(ref) == got


# --- item 10 --------------------------------------------------------------------------------

MALFORMED = [".wh.", ".wh..", ".wh..."]


@pytest.mark.parametrize("where", ["", "d/", "new/deep/"])
@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_whiteout_is_refused_layer_unchanged(driver: aufs.Driver, where: str, name: str) -> None:
    driver.create("top", parent="base")
    driver.apply_diff("top", make_tar([entry("top-file", data=b"t")]))
    before = snapshot(diff_dir(driver, "top"))
    tar = make_tar([entry("other", data=b"o"), entry("d/.wh.x"), entry(where + name), entry("after", data=b"a")])
    with pytest.raises(ArchiveError) as info:
        driver.apply_diff("top", tar)
    assert not isinstance(info.value, UnsafeArchive)
    assert info.value.path == where + name
    assert "whiteout" in str(info.value)
    assert snapshot(diff_dir(driver, "top")) == before


def test_valid_whiteouts_next_to_the_malformed_names_still_work(driver: aufs.Driver) -> None:
    driver.create("top", parent="base")
    driver.apply_diff("top", make_tar([entry("d/...x", data=b"dots"), entry("d/.wh.x"), entry(".wh.etc")]))
    driver.create("up", parent="top")
    driver.apply_diff("up", make_tar([entry("d/.wh....x")]))  # deletes `...x`: a fine name
    with driver.mount("up") as root:
        assert sorted(os.listdir(root)) == ["d"]
        assert os.listdir(os.path.join(root, "d")) == []
    with driver.mount("top") as root:
        assert os.listdir(os.path.join(root, "d")) == ["...x"]


# --- item 12 --------------------------------------------------------------------------------


def corrupt_header(data: bytes, index: int) -> bytes:
    """The tar with the checksum of its ``index``-th 512-byte block broken."""
    raw = bytearray(data)
    start = index * 512
    raw[start + 148:start + 156] = b"0000000\0"
    return bytes(raw)


def ustar(entries: list) -> bytes:
    return make_tar(entries, fmt=tarfile.USTAR_FORMAT)


def test_a_broken_header_is_named_as_the_entry_after_the_last_good_one(ramdir: pathlib.Path) -> None:
    from aufs.apply import apply_tar
    from aufs.whiteouts import WhiteoutFormat

    good = ustar([entry("first", data=b"1" * 10), entry("second", data=b"2" * 10), entry("third")])
    # block 0: first's header, 1: its data, 2: second's header
    target = ramdir / "t"
    target.mkdir()
    with pytest.raises(ArchiveError) as info:
        apply_tar(target, corrupt_header(good, 2), WhiteoutFormat.OVERLAY)
    message = str(info.value)
    assert not isinstance(info.value, UnsafeArchive)
    assert "entry 2" in message, message
    assert info.value.path != "first", "the entry before the bad one is not the one that failed"
    # the first header broken (a GNU long name cut short): not "entry ''"
    target2 = ramdir / "t2"
    target2.mkdir()
    long = make_tar([entry("a" * 300, data=b"x")], fmt=tarfile.GNU_FORMAT)
    with pytest.raises(ArchiveError) as info:
        apply_tar(target2, long[:1024], WhiteoutFormat.OVERLAY)
    assert "''" not in str(info.value) and "first entry" in str(info.value), str(info.value)


def test_truncated_data_names_its_own_entry(ramdir: pathlib.Path) -> None:
    from aufs.apply import apply_tar
    from aufs.whiteouts import WhiteoutFormat

    data = ustar([entry("first", data=b"1" * 10), entry("second", data=b"2" * 5000)])
    target = ramdir / "t"
    target.mkdir()
    with pytest.raises(ArchiveError) as info:
        apply_tar(target, data[:512 * 4], WhiteoutFormat.OVERLAY)
    assert info.value.path == "second", str(info.value)
    assert "'second'" in str(info.value)


def test_a_header_without_a_name_is_an_archive_error_not_unsafe(driver: aufs.Driver) -> None:
    """A header that parses to no name at all (libarchive's sparse_skip_entry archive gave
    "archive entry '' would be written outside the layer directory")."""
    before = snapshot(diff_dir(driver, "base"))
    ti = tarfile.TarInfo("")
    ti.size = 3
    raw = bytearray(make_tar([(ti, b"abc")], fmt=tarfile.GNU_FORMAT))
    with pytest.raises(ArchiveError) as info:
        driver.apply_diff("base", bytes(raw))
    assert not isinstance(info.value, UnsafeArchive), str(info.value)
    assert snapshot(diff_dir(driver, "base")) == before
