"""Hostile layer tars: nothing outside the target directory may change (Docker's 14 cases and more).

Every case runs in a throwaway tree on the test tmpfs: ``<tmp>/victim/hello`` is what an escape
would reach, ``<tmp>/dest`` is where the archive is applied.
"""
from __future__ import annotations

import os
import shutil
import stat
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aufs import ArchiveError, UnsafeArchive
from aufs.apply import apply_tar
from aufs.whiteouts import WhiteoutFormat

from .apply_helpers import entry, make_tar

HELLO = b"hello from the victim, do not touch\n"

# (name, entries) -- Docker's TestUntarInvalidFilenames, TestUntarInvalidHardlink and
# TestUntarInvalidSymlink, in that order
DOCKER_CASES = [
    ("name ../victim", [entry("../victim/dotdot", data=b"owned")]),
    ("name /../victim", [entry("/../victim/slash-dotdot", data=b"owned")]),
    ("hardlink to ../victim/hello", [entry("dotdot", "hardlink", link="../victim/hello")]),
    ("hardlink to /../victim/hello", [entry("slash-dotdot", "hardlink", link="/../victim/hello")]),
    ("hardlink dir, write file through it", [
        entry("loophole-victim", "hardlink", link="../victim"),
        entry("loophole-victim/file", data=b"owned")]),
    ("hardlink dir, symlink through it", [
        entry("loophole-victim", "hardlink", link="../victim"),
        entry("symlink", "symlink", link="loophole-victim/hello")]),
    ("hardlink dir, hardlink through it", [
        entry("loophole-victim", "hardlink", link="../victim"),
        entry("hardlink", "hardlink", link="loophole-victim/hello")]),
    ("hardlink dir, replace it by a file", [
        entry("loophole-victim", "hardlink", link="../victim"),
        entry("loophole-victim", data=b"owned")]),
    ("symlink to ../victim/hello", [entry("dotdot", "symlink", link="../victim/hello")]),
    ("symlink to /../victim/hello", [entry("slash-dotdot", "symlink", link="/../victim/hello")]),
    ("symlink dir, write file through it", [
        entry("loophole-victim", "symlink", link="../victim"),
        entry("loophole-victim/file", data=b"owned")]),
    ("symlink dir, symlink through it", [
        entry("loophole-victim", "symlink", link="../victim"),
        entry("symlink", "symlink", link="loophole-victim/hello")]),
    ("symlink dir, hardlink through it", [
        entry("loophole-victim", "symlink", link="../victim"),
        entry("hardlink", "hardlink", link="loophole-victim/hello")]),
    ("symlink dir, replace it by a file", [
        entry("loophole-victim", "symlink", link="../victim"),
        entry("loophole-victim", data=b"owned")]),
]

# beyond Docker's list: absolute links (legal in layers) must resolve inside the target
MORE_CASES = [
    ("absolute symlink dir, write through it", [
        entry("abs", "symlink", link="/VICTIM"), entry("abs/hello", data=b"owned"),
        entry("abs/new", data=b"owned")]),
    ("absolute symlink dir, whiteout through it", [
        entry("abs", "symlink", link="/VICTIM"), entry("abs/.wh.hello")]),
    ("absolute symlink dir, opaque through it", [
        entry("abs", "symlink", link="/VICTIM"), entry("abs/.wh..wh..opq")]),
    ("absolute symlink chain", [
        entry("a", "symlink", link="/b"), entry("b", "symlink", link="/VICTIM/.."),
        entry("a/victim/hello", data=b"owned")]),
    ("deep dotdot", [entry("a/b/../../../victim/x", data=b"owned")]),
    ("dotdot after symlink", [
        entry("d", "dir"), entry("d/l", "symlink", link="/"), entry("d/l/../../victim/hello", data=b"x")]),
    ("hardlink to absolute victim", [entry("h", "hardlink", link="/VICTIM/hello")]),
    ("symlink then dir swap", [
        entry("s", "dir"), entry("s", "symlink", link="/VICTIM"), entry("s/hello", data=b"owned")]),
    ("plnk escape", [entry(".wh..wh.plnk/../../victim/hello", data=b"owned")]),
    ("whiteout of parent", [entry("../.wh.victim")]),
    ("whiteout dotdot name", [entry(".wh..."), entry("d/.wh..")]),
    ("magic link", [entry("m", "symlink", link="/proc/self/root/VICTIM"), entry("m/hello", data=b"x")]),
]


@pytest.fixture
def arena(ramdir):
    victim = ramdir / "victim"
    victim.mkdir()
    (victim / "hello").write_bytes(HELLO)
    os.chmod(victim / "hello", 0o444)
    os.chmod(victim, 0o700)  # implied-directory creation must never chmod it to 0755
    dest = ramdir / "dest"
    dest.mkdir()
    return ramdir


def victim_state(root):
    victim = root / "victim"
    st = os.lstat(victim / "hello")
    dst = os.lstat(victim)
    return (sorted(os.listdir(victim)), (victim / "hello").read_bytes(), st.st_mode, st.st_ino,
            st.st_nlink, st.st_mtime_ns, (dst.st_mode, dst.st_uid, dst.st_mtime_ns),
            sorted(os.listdir(root)))


def assert_nothing_reads_hello(dest):
    """Docker's check: nothing in dest, even followed by the host, has the victim's content."""
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):  # fifos would block an open
                    continue
                with open(path, "rb") as f:
                    assert f.read(len(HELLO) + 1) != HELLO, f"{path} reads the victim"
            except OSError:
                pass


def assert_container_view_is_clean(dest):
    """What a container on this layer would see: no regular file holds the victim's bytes (a
    hard link would). Symlinks are data: absolute ones and relative ones that climb above the
    layer root both resolve inside the container's root (there ``/..`` is ``/``), so the
    host's view of them says nothing (``a -> ../victim`` is harmless there)."""
    top = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            if stat.S_ISREG(st_.st_mode):
                with open(path, "rb") as f:
                    assert f.read(len(HELLO) + 1) != HELLO, f"{path} reads the victim"


def run_case(root, entries, fmt, *, host_view=True):
    fixed = []
    for ti, data in entries:
        ti.name = ti.name.replace("/VICTIM", str(root / "victim"))
        ti.linkname = ti.linkname.replace("/VICTIM", str(root / "victim"))
        fixed.append((ti, data))
    before = victim_state(root)
    try:
        apply_tar(root / "dest", make_tar(fixed), fmt)
        outcome = "applied"
    except UnsafeArchive as exc:
        assert exc.path is not None
        outcome = "unsafe"
    except ArchiveError:
        outcome = "error"
    assert victim_state(root) == before
    if host_view:
        assert_nothing_reads_hello(root / "dest")
    else:
        assert_container_view_is_clean(root / "dest")
    return outcome


# Docker's cases whose escape is a name or a hard link: refused as unsafe. Its symlink cases
# are legal layers for containerd, umoci and GNU tar (issue 9, item 8): the symlink is stored
# as it is, and what is written through it lands inside the layer.
HARDLINK_OR_NAME_CASES = [c for c in DOCKER_CASES if not c[0].startswith("symlink")]
SYMLINK_CASES = [c for c in DOCKER_CASES if c[0].startswith("symlink")]


@pytest.mark.parametrize("fmt", list(WhiteoutFormat))
@pytest.mark.parametrize("name,entries", HARDLINK_OR_NAME_CASES, ids=[c[0] for c in HARDLINK_OR_NAME_CASES])
def test_docker_breakout_cases(arena, name, entries, fmt):
    outcome = run_case(arena, entries, fmt)
    # every such case names a path outside: it must be refused as unsafe, not merely fail
    assert outcome == "unsafe", outcome


@pytest.mark.parametrize("fmt", list(WhiteoutFormat))
@pytest.mark.parametrize("name,entries", SYMLINK_CASES, ids=[c[0] for c in SYMLINK_CASES])
def test_docker_symlink_cases_stay_inside(arena, name, entries, fmt):
    outcome = run_case(arena, entries, fmt, host_view=False)
    # through the symlink, resolved inside the layer (`/..` is `/`), there is no victim: a
    # write or hard link through it is a clean error, never a write outside
    through = name in ("symlink dir, write file through it", "symlink dir, hardlink through it")
    assert outcome == ("error" if through else "applied"), outcome
    dest = arena / "dest"
    first = entries[0][0]
    if name == "symlink dir, replace it by a file":
        assert (dest / first.name).read_bytes() == b"owned"
    elif outcome == "applied":
        assert os.readlink(dest / first.name) == first.linkname  # stored as it is


@pytest.mark.parametrize("fmt", list(WhiteoutFormat))
def test_write_through_a_climbing_symlink_lands_inside(arena, fmt):
    entries = [entry("victim", "dir"), entry("loophole-victim", "symlink", link="../victim"),
               entry("loophole-victim/file", data=b"inside")]
    assert run_case(arena, entries, fmt, host_view=False) == "applied"
    assert (arena / "dest" / "victim" / "file").read_bytes() == b"inside"
    assert not (arena / "victim" / "file").exists()


@pytest.mark.parametrize("fmt", list(WhiteoutFormat))
def test_symlinks_that_climb_above_the_root_are_stored(arena, fmt):
    """`usr/lib/x -> ../../../opt/y` and `up -> ..` (issue 9, item 8) apply as they are."""
    entries = [entry("usr/lib/x", "symlink", link="../../../opt/y"), entry("up", "symlink", link=".."),
               entry("a/b/far", "symlink", link="../../../../../../../etc/passwd")]
    assert run_case(arena, entries, fmt, host_view=False) == "applied"
    dest = arena / "dest"
    assert os.readlink(dest / "usr/lib/x") == "../../../opt/y"
    assert os.readlink(dest / "up") == ".."
    assert os.readlink(dest / "a/b/far") == "../../../../../../../etc/passwd"


@pytest.mark.parametrize("fmt", list(WhiteoutFormat))
@pytest.mark.parametrize("name,entries", MORE_CASES, ids=[c[0] for c in MORE_CASES])
def test_more_breakout_attempts(arena, name, entries, fmt):
    run_case(arena, entries, fmt)


def test_absolute_symlink_writes_land_inside(arena):
    victim = str(arena / "victim")
    assert run_case(arena, [entry(victim.lstrip("/"), "dir"), entry("abs", "symlink", link=victim),
                            entry("abs/new", data=b"in")], WhiteoutFormat.AUFS) == "applied"
    assert (arena / "dest" / victim.lstrip("/") / "new").read_bytes() == b"in"


def test_concurrent_hostile_and_honest_extractions(arena):
    """No chdir, no shared state: threads extracting at once each stay in their own target."""
    honest = make_tar([entry(f"d{i}/f{j}", data=os.urandom(3000)) for i in range(20) for j in range(20)])
    hostile = make_tar([entry("loophole-victim", "symlink", link=str(arena / "victim")),
                        entry("loophole-victim/hello", data=b"owned")] * 50)
    before = victim_state(arena)
    errors = []

    def work(i):
        target = arena / f"t{i}"
        target.mkdir()
        try:
            apply_tar(target, honest if i % 2 else hostile, WhiteoutFormat.AUFS)
            if i % 2:
                assert len(os.listdir(target)) == 20
        except ArchiveError as exc:
            if i % 2:
                errors.append(exc)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert victim_state(arena)[:7] == before[:7]


_PARTS = st.sampled_from(["a", "l", "..", ".", "", "victim", "hello", ".wh.a", ".wh..wh..opq",
                          ".wh..wh.plnk", "loophole-victim"])
_NAMES = st.lists(_PARTS, min_size=1, max_size=5).map("/".join) | st.sampled_from(["/../victim/hello", "/"])
_LINKS = _NAMES | st.sampled_from(["/VICTIM", "/VICTIM/hello", "../victim", "/proc/self/root/VICTIM"])
_KINDS = st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo"])


@settings(max_examples=200)
@given(ops=st.lists(st.tuples(_KINDS, _NAMES, _LINKS), min_size=1, max_size=12),
       fmt=st.sampled_from(list(WhiteoutFormat)))
def test_random_hostile_archives_never_escape(arena, ops, fmt):
    dest = arena / "dest"
    shutil.rmtree(dest)
    dest.mkdir()
    entries = [entry(name, kind, data=b"owned", link=link) for kind, name, link in ops]
    # random archives make legal absolute symlinks to the victim's host path: judge them by
    # what a container sees, not by what the host reads when it follows them
    run_case(arena, entries, fmt, host_view=False)
