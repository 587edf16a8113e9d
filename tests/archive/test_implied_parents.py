"""Implied parent directories take the parent chain's directory metadata, as a copy-up does.

A layer tar may write ``srv/data/a`` without entries for ``srv/`` and ``srv/data/`` (umoci
does). In a union mount the upper directory's owner, mode and xattrs win, so such parents must
show what the chain below shows at the same path (``/tmp`` stays 1777), and 0755 root:root only
where the chain has no directory there.
"""
from __future__ import annotations

import io
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from aufs.apply import apply_tar, copy_up_dirs
from aufs.whiteouts import WhiteoutFormat

from .apply_helpers import entry, make_tar, xattrs_of

FMT = WhiteoutFormat.OVERLAY


def meta(path: Path) -> tuple[int, int, int, dict[str, bytes]]:
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode), path
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs_of(str(path))


def mkdir(path: Path, mode: int, uid: int = 0, gid: int = 0, xattrs: dict[str, bytes] | None = None) -> None:
    path.mkdir()
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for name, value in (xattrs or {}).items():
        os.setxattr(path, name, value)


PLAIN = (0o755, 0, 0, {})


@pytest.fixture
def template(ramdir: Path) -> Path:
    """A directory standing for the union of a parent chain, with odd directory metadata."""
    t = ramdir / "template"
    t.mkdir()
    mkdir(t / "tmp", 0o1777)
    mkdir(t / "srv", 0o2750, 1234, 5678, {"user.dir": b"srv", "trusted.overlay.opaque": b"y",
                                           "user.fuseoverlayfs.origin": b"x", "user.overlay.impure": b"y"})
    mkdir(t / "srv" / "data", 0o4711, 42, 43, {"user.data": b"d" * 3000})
    mkdir(t / "x", 0o700, 1)
    mkdir(t / "x" / "y", 0o710, 2)
    mkdir(t / "x" / "y" / "z", 0o3770, 3, 4, {"trusted.note": b"z"})
    (t / "file").write_text("not a directory")
    os.symlink("srv", t / "link")  # the union's upper directory would hide it
    os.symlink("/", t / "abs")
    os.mknod(t / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # an overlay whiteout
    return t


@pytest.fixture
def target(ramdir: Path) -> Path:
    t = ramdir / "target"
    t.mkdir()
    return t


def test_implied_parents_copy_the_template(template: Path, target: Path) -> None:
    tar = make_tar([entry("tmp/f"), entry("srv/data/a", data=b"a"), entry("x/y/z/deep")])
    implied = apply_tar(target, tar, FMT, template_dir=template)
    assert implied == ["tmp", "srv", "srv/data", "x", "x/y", "x/y/z"]
    assert meta(target / "tmp") == (0o1777, 0, 0, {})
    # owner before mode (chown would clear setgid), the union's private xattrs never copied
    assert meta(target / "srv") == (0o2750, 1234, 5678, {"user.dir": b"srv"})
    assert meta(target / "srv" / "data") == (0o4711, 42, 43, {"user.data": b"d" * 3000})
    assert meta(target / "x") == (0o700, 1, 0, {})
    assert meta(target / "x" / "y") == (0o710, 2, 0, {})
    assert meta(target / "x" / "y" / "z") == (0o3770, 3, 4, {"trusted.note": b"z"})
    assert (target / "srv" / "data" / "a").read_bytes() == b"a"


@pytest.mark.parametrize("name", ["file", "link", "abs", "gone", "absent"])
def test_no_directory_below_stays_plain(template: Path, target: Path, name: str) -> None:
    """A file, a symlink (never followed, not even as a parent component), a whiteout or
    nothing below: 0755 root:root."""
    tar = make_tar([entry(f"{name}/data/a"), entry(f"{name}/tmp/b")])
    assert apply_tar(target, tar, FMT, template_dir=template) == [name, f"{name}/data", f"{name}/tmp"]
    for sub in ("", "data", "tmp"):
        assert meta(target / name / sub) == PLAIN, sub
    assert meta(template / "srv") [:3] == (0o2750, 1234, 5678)  # the template is untouched


def test_explicit_entries_keep_the_tars_metadata(template: Path, target: Path) -> None:
    tar = make_tar([
        entry("srv", "dir", mode=0o700, uid=7, gid=8, xattrs={"user.tar": b"t"}),
        entry("srv/data/a"),
        entry("x/y/f"),
        entry("x", "dir", mode=0o751, uid=9),  # listed after it was implied: the tar wins
    ])
    assert apply_tar(target, tar, FMT, template_dir=template) == ["srv/data", "x/y"]
    assert meta(target / "srv") == (0o700, 7, 8, {"user.tar": b"t"})
    assert meta(target / "srv" / "data")[:3] == (0o4711, 42, 43)
    assert meta(target / "x") == (0o751, 9, 0, {})
    assert meta(target / "x" / "y") == (0o710, 2, 0, {})


def test_parent_made_through_the_layers_own_symlink_is_left_alone(template: Path, target: Path) -> None:
    """``l -> x`` in the tar, then ``l/y/f``: y is created at x/y, which the lower path l/y
    does not describe; it stays plain (never the metadata of the template's l/y)."""
    mkdir(template / "l", 0o700, 77)
    mkdir(template / "l" / "y", 0o700, 77)
    tar = make_tar([entry("x", "dir", mode=0o755), entry("l", "symlink", link="x"), entry("l/y/f")])
    assert apply_tar(target, tar, FMT, template_dir=template) == ["l/y"]
    assert meta(target / "x" / "y") == PLAIN


def test_without_a_template_implied_parents_are_plain(target: Path) -> None:
    tar = make_tar([entry("srv/data/a"), entry("tmp/f")])
    assert apply_tar(target, tar, FMT) == ["srv", "srv/data", "tmp"]
    for path in ("srv", "srv/data", "tmp"):
        assert meta(target / path) == PLAIN


def test_parents_of_whiteouts_and_opaque_markers(template: Path, target: Path) -> None:
    tar = make_tar([entry("srv/data/.wh.old"), entry("x/y/z/.wh..wh..opq"), entry("tmp/.wh.t")])
    apply_tar(target, tar, FMT, template_dir=template)
    assert meta(target / "srv")[:3] == (0o2750, 1234, 5678)
    assert meta(target / "srv" / "data")[:3] == (0o4711, 42, 43)
    assert meta(target / "x" / "y" / "z")[:3] == (0o3770, 3, 4)
    assert meta(target / "tmp")[:3] == (0o1777, 0, 0)


def test_implied_parent_replaced_later_is_left_alone(template: Path, target: Path) -> None:
    tar = make_tar([entry("srv/a"), entry("srv/.wh.a"), entry(".wh.srv"), entry("srv", data=b"now a file")])
    apply_tar(target, tar, FMT, template_dir=template)
    assert (target / "srv").read_bytes() == b"now a file"
    assert stat.S_IMODE(os.lstat(target / "srv").st_mode) == 0o644


def test_many_implied_parents_overflow_the_record_buffer(template: Path, target: Path) -> None:
    """More records than the C writer's buffer holds: it hands them over and goes on."""
    deep = "/".join(f"{k}" + "d" * 190 for k in range(10))  # ~2 KiB per record, 1 MiB buffer
    entries = [entry(f"srv/data/{i}/{deep}/f") for i in range(600)]
    implied = apply_tar(target, make_tar(entries), FMT, template_dir=template)
    assert len(implied) == 2 + 600 * 11
    assert implied[:3] == ["srv", "srv/data", "srv/data/0"]
    assert meta(target / "srv")[:3] == (0o2750, 1234, 5678)
    assert meta(target / "srv" / "data" / "599" / deep) == PLAIN


def test_copy_up_dirs_directly(template: Path, target: Path) -> None:
    (target / "srv").mkdir()
    (target / "srv" / "data").mkdir()
    os.symlink("srv", target / "tmp")  # not a directory any more: left alone
    assert copy_up_dirs(target, ["srv", b"srv/data", "tmp", "nothing"], template) == 2
    assert meta(target / "srv")[:3] == (0o2750, 1234, 5678)
    assert os.readlink(target / "tmp") == "srv"


# ---------------------------------------------------------------- through the store


BACKENDS = ["overlay", "fuse-overlayfs"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, ramdir: Path) -> Iterator[aufs.Driver]:
    try:
        driver = aufs.Driver(ramdir / "store", backend=request.param)
    except aufs.BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield driver
    finally:
        driver.cleanup()


BASE = make_tar([
    entry("tmp", "dir", mode=0o1777),
    entry("srv", "dir", mode=0o2750, uid=1234, gid=5678, xattrs={"user.dir": b"srv"}),
    entry("srv/data", "dir", mode=0o750, uid=1234, xattrs={"user.data": b"d"}),
    entry("gone", "dir", mode=0o700, uid=5),
    entry("etc", "dir", mode=0o755),
    entry("etc/conf", "dir", mode=0o711, uid=3),
])


def _top_tree(driver: aufs.Driver, top: str) -> dict[str, tuple[int, int, int, dict[str, bytes]]]:
    with driver.mount(top) as root:
        return {p: meta(Path(root) / p) for p in ("tmp", "srv", "srv/data", "gone", "etc/conf", "etc/conf/new")}


def test_apply_diff_copies_up_through_one_and_two_parents(store: aufs.Driver) -> None:
    store.create("base")
    store.apply_diff("base", BASE)
    store.create("mid", parent="base")
    store.apply_diff("mid", make_tar([entry(".wh.gone"), entry("etc/conf/new/x")]))
    store.create("top", parent="mid")
    store.apply_diff("top", make_tar([entry("tmp/f"), entry("srv/data/a"), entry("gone/x"),
                                      entry("etc/conf/new/y")]))
    with store.mount("mid") as root:  # one parent (AUFS format: the parent's own diff dir)
        assert meta(Path(root) / "etc" / "conf")[:3] == (0o711, 3, 0)
        assert meta(Path(root) / "etc" / "conf" / "new") == PLAIN
    tree = _top_tree(store, "top")
    assert tree["tmp"] == (0o1777, 0, 0, {})
    assert tree["srv"] == (0o2750, 1234, 5678, {"user.dir": b"srv"})
    assert tree["srv/data"] == (0o750, 1234, 0, {"user.data": b"d"})
    assert tree["gone"] == PLAIN  # whited out in the middle layer
    assert tree["etc/conf"][:3] == (0o711, 3, 0)
    assert tree["etc/conf/new"] == PLAIN
    # the layer itself holds the copied-up directories, not only the mount
    assert meta(Path(store.diff_dir("top")) / "srv")[:3] == (0o2750, 1234, 5678)


def test_failed_apply_with_implied_parents_leaves_no_trace(store: aufs.Driver) -> None:
    store.create("base")
    store.apply_diff("base", BASE)
    store.create("top", parent="base")
    store.apply_diff("top", make_tar([entry("keep/me", data=b"1")]))
    bad = make_tar([entry("srv/data/a"), entry("../escape")])
    with pytest.raises(aufs.UnsafeArchive):
        store.apply_diff("top", bad)
    with store.mount("top") as root:
        assert sorted(os.listdir(root)) == ["etc", "gone", "keep", "srv", "tmp"]
        assert not (Path(root) / "srv" / "data" / "a").exists()
    assert os.listdir(Path(store.layout.tmp_dir)) == []


def test_no_lower_view_is_taken_when_nothing_is_implied(store: aufs.Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create("base")
    store.apply_diff("base", BASE)
    store.create("top", parent="base")
    views: list[str] = []
    real = store.diffs.lower_view

    def counting(layer_id: str):  # type: ignore[no-untyped-def]
        views.append(layer_id)
        return real(layer_id)

    monkeypatch.setattr(store.diffs, "lower_view", counting)
    store.apply_diff("top", make_tar([entry("srv", "dir", mode=0o700), entry("srv/a")]))
    assert views == []
    store.apply_diff("top", make_tar([entry("srv/data/b")]))
    assert views == ["top"]


# ---------------------------------------------------------------- parallel image import


def test_parallel_import_copies_up_from_complete_parents(ramdir: Path) -> None:
    """A small upper layer extracts long before its big parent is in place; its implied
    parents must still show the parent's directories."""
    from tests.image.helpers import write_layout

    files = [entry(f"bulk/{i // 100}/{i}", data=b"x" * 512) for i in range(6000)]
    base = make_tar([*files, entry("tmp", "dir", mode=0o1777),
                     entry("srv", "dir", mode=0o2750, uid=1234, gid=5678, xattrs={"user.dir": b"srv"})])
    top = make_tar([entry("tmp/f"), entry("srv/data/a"), entry("bulk/7/new")])
    write_layout(ramdir / "img", [base, top], compress="none")
    driver = aufs.Driver(ramdir / "store")
    try:
        ids = aufs.import_image(driver, ramdir / "img", workers=2)
        with driver.mount(ids[-1]) as root:
            assert meta(Path(root) / "tmp")[:3] == (0o1777, 0, 0)
            assert meta(Path(root) / "srv") == (0o2750, 1234, 5678, {"user.dir": b"srv"})
            assert meta(Path(root) / "srv" / "data") == PLAIN
            assert meta(Path(root) / "bulk" / "7") == PLAIN
            assert len(os.listdir(Path(root) / "bulk")) == 60
    finally:
        driver.cleanup()


def test_implied_directories_get_a_time_from_the_image_not_the_clock(store: aufs.Driver) -> None:
    """Two imports of one image must export the same bytes: an implied directory takes the
    newest time of what is in it, never the time of the extraction."""
    tar = make_tar([entry("srv/data/a", mtime=1000), entry("srv/data/b", mtime=3000), entry("srv/x", mtime=2000)])
    store.create("one")
    store.apply_diff("one", tar)
    diff = Path(store.diff_dir("one"))
    assert os.lstat(diff / "srv" / "data").st_mtime_ns == 3000 * 10**9
    assert os.lstat(diff / "srv").st_mtime_ns == 3000 * 10**9  # its newest entry is data
    time.sleep(1.1)
    store.create("two")
    store.apply_diff("two", tar)
    first, second = io.BytesIO(), io.BytesIO()
    store.diff("one", first)
    store.diff("two", second)
    assert first.getvalue() == second.getvalue()
