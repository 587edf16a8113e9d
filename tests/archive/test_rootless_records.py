"""The rootless writer and reader (aufs.rootless) on their own: a layer tar applied with
``rootless=True`` and written back with ``rootless_owner`` gives the bytes the ordinary
writer and reader give, whoever runs it (here root, so fuzz-asan covers these C paths; the
tests as an ordinary user are in tests/rootless)."""
from __future__ import annotations

import io
import os
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aufs.apply import apply_tar
from aufs.export import write_diff
from aufs.rootless import OVERRIDE_XATTR, XATTR_PREFIX
from aufs.whiteouts import WhiteoutFormat

from .apply_helpers import entry, make_tar

CAP = bytes.fromhex("0100000200200000000000000000000000000000")


def _both(tmp: pathlib.Path, tar: bytes) -> tuple[bytes, bytes, pathlib.Path]:
    plain, rootless = tmp / "plain", tmp / "rootless"
    plain.mkdir()
    rootless.mkdir()
    apply_tar(plain, tar, WhiteoutFormat.AUFS)
    apply_tar(rootless, tar, WhiteoutFormat.AUFS, rootless=True)
    want, got = io.BytesIO(), io.BytesIO()
    write_diff(plain, want, WhiteoutFormat.AUFS)
    write_diff(rootless, got, WhiteoutFormat.AUFS, rootless_owner=(os.geteuid(), os.getegid()))
    return want.getvalue(), got.getvalue(), rootless


def test_everything_a_user_cannot_make_round_trips(ramdir: pathlib.Path) -> None:
    tar = make_tar([
        entry("dev", "dir"),
        entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
        entry("dev/sda", "block", mode=0o660, gid=6, devmajor=8, devminor=0),
        entry("dev/initctl", "fifo", mode=0o600),
        entry("bin", "dir", mode=0o555),
        entry("bin/su", data=b"su", mode=0o4755),
        entry("bin/wall", data=b"w", mode=0o2755, gid=5),
        entry("bin/ping", data=b"p", xattrs={"security.capability": CAP, "user.x": b"1", "trusted.t": b"2"}),
        entry("bin/ping2", "hardlink", link="bin/ping"),
        entry("bin/sh", "symlink", link="dash"),
        entry("bin/theirs", "symlink", link="sh", uid=1000, gid=3000000),
        entry("home", "dir"),
        entry("home/far", "dir", mode=0o700, uid=3000000, gid=3000000),
        entry("home/far/n", data=b"n", mode=0o000, uid=3000000, gid=3000000),
        entry("tmp", "dir", mode=0o1777),
        entry("etc/.wh.gone"),
    ])
    want, got, disk = _both(ramdir, tar)
    assert got == want
    # on disk: no device, nothing setuid, owner can read and write, the records are there
    st = os.lstat(disk / "dev" / "null")
    assert st.st_mode & 0o170000 == 0o100000 and st.st_mode & 0o600 == 0o600
    assert os.getxattr(disk / "dev" / "null", OVERRIDE_XATTR) == b"0:0:0666:char-1-3"
    assert os.getxattr(disk / "bin" / "su", OVERRIDE_XATTR) == b"0:0:04755:file"
    assert not os.lstat(disk / "bin" / "su").st_mode & 0o7000
    assert os.getxattr(disk / "bin" / "ping", XATTR_PREFIX + "security.capability") == CAP
    assert OVERRIDE_XATTR not in os.listxattr(disk / "bin" / "ping")  # 0:0 0644: nothing to record
    assert os.lstat(disk / "home" / "far" / "n").st_mode & 0o777 == 0o600
    assert os.getxattr(disk / "bin", "user.aufs.lowner.theirs") == b"1000:3000000:sh"
    assert "user.aufs.lowner.sh" not in os.listxattr(disk / "bin")


def test_a_symlink_replaced_by_a_root_one_loses_its_record(ramdir: pathlib.Path) -> None:
    first = make_tar([entry("l", "symlink", link="a", uid=7, gid=7)])
    second = make_tar([entry("l", "symlink", link="b")])
    for plain in (False, True):
        d = ramdir / f"t{int(plain)}"
        d.mkdir()
        apply_tar(d, first, WhiteoutFormat.AUFS, rootless=not plain)
        apply_tar(d, second, WhiteoutFormat.AUFS, rootless=not plain)
    want, got = io.BytesIO(), io.BytesIO()
    write_diff(ramdir / "t1", want, WhiteoutFormat.AUFS)
    write_diff(ramdir / "t0", got, WhiteoutFormat.AUFS, rootless_owner=(os.geteuid(), os.getegid()))
    assert got.getvalue() == want.getvalue()


def test_a_symlink_put_in_place_through_a_mount_is_not_taken_for_the_recorded_one(ramdir: pathlib.Path) -> None:
    """A mount's copy-up carries the directory's records along: a new symlink under the same
    name (what the user wrote, theirs, exported as root's) must not inherit the old owner."""
    d = ramdir / "layer"
    d.mkdir()
    apply_tar(d, make_tar([entry("dir", "dir"), entry("dir/l", "symlink", link="a", uid=7, gid=7),
                           entry("dir/same", "symlink", link="a", uid=8, gid=8)]),
              WhiteoutFormat.AUFS, rootless=True)
    os.unlink(d / "dir" / "l")
    os.symlink("elsewhere", d / "dir" / "l")
    # a record of an older store names no target: it still counts
    os.setxattr(d / "dir", "user.aufs.lowner.old", b"9:9")
    os.symlink("x", d / "dir" / "old")
    out = io.BytesIO()
    write_diff(d, out, WhiteoutFormat.AUFS, rootless_owner=(os.geteuid(), os.getegid()))
    import tarfile
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        owners = {m.name: (m.uid, m.gid, m.linkname) for m in tar.getmembers() if m.issym()}
    assert owners == {"dir/l": (0, 0, "elsewhere"), "dir/same": (8, 8, "a"), "dir/old": (9, 9, "x")}


def test_a_malformed_record_is_an_error_not_a_guess(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    layer.mkdir()
    (layer / "f").write_bytes(b"x")
    os.setxattr(layer / "f", OVERRIDE_XATTR, b"zero:0:0644")
    with pytest.raises(OSError):
        write_diff(layer, io.BytesIO(), WhiteoutFormat.AUFS, rootless_owner=(os.geteuid(), os.getegid()))


_ids = st.sampled_from([0, 1, 42, 65534, 3000000])
_kinds = st.sampled_from(["file", "dir", "char", "block", "fifo", "symlink"])


@given(st.lists(st.tuples(_kinds, st.integers(0, 0o7777), _ids, _ids, st.integers(0, 255)),
                min_size=1, max_size=12))
def test_any_owner_mode_and_type_round_trips(tmp_path_factory: pytest.TempPathFactory, items: list) -> None:
    entries = []
    for i, (kind, mode, uid, gid, dev) in enumerate(items):
        if kind == "symlink":  # its owner is recorded on its directory
            entries.append(entry(f"e{i}", kind, link="t", uid=uid, gid=gid))
        else:
            entries.append(entry(f"e{i}", kind, mode=mode, uid=uid, gid=gid, devmajor=dev, devminor=dev,
                                 data=b"d" if kind == "file" else b""))
    want, got, _ = _both(tmp_path_factory.mktemp("rl"), make_tar(entries))
    assert got == want


def test_acls_round_trip(ramdir: pathlib.Path) -> None:
    acl = "user::rwx,user:1000:r-x,group::r-x,mask::r-x,other::r--"
    f = entry("f", data=b"x", mode=0o754, uid=3000000)
    f[0].pax_headers = {"SCHILY.acl.access": acl}
    d = entry("d", "dir", mode=0o750)
    d[0].pax_headers = {"SCHILY.acl.default": acl}
    want, got, disk = _both(ramdir, make_tar([d, f, entry("d/in", data=b"i")]))
    assert got == want
    assert b"SCHILY.acl.access" in got


def test_acls_as_go_tools_write_them_round_trip(ramdir: pathlib.Path) -> None:
    import struct
    ents = [(1, 7, 0xFFFFFFFF), (2, 5, 1000), (4, 5, 0xFFFFFFFF), (0x10, 5, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in ents)
    tar = make_tar([entry("g", data=b"x", mode=0o754, xattrs={"system.posix_acl_access": value})])
    want, got, disk = _both(ramdir, tar)
    assert got == want
    assert "user.aufs.xattr.system.posix_acl_access" not in os.listxattr(disk / "g")
