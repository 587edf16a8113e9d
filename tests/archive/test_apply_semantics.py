"""apply_tar: what a layer tar turns into on disk (types, metadata, whiteouts, replacements)."""
from __future__ import annotations

import os
import stat
import tarfile

import pytest

from aufs import ArchiveError, UnsafeArchive
from aufs.apply import apply_tar
from aufs.whiteouts import WhiteoutFormat

from .apply_helpers import entry, make_tar, names, snapshot, xattrs_of

AUFS = WhiteoutFormat.AUFS
OVERLAY = WhiteoutFormat.OVERLAY
CAP = bytes([1, 0, 0, 2, 0x20, 0, 0, 0] + [0] * 12)  # vfs cap v2: cap_net_bind_service


def apply(target, entries, fmt=AUFS, **kw):
    apply_tar(target, make_tar(entries), fmt, **kw)


def test_every_type_with_metadata(ramdir):
    apply(ramdir, [
        entry("d", "dir", mode=0o1775, uid=12, gid=34, mtime=1000),
        entry("d/f", data=b"hello", mode=0o4755, uid=5, gid=6, mtime=2000),
        entry("d/g", data=b"", mode=0o2711, mtime=2500),
        entry("d/l", "symlink", link="/etc/passwd", uid=7, gid=8, mtime=3000),
        entry("d/h", "hardlink", link="d/f"),
        entry("c", "char", devmajor=1, devminor=3, mode=0o666, mtime=4000),
        entry("b", "block", devmajor=7, devminor=0, mode=0o660, mtime=5000),
        entry("p", "fifo", mode=0o600, uid=9, gid=9, mtime=6000),
    ])
    snap = snapshot(str(ramdir))
    assert snap["d"][:5] == (stat.S_IFDIR, 0o1775, 12, 34, 1000 * 10**9)
    assert snap["d/f"][:6] == (stat.S_IFREG, 0o4755, 5, 6, 2000 * 10**9, b"hello")
    assert snap["d/g"][1] == 0o2711
    assert snap["d/l"][:6] == (stat.S_IFLNK, 0o777, 7, 8, 3000 * 10**9, "/etc/passwd")
    assert snap["d/h"][7] == snap["d/f"][7] is not None
    assert snap["c"][:6] == (stat.S_IFCHR, 0o666, 0, 0, 4000 * 10**9, (1, 3))
    assert snap["b"][:6] == (stat.S_IFBLK, 0o660, 0, 0, 5000 * 10**9, (7, 0))
    assert snap["p"][:5] == (stat.S_IFIFO, 0o600, 9, 9, 6000 * 10**9)


def test_xattrs_capability_survives_chown_and_overlay_xattrs_are_refused(ramdir):
    xattrs = {"security.capability": CAP, "trusted.note": b"\xff\x00x", "user.a": b"1",
              "trusted.overlay.opaque": b"y", "trusted.overlay.redirect": b"/etc",
              "user.overlay.opaque": b"y"}
    apply(ramdir, [
        entry("bin", "dir", xattrs={"trusted.overlay.opaque": b"y", "user.d": b"2"}),
        entry("bin/ping", data=b"\x7fELF", mode=0o755, uid=1000, gid=1000, xattrs=xattrs),
    ], OVERLAY)
    assert xattrs_of(str(ramdir / "bin/ping")) == {
        "security.capability": CAP, "trusted.note": b"\xff\x00x", "user.a": b"1"}
    assert xattrs_of(str(ramdir / "bin")) == {"user.d": b"2"}
    assert os.stat(ramdir / "bin/ping").st_uid == 1000


def test_directory_mtimes_are_set_after_their_content(ramdir):
    apply(ramdir, [
        entry("a", "dir", mtime=111),
        entry("a/b", "dir", mtime=222),
        entry("a/b/f", data=b"x", mtime=333),
        entry("a/g", data=b"y", mtime=444),
        entry("a/b/.wh.gone", mtime=555),
    ])
    assert os.stat(ramdir / "a").st_mtime == 111
    assert os.stat(ramdir / "a/b").st_mtime == 222


def test_implied_parents_are_created_0755(ramdir):
    apply(ramdir, [entry("x/y/z/f", data=b"1", mode=0o600)])
    for d in ("x", "x/y", "x/y/z"):
        st = os.lstat(ramdir / d)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
    assert (ramdir / "x/y/z/f").read_bytes() == b"1"


def test_duplicate_entries_last_wins(ramdir):
    apply(ramdir, [
        entry("f", data=b"first", mode=0o600),
        entry("f", data=b"second", mode=0o640),
        entry("d", "dir", mode=0o700, mtime=10),
        entry("d", "dir", mode=0o750, mtime=20),
    ])
    assert (ramdir / "f").read_bytes() == b"second"
    assert stat.S_IMODE(os.stat(ramdir / "f").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(ramdir / "d").st_mode) == 0o750
    assert os.stat(ramdir / "d").st_mtime == 20


@pytest.mark.parametrize("first,second", [
    ("file", "dir"), ("dir", "file"), ("file", "symlink"), ("symlink", "file"),
    ("dir", "symlink"), ("symlink", "dir"), ("fifo", "file"), ("file", "char"),
])
def test_type_changes(ramdir, first, second):
    def make(kind, tag):
        if kind == "file":
            return entry("x", data=tag)
        if kind == "symlink":
            return entry("x", "symlink", link="target-" + tag.decode())
        if kind == "char":
            return entry("x", "char", devmajor=1, devminor=7)
        return entry("x", kind)
    entries = [make(first, b"1")]
    if first == "dir":
        entries.append(entry("x/inside", data=b"old"))
    entries.append(make(second, b"2"))
    apply(ramdir, entries)
    st = os.lstat(ramdir / "x")
    assert stat.S_IFMT(st.st_mode) == {
        "file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
        "fifo": stat.S_IFIFO, "char": stat.S_IFCHR}[second]
    if second == "dir":
        assert os.listdir(ramdir / "x") == []
    if second == "file":
        assert (ramdir / "x").read_bytes() == b"2"


def test_symlinked_directory_then_entry_below_stays_inside(ramdir):
    apply(ramdir, [
        entry("real", "dir"),
        entry("link", "symlink", link="/real"),
        entry("link/f", data=b"via link"),
    ])
    assert (ramdir / "real/f").read_bytes() == b"via link"
    assert os.path.islink(ramdir / "link")


def test_existing_inodes_are_never_modified_in_place(ramdir):
    """The store stages into a hard-linked clone: shared inodes must keep their content."""
    (ramdir / "layer").mkdir()
    (ramdir / "layer/f").write_bytes(b"original")
    os.link(ramdir / "layer/f", ramdir / "outside-twin")
    os.symlink("old", ramdir / "layer/s")
    apply(ramdir / "layer", [
        entry("f", data=b"replaced", mode=0o600, uid=3),
        entry("s", "symlink", link="new"),
    ])
    assert (ramdir / "outside-twin").read_bytes() == b"original"
    assert os.stat(ramdir / "outside-twin").st_uid == 0
    assert (ramdir / "layer/f").read_bytes() == b"replaced"
    assert os.readlink(ramdir / "layer/s") == "new"


def test_hardlink_to_existing_metadata_untouched(ramdir):
    apply(ramdir, [entry("a", data=b"A", mode=0o600), entry("b", "hardlink", link="a"),
                   entry("b", "hardlink", link="a")])
    assert os.stat(ramdir / "a").st_ino == os.stat(ramdir / "b").st_ino
    assert os.stat(ramdir / "a").st_nlink == 2


def test_hardlink_to_missing_target_is_archive_error(ramdir):
    with pytest.raises(ArchiveError):
        apply(ramdir, [entry("b", "hardlink", link="nothere")])


def test_hardlink_to_directory_is_archive_error(ramdir):
    with pytest.raises(ArchiveError):
        apply(ramdir, [entry("d", "dir"), entry("b", "hardlink", link="d")])


def test_root_entry_updates_target_dir(ramdir):
    target = ramdir / "t"
    target.mkdir()
    apply(target, [entry("./", "dir", mode=0o750, uid=4, gid=5, mtime=77), entry("./f", data=b"1")])
    st = os.stat(target)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o750, 4, 5, 77)


def test_non_directory_at_root_is_refused(ramdir):
    with pytest.raises(UnsafeArchive):
        apply(ramdir, [entry("./", "symlink", link="/")])


def test_sparse_file_is_written_sparse(ramdir):
    # GNU sparse via bsdtar-compatible tar written by GNU tar itself
    src = ramdir / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(10 << 30)
        f.write(b"end")
    tar_path = ramdir / "s.tar"
    assert os.system(f"tar --sparse -cf {tar_path} -C {src} sparse") == 0
    out = ramdir / "out"
    out.mkdir()
    apply_tar(out, tar_path, AUFS)
    st = os.stat(out / "sparse")
    assert st.st_size == (10 << 30) + 3
    assert st.st_blocks * 512 < (1 << 20)
    with open(out / "sparse", "rb") as f:
        f.seek(10 << 30)
        assert f.read() == b"end"


def test_max_bytes_limit(ramdir):
    with pytest.raises(ArchiveError, match="limit"):
        apply(ramdir, [entry("a", data=b"x" * 1000), entry("b", data=b"y" * 1000)], max_bytes=1500)
    out = ramdir / "ok"
    out.mkdir()
    apply(out, [entry("a", data=b"x" * 1000)], max_bytes=1000)


def test_names_with_unusual_bytes(ramdir):
    apply(ramdir, [entry("d/sp ace\nnl\udcff", data=b"1"), entry("unicodé", data=b"2")])
    assert sorted(os.listdir(ramdir)) == ["d", "unicodé"]
    assert os.listdir(ramdir / "d") == ["sp ace\nnl\udcff"]


def test_sockets_and_ustar_gnu_v7_formats(ramdir):
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT):
        out = ramdir / str(fmt)
        out.mkdir()
        apply_tar(out, make_tar([entry("a/b", data=b"c" * 700)], fmt=fmt), AUFS)
        assert (out / "a/b").read_bytes() == b"c" * 700


# -- whiteouts and opaque directories -----------------------------------------------------


def test_whiteout_aufs_format(ramdir):
    (ramdir / "gone").write_bytes(b"lower")
    (ramdir / "dir").mkdir()
    (ramdir / "dir/x").write_bytes(b"x")
    apply(ramdir, [entry(".wh.gone"), entry("dir/.wh.x"), entry("new/.wh.y")])
    assert names(str(ramdir)) == [".wh.gone", "dir", "dir/.wh.x", "new", "new/.wh.y"]
    st = os.lstat(ramdir / ".wh.gone")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0


def test_whiteout_overlay_format(ramdir):
    (ramdir / "gone").mkdir()
    (ramdir / "gone/deep").write_bytes(b"lower")
    apply(ramdir, [entry(".wh.gone"), entry("d/.wh.x")], OVERLAY)
    for p in ("gone", "d/x"):
        st = os.lstat(ramdir / p)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert names(str(ramdir)) == ["d", "d/x", "gone"]


def test_whiteout_under_a_file_removes_nothing(ramdir):
    apply(ramdir, [entry("usr/share/man", data=b"file"), entry("usr/share/man/.wh.de")])
    assert (ramdir / "usr/share/man").read_bytes() == b"file"


def test_whiteout_through_symlink_stays_inside(ramdir):
    outside = ramdir / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep")
    target = ramdir / "t"
    target.mkdir()
    apply(target, [entry("l", "symlink", link=str(outside)), entry("l/.wh.victim")])
    assert (outside / "victim").read_bytes() == b"keep"
    # a relative symlink that climbs above the root is stored as it is (issue 9, item 8); the
    # whiteout through it resolves inside the layer, where there is no `outside`: nothing
    apply(target, [entry("r", "symlink", link="../outside"), entry("r/.wh.victim")])
    assert os.readlink(target / "r") == "../outside"
    assert (outside / "victim").read_bytes() == b"keep"
    assert sorted(os.listdir(outside)) == ["victim"]


def test_opaque_aufs_and_same_layer_entries_survive(ramdir):
    apply(ramdir, [entry("d", "dir"), entry("d/before", data=b"1"), entry("d/.wh..wh..opq"),
                   entry("d/after", data=b"2")])
    assert sorted(os.listdir(ramdir / "d")) == [".wh..wh..opq", "after", "before"]


def test_opaque_overlay_root_and_dir(ramdir):
    apply(ramdir, [entry(".wh..wh..opq"), entry("d/.wh..wh..opq"), entry("d/keep", data=b"k")],
          OVERLAY)
    assert os.getxattr(ramdir, "trusted.overlay.opaque") == b"y"
    assert os.getxattr(ramdir / "d", "trusted.overlay.opaque") == b"y"
    assert names(str(ramdir)) == ["d", "d/keep"]


def test_opaque_removes_what_the_layer_held_before(ramdir):
    (ramdir / "d").mkdir()
    (ramdir / "d/old").write_bytes(b"old")
    (ramdir / "d/olddir").mkdir()
    apply(ramdir, [entry("d/new", data=b"n"), entry("d/.wh..wh..opq"), entry("d/later", data=b"l")])
    assert sorted(os.listdir(ramdir / "d")) == [".wh..wh..opq", "later", "new"]


def test_metadata_names_never_become_content(ramdir):
    apply(ramdir, [
        entry(".wh..wh.aufs"), entry(".wh..wh.orph", "dir"), entry(".wh..wh.orph/x"),
        entry("d/.wh..wh.foo", data=b"meta"), entry(".wh.dir", "dir"), entry(".wh.dir/f"),
        entry("d/.wh.sym", "symlink", link="x"), entry("real", data=b"r"),
    ])
    assert names(str(ramdir)) == ["real"]  # skipped entries imply no parents either


def test_aufs_pseudo_links_resolve_to_the_real_file(ramdir):
    apply(ramdir, [
        entry(".wh..wh.plnk", "dir"),
        entry(".wh..wh.plnk/123.456", data=b"shared", mode=0o750, uid=3),
        entry("bin/a", "hardlink", link=".wh..wh.plnk/123.456"),
        entry("bin/b", "hardlink", link=".wh..wh.plnk/123.456"),
    ])
    assert names(str(ramdir)) == ["bin", "bin/a", "bin/b"]
    a, b = os.stat(ramdir / "bin/a"), os.stat(ramdir / "bin/b")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (ramdir / "bin/a").read_bytes() == b"shared"
    assert (stat.S_IMODE(a.st_mode), a.st_uid) == (0o750, 3)


def test_hardlink_to_a_whiteout_name_is_refused(ramdir):
    with pytest.raises(ArchiveError):
        apply(ramdir, [entry(".wh.x"), entry("y", "hardlink", link=".wh.x")])


def test_docker_unpacklayer_three_layers_aufs(ramdir):
    """Docker's UnpackLayer scenario, each layer applied to its own dir (layer contents only)."""
    base = [entry(".baz", data=b""), entry("bar", "dir"), entry("bar/bax", data=b""),
            entry("bar/bay", "dir"), entry("baz", data=b""), entry("foo", "dir"),
            entry("foo/.abc", data=b""), entry("foo/.bcd", "dir"), entry("foo/.bcd/a", data=b""),
            entry("foo/cde", "dir"), entry("foo/cde/def", data=b""), entry("foo/cde/efg", data=b""),
            entry("foo/fgh", data=b""), entry("foobar", data=b"")]
    l1 = ramdir / "l1"
    l1.mkdir()
    apply(l1, base)
    assert names(str(l1)) == [".baz", "bar", "bar/bax", "bar/bay", "baz", "foo", "foo/.abc",
                              "foo/.bcd", "foo/.bcd/a", "foo/cde", "foo/cde/def", "foo/cde/efg",
                              "foo/fgh", "foobar"]
    l2 = ramdir / "l2"
    l2.mkdir()
    apply(l2, [entry(".wh.baz"), entry("foo", "dir"), entry("foo/.wh..wh..opq"),
               entry("foo/abc", data=b""), entry(".wh..baz"), entry(".wh.foobar"),
               entry("foo/.wh.cde")], OVERLAY)
    # foo/.wh.cde is redundant below the opaque foo, and not kept (issue 9, item 11)
    assert names(str(l2)) == [".baz", "baz", "foo", "foo/abc", "foobar"]
    assert os.getxattr(l2 / "foo", "trusted.overlay.opaque") == b"y"
    l3 = ramdir / "l3"
    l3.mkdir()
    apply(l3, [entry(".wh..wh..opq"), entry("new", data=b"")], AUFS)
    assert names(str(l3)) == [".wh..wh..opq", "new"]


def test_many_directories_all_get_their_mtimes(ramdir):
    """More directory records than the C writer buffers between returns (1 MiB)."""
    entries = []
    for i in range(4500):
        d = f"d{i % 30}/" + f"{i:05d}" + "x" * 240
        entries += [entry(d, "dir", mtime=1000 + i), entry(d + "/f", data=b"")]
    for i in range(30):
        entries.append(entry(f"d{i}", "dir", mtime=50 + i))
    apply(ramdir, entries)
    for i in range(4500):
        d = ramdir / f"d{i % 30}" / (f"{i:05d}" + "x" * 240)
        assert os.stat(d).st_mtime == 1000 + i
    for i in range(30):
        assert os.stat(ramdir / f"d{i}").st_mtime == 50 + i


@pytest.mark.parametrize("depth", ["", "top/"])
def test_directory_replaced_by_symlink_then_entry_below(ramdir, depth):
    apply(ramdir, [
        entry(f"{depth}real", "dir"), entry(f"{depth}d", "dir"), entry(f"{depth}d/x", data=b"1"),
        entry(f"{depth}d", "symlink", link=f"/{depth}real"), entry(f"{depth}d/y", data=b"2"),
    ])
    assert os.path.islink(ramdir / f"{depth}d")
    assert (ramdir / f"{depth}real/y").read_bytes() == b"2"
    assert not (ramdir / f"{depth}real/x").exists()
