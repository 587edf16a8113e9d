"""Driver.apply_diff's staging and atomic swap, and the diff/changes glue.

The extractor itself (aufs.apply) is tested elsewhere; here a stand-in extractor that behaves
by its contract (never modifies a non-directory inode in place) or fails midway shows that the
store swaps a complete result in, or leaves the layer exactly as it was.
"""
from __future__ import annotations

from pathlib import Path
import io
import os
import pathlib
import stat
import types
from collections.abc import Iterator
from typing import Any

import pytest

import aufs
import aufs.diffs
from aufs.store import Driver

from .conftest import read, write


def _snapshot(root: pathlib.Path) -> dict[str, Any]:
    out: dict[str, Any] = {"": (os.lstat(root).st_mode, os.lstat(root).st_ino)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data = pathlib.Path(p).read_bytes() if stat.S_ISREG(st.st_mode) else None
            xattrs = {a: os.getxattr(p, a, follow_symlinks=False) for a in os.listxattr(p, follow_symlinks=False)}
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else None, data, xattrs)
    return out


@pytest.fixture
def fake_apply(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """Install a stand-in aufs.apply whose behaviour the test chooses."""
    state = types.SimpleNamespace(action=None, calls=0)

    def apply_tar(target_dir: str, source: Any, fmt: Any, *, rootless: bool = False) -> None:
        state.calls += 1
        state.action(pathlib.Path(target_dir))

    module = types.ModuleType("aufs.apply")
    module.apply_tar = apply_tar  # type: ignore[attr-defined]
    monkeypatch.setattr(aufs.diffs, "_apply", module)
    monkeypatch.setattr(aufs, "apply", module, raising=False)
    yield state


def _populated(driver: Driver) -> pathlib.Path:
    driver.create("l")
    diff = Path(driver.diff_dir("l"))
    (diff / "dir").mkdir()
    os.chown(diff / "dir", 5, 6)
    os.chmod(diff / "dir", 0o1777)
    os.setxattr(diff / "dir", "user.note", b"kept")
    os.setxattr(diff / "dir", "trusted.overlay.opaque", b"y")
    write(str(diff / "dir" / "keep"), "keep")
    write(str(diff / "old"), "old")
    os.link(diff / "old", diff / "old-link")
    os.symlink("old", diff / "sym")
    return diff


@pytest.mark.parametrize("failure", [aufs.ArchiveError("corrupt"), KeyboardInterrupt(), aufs.UnsafeArchive("escape")])
def test_failed_apply_leaves_the_layer_exactly_as_it_was(driver: Driver, fake_apply: Any, failure: BaseException) -> None:
    diff = _populated(driver)
    before = _snapshot(diff)

    def half_then_fail(target: pathlib.Path) -> None:
        write(str(target / "new"), "new")
        (target / "old").unlink()
        write(str(target / "old"), "replaced")
        (target / "dir" / "keep").unlink()
        raise failure

    fake_apply.action = half_then_fail
    with pytest.raises(type(failure)):
        driver.apply_diff("l", b"ignored")
    assert _snapshot(diff) == before
    assert os.listdir(Path(driver.layout.tmp_dir)) == []


def test_successful_apply_swaps_in_the_new_tree_and_keeps_dir_attributes(driver: Driver, fake_apply: Any) -> None:
    diff = _populated(driver)
    keep_inode = os.lstat(diff / "dir" / "keep").st_ino

    def change(target: pathlib.Path) -> None:
        write(str(target / "new"), "12345")
        (target / "old").unlink()
        write(str(target / "old"), "replaced")

    fake_apply.action = change
    size = driver.apply_diff("l", b"ignored")
    assert fake_apply.calls == 1
    assert (diff / "new").read_text() == "12345" and (diff / "old").read_text() == "replaced"
    assert (diff / "old-link").read_text() == "old"  # the other name kept the old inode
    assert os.lstat(diff / "dir" / "keep").st_ino == keep_inode  # a clone, not a copy
    st = os.lstat(diff / "dir")
    assert stat.S_IMODE(st.st_mode) == 0o1777 and (st.st_uid, st.st_gid) == (5, 6)
    assert os.getxattr(diff / "dir", "user.note") == b"kept"
    assert os.getxattr(diff / "dir", "trusted.overlay.opaque") == b"y"
    assert os.readlink(diff / "sym") == "old"
    assert stat.S_IMODE(os.lstat(diff).st_mode) == 0o755
    assert os.listdir(Path(driver.layout.tmp_dir)) == []
    assert size == len("12345") + len("replaced") + len("keep") + len("old")


def test_apply_onto_an_empty_layer(driver: Driver, fake_apply: Any) -> None:
    driver.create("e")
    fake_apply.action = lambda t: write(str(t / "f"), "abc")
    assert driver.apply_diff("e", b"x") == 3
    with driver.mount("e") as root:
        assert os.listdir(root) == ["f"]
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755


def test_apply_refuses_a_mounted_layer(driver: Driver, fake_apply: Any) -> None:
    driver.create("m")
    fake_apply.action = lambda t: None
    with driver.mount("m"), pytest.raises(aufs.LayerInUse):
        driver.apply_diff("m", b"x")
    assert fake_apply.calls == 0


def test_apply_on_missing_layer(driver: Driver, fake_apply: Any) -> None:
    with pytest.raises(aufs.LayerNotFound):
        driver.apply_diff("nope", b"x")


def test_real_apply_then_diff_round_trip(driver: Driver) -> None:
    pytest.importorskip("aufs.apply")
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"world"))
    driver.create("base")
    assert driver.apply_diff("base", buf.getvalue()) == 5
    driver.create("top", parent="base")
    with driver.mount("top") as root:
        assert read(f"{root}/hello") == "world"
        os.unlink(f"{root}/hello")
        write(f"{root}/new", "n")
    changes = driver.changes("top")
    assert [(c.path, c.kind.name) for c in changes] == [("/hello", "DELETE"), ("/new", "ADD")]
    out = io.BytesIO()
    assert driver.diff("top", out) == len(out.getvalue())
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
    assert sorted(n.removeprefix("./") for n in names) == [".wh.hello", "new"]
    assert driver.diff_size("top") == 1


def test_diff_and_changes_of_a_mounted_layer(driver: Driver) -> None:
    """`docker commit`: export a layer while its container still runs on the mount."""
    import tarfile

    driver.create("base")
    with driver.mount("base") as root:
        write(f"{root}/hello", "world")
    driver.create("top", parent="base")
    with driver.mount("top") as root:
        os.unlink(f"{root}/hello")
        write(f"{root}/new", "n")
        out = io.BytesIO()
        driver.diff("top", out)
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        assert sorted(members) == [".wh.hello", "new"]
        assert members[".wh.hello"].isfile()
        assert [(c.path, c.kind.name) for c in driver.changes("top")] == [("/hello", "DELETE"), ("/new", "ADD")]
        assert sorted(os.listdir(root)) == ["new"]  # the live view is untouched
