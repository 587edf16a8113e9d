"""Docker's graph-driver conformance scenarios, re-implemented against aufs.Driver, per backend."""
from __future__ import annotations

from pathlib import Path
import os
import pathlib
import stat

import pytest

import aufs
from aufs import mounts
from aufs.store import Driver
from aufs.whiteouts import EntryKind, WhiteoutFormat, classify

from .conftest import read, tree, write


def test_create_empty_layer_is_an_empty_0755_root_owned_dir(driver: Driver) -> None:
    driver.create("empty")
    assert driver.exists("empty") and driver.layers() == ["empty"] and driver.parent("empty") is None
    with driver.mount("empty") as root:
        st = os.stat(root)
        assert stat.S_IMODE(st.st_mode) == 0o755 and stat.S_ISDIR(st.st_mode)
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert os.listdir(root) == []


def test_child_of_empty_layer_is_empty_too(driver: Driver) -> None:
    driver.create("base")
    driver.create("child", parent="base")
    with driver.mount("child") as root:
        assert os.listdir(root) == []
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755
    assert driver.parent("child") == "base"


def test_base_modes_owners_setuid_sticky_visible_through_child(driver: Driver) -> None:
    driver.create("base")
    with driver.mount("base") as root:
        os.mkdir(f"{root}/sticky", 0o1777)
        os.chmod(f"{root}/sticky", 0o1777)
        os.mkdir(f"{root}/setgid")
        os.chmod(f"{root}/setgid", 0o2750)
        write(f"{root}/suid", "#!/bin/sh\n")
        os.chown(f"{root}/suid", 1000, 1001)
        os.chmod(f"{root}/suid", 0o4755)
        write(f"{root}/private", "secret")
        os.chmod(f"{root}/private", 0o600)
        os.symlink("suid", f"{root}/link")
        os.chown(f"{root}/link", 7, 8, follow_symlinks=False)
    driver.create("child", parent="base")
    with driver.mount("child") as root:
        assert stat.S_IMODE(os.stat(f"{root}/sticky").st_mode) == 0o1777
        assert stat.S_IMODE(os.stat(f"{root}/setgid").st_mode) == 0o2750
        st = os.stat(f"{root}/suid")
        assert stat.S_IMODE(st.st_mode) == 0o4755 and (st.st_uid, st.st_gid) == (1000, 1001)
        assert stat.S_IMODE(os.stat(f"{root}/private").st_mode) == 0o600
        assert os.readlink(f"{root}/link") == "suid"
        assert os.lstat(f"{root}/link").st_uid == 7
        assert read(f"{root}/private") == "secret"


def test_writes_land_in_the_layer_and_deletions_become_whiteouts(driver: Driver) -> None:
    driver.create("base")
    with driver.mount("base") as root:
        write(f"{root}/keep", "k")
        write(f"{root}/gone", "g")
    base_before = tree(str(Path(driver.diff_dir("base"))))
    driver.create("top", parent="base")
    with driver.mount("top") as root:
        os.unlink(f"{root}/gone")
        write(f"{root}/new", "n")
    assert tree(str(Path(driver.diff_dir("base")))) == base_before
    diff = Path(driver.diff_dir("top"))
    kinds = {}
    for entry in os.scandir(diff):
        st = entry.stat(follow_symlinks=False)
        kinds[entry.name] = classify(entry.name, st.st_mode, st.st_rdev, driver.whiteout_format)
    assert kinds["new"].kind is EntryKind.CONTENT
    whiteouts = [e.target for e in kinds.values() if e.kind is EntryKind.WHITEOUT]
    assert whiteouts == ["gone"]
    if driver.whiteout_format is WhiteoutFormat.AUFS:
        assert sorted(kinds) == [".wh.gone", "new"]  # no stray daemon markers
    with driver.mount("top") as root:
        assert sorted(os.listdir(root)) == ["keep", "new"]


def test_duplicate_id_is_refused_and_changes_nothing(driver: Driver) -> None:
    driver.create("a")
    with pytest.raises(aufs.LayerExists) as info:
        driver.create("a")
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, aufs.AufsError)
    assert driver.layers() == ["a"]
    assert os.listdir(Path(driver.layout.tmp_dir)) == []


def test_missing_parent_is_refused_and_leaves_nothing(driver: Driver) -> None:
    with pytest.raises(aufs.LayerNotFound) as info:
        driver.create("a", parent="nope")
    assert isinstance(info.value, LookupError)
    assert driver.layers() == [] and not driver.exists("a")
    assert os.listdir(Path(driver.layout.tmp_dir)) == []


@pytest.mark.parametrize("method", ["get", "put", "parent", "is_mounted", "remove"])
def test_missing_layer_raises_layer_not_found(driver: Driver, method: str) -> None:
    with pytest.raises(aufs.LayerNotFound):
        getattr(driver, method)("missing")
    assert driver.exists("missing") is False


@pytest.mark.parametrize(
    "bad", ["", "a" * 129, "-a", ".a", "_a", "a/b", "..", ".", "a b", "caf\u00e9", "a\x00", "a:b", "/abs"]
)
def test_invalid_ids_are_value_errors(driver: Driver, bad: str) -> None:
    with pytest.raises(ValueError):
        driver.create(bad)
    for method in ("get", "put", "parent", "is_mounted", "remove"):
        # a malformed id names no layer: both a ValueError and a LayerNotFound
        with pytest.raises(aufs.InvalidLayerId) as info:
            getattr(driver, method)(bad)
        assert isinstance(info.value, ValueError) and isinstance(info.value, aufs.LayerNotFound)
    driver.create("ok")
    with pytest.raises(ValueError):
        driver.create("ok2", parent=bad)
    assert driver.exists(bad) is False
    assert driver.layers() == ["ok"]


@pytest.mark.parametrize("good", ["a" * 128, "A.b-c_d", "0", "sha256.abc", "9-"])
def test_valid_ids(driver: Driver, good: str) -> None:
    driver.create(good)
    assert driver.exists(good) and driver.layers() == [good]
    with driver.mount(good) as root:
        assert os.path.isdir(root)


def test_removing_a_parent_is_refused(driver: Driver) -> None:
    driver.create("base")
    driver.create("child", parent="base")
    with pytest.raises(aufs.LayerInUse):
        driver.remove("base")
    assert driver.layers() == ["base", "child"]
    driver.remove("child")
    driver.remove("base")
    assert driver.layers() == []
    leftovers = [p for p in driver.home.rglob("*") if "base" in p.name or "child" in p.name]
    assert leftovers == []


def test_removing_a_held_layer_is_refused_unless_forced(driver: Driver) -> None:
    driver.create("base")
    driver.create("child", parent="base")
    path = driver.get("child")
    write(f"{path}/f", "x")
    with pytest.raises(aufs.LayerInUse, match=f"pid {os.getpid()}") as info:
        driver.remove("child")
    assert info.value.layer_id == "child"
    assert driver.exists("child") and driver.is_mounted("child") and read(f"{path}/f") == "x"
    driver.remove("child", force=True)
    assert not driver.exists("child")
    assert not mounts.mounted(path) and not os.path.exists(path)
    assert [i for i in mounts.submounts(driver.home) if i.mountpoint != str(driver.home)] == []


def test_removing_a_mounted_layer_nobody_holds_unmounts_it(driver: Driver) -> None:
    driver.create("base")
    driver.create("child", parent="base")
    path = driver.get("child")
    # the holder's process died (its references are void): the mount is debris, not in use
    refs = driver.layout.refs_file("child")
    with open(refs, "w") as f:
        f.write('{"holders": {"999999-1:dead": 1}}')
    driver.remove("child")
    assert not driver.exists("child") and not mounts.mounted(path)


def test_cleanup_leaves_no_mounts(driver: Driver) -> None:
    driver.create("base")
    driver.create("a", parent="base")
    driver.create("b", parent="base")
    for layer in ("base", "a", "b", "a"):
        driver.get(layer)
    assert driver.is_mounted("a") and driver.is_mounted("b")
    driver.cleanup()
    assert mounts.submounts(driver.home) == []
    assert not driver.is_mounted("a")
    driver.cleanup()  # idempotent
    # the store still works afterwards
    with driver.mount("a") as root:
        assert os.listdir(root) == []


def test_reference_counting(driver: Driver) -> None:
    driver.create("base")
    driver.create("l", parent="base")
    p1 = driver.get("l")
    p2 = driver.get("l")
    assert p1 == p2 and driver.is_mounted("l")
    driver.put("l")
    assert driver.is_mounted("l")
    driver.put("l")
    assert not driver.is_mounted("l")
    driver.put("l")  # a stray put is harmless
    assert not driver.is_mounted("l")


def test_put_without_get_never_unmounts_another_holders_mount(driver: Driver, home: pathlib.Path) -> None:
    driver.create("base")
    driver.create("l", parent="base")
    path = driver.get("l")
    write(f"{path}/f", "in use")
    other = Driver(home, backend=driver.backend)
    other.put("l")
    other.put("l")
    assert driver.is_mounted("l") and read(f"{path}/f") == "in use"
    # the other holder shares the mount, and its put only gives back its own reference
    assert other.get("l") == path
    other.put("l")
    assert driver.is_mounted("l")
    driver.put("l")
    assert not driver.is_mounted("l")


def test_base_layer_get_shows_its_own_content(driver: Driver) -> None:
    driver.create("base")
    with driver.mount("base") as root:
        write(f"{root}/f", "x")
    assert read(Path(driver.diff_dir("base")) / "f") == "x"


def test_status(driver: Driver) -> None:
    driver.create("a")
    status = driver.status()
    assert status["backend"] == driver.backend
    assert status["home"] == str(driver.home)
    assert status["layers"] == 1 and status["mounted"] == 0 and status["read_only"] is False
    assert status["max_depth"] == driver.max_depth
    assert status["backing_filesystem"] == "tmpfs"
    with driver.mount("a"):
        assert driver.status()["mounted"] == 1


def test_home_and_backend_properties(driver: Driver, home: pathlib.Path, backend_name: str) -> None:
    assert driver.home == home and isinstance(driver.home, pathlib.Path)
    assert driver.backend == backend_name


def test_mount_context_manager_puts_on_error(driver: Driver) -> None:
    driver.create("base")
    driver.create("l", parent="base")
    with pytest.raises(RuntimeError), driver.mount("l"):
        raise RuntimeError("boom")
    assert not driver.is_mounted("l")


def test_root_opaque_layer_hides_everything_below(driver: Driver) -> None:
    from aufs.whiteouts import make_opaque

    driver.create("base")
    with driver.mount("base") as root:
        write(f"{root}/old", "o")
        os.mkdir(f"{root}/dir")
    driver.create("opaque", parent="base")
    fd = os.open(Path(driver.diff_dir("opaque")), os.O_RDONLY | os.O_DIRECTORY)
    try:
        make_opaque(fd, driver.whiteout_format)
    finally:
        os.close(fd)
    write(str(Path(driver.diff_dir("opaque")) / "mine"), "m")
    driver.create("top", parent="opaque")
    for layer in ("opaque", "top"):
        with driver.mount(layer) as root:
            assert sorted(os.listdir(root)) == ["mine"], layer
    with driver.diffs.lower_view("top") as lower:
        assert lower is not None and "old" not in os.listdir(lower)


def test_lower_view(driver: Driver) -> None:
    driver.create("a")
    with driver.diffs.lower_view("a") as lower:
        assert lower is None
    with driver.mount("a") as root:
        write(f"{root}/fa", "a")
        write(f"{root}/gone", "g")
    driver.create("b", parent="a")
    with driver.diffs.lower_view("b") as lower:
        assert lower is not None and sorted(os.listdir(lower)) == ["fa", "gone"]
    with driver.mount("b") as root:
        write(f"{root}/fb", "b")
        os.unlink(f"{root}/gone")
    driver.create("c", parent="b")
    with driver.diffs.lower_view("c") as lower:
        assert lower is not None and sorted(os.listdir(lower)) == ["fa", "fb"]
        view = lower
    assert not mounts.mounted(view) and not os.path.exists(view)
    assert os.listdir(Path(driver.layout.tmp_dir)) == []


def test_busy_mount_is_detached_lazily_and_its_mountpoint_removed(driver: Driver) -> None:
    driver.create("base")
    with driver.mount("base") as root:
        write(f"{root}/lower", "l")
    driver.create("top", parent="base")
    path = driver.get("top")
    write(f"{path}/f", "still readable")
    os.unlink(f"{path}/lower")
    busy = open(f"{path}/f")  # noqa: SIM115 - held open across the put on purpose
    try:
        driver.put("top")
        assert not driver.is_mounted("top") and not os.path.exists(path)
        assert busy.read() == "still readable"
    finally:
        busy.close()
    # the next get finds everything in place (and in the store's own format)
    with driver.mount("top") as root:
        assert sorted(os.listdir(root)) == ["f"]
    names = sorted(os.listdir(Path(driver.diff_dir("top"))))
    assert names == ([".wh.lower", "f"] if driver.whiteout_format is WhiteoutFormat.AUFS else ["f", "lower"])


def test_failed_mount_raises_mount_error_and_leaves_nothing(driver: Driver) -> None:
    import shutil

    driver.create("base")
    driver.create("top", parent="base")
    shutil.rmtree(Path(driver.diff_dir("base")))  # a broken lower layer: the mount must fail
    with pytest.raises(aufs.MountError) as info:
        driver.get("top")
    assert isinstance(info.value, OSError)
    assert not driver.is_mounted("top")
    assert not Path(driver.layout.mountpoint("top")).exists()
    assert not Path(driver.layout.refs_file("top")).exists()
    assert not Path(driver.layout.backend_record("top")).exists()
    driver.put("top")  # the failed get took no reference: nothing to give back
