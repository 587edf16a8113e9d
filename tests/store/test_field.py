"""The store and its CLI where users met them (issue 9): other local users, other processes,
read-only filesystems, wrong homes, scripts reading --json."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aufs
from aufs import kernel, mounts
from aufs.cli import main
from aufs.store import Driver

from ..backends import backend_params
from ..users import User
from .conftest import read, write


def cli(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--home", str(home), *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def store(home: Path) -> Driver:
    d = Driver(home, backend="overlay")
    yield d
    d.cleanup()


# ---------------------------------------------------------------- 1: other local users


def _image_with_setuid_id(d: Driver) -> None:
    d.create("base")
    diff = d.diff_dir("base")
    shutil.copy2("/usr/bin/id", os.path.join(diff, "id-suid"))
    os.chmod(os.path.join(diff, "id-suid"), 0o4755)
    write(os.path.join(diff, "secret"), "the image's secret")
    os.chmod(os.path.join(diff, "secret"), 0o644)
    d.create("app", parent="base")


def test_other_users_cannot_reach_a_mounted_rootfs(ramdir: Path, other_user: User) -> None:
    os.chmod(ramdir, 0o755)
    old_umask = os.umask(0)  # whatever the umask
    try:
        d = Driver(ramdir / "store", backend="overlay")
    finally:
        os.umask(old_umask)
    try:
        _image_with_setuid_id(d)
        root = d.get("app")
        assert read(os.path.join(root, "secret")) == "the image's secret"
        # what the field test did: run the image's setuid-root program as another user
        proc = other_user.run([os.path.join(root, "id-suid"), "-u"])
        assert proc.returncode != 0 and b"0\n" != proc.stdout, proc.stdout
        for path in (root, os.path.join(root, "secret"), os.path.join(d.diff_dir("base"), "secret"),
                     d.layout.links_dir, d.layout.state_dir, d.layout.tmp_dir):
            assert other_user.run(["cat", path]).returncode != 0, path
            assert other_user.run(["ls", path]).returncode != 0, path
        for directory in d.layout.directories():
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        d.put("app")
    finally:
        d.cleanup()


def test_an_older_open_store_is_tightened_and_check_says_so(ramdir: Path, other_user: User) -> None:
    os.chmod(ramdir, 0o755)
    d = Driver(ramdir / "store", backend="overlay")
    try:
        _image_with_setuid_id(d)
        for directory in d.layout.directories():  # as stores before 0.2 were made
            os.chmod(directory, 0o755)
        root = d.get("app")
        secret = os.path.join(root, "secret")
        assert other_user.run(["cat", secret]).returncode == 0  # the hole, as the field saw it
        again = Driver(ramdir / "store", backend="overlay")
        report = again.check()
        loose = [f for f in report.findings if f.kind == "loose-permissions"]
        assert {f.path for f in loose} == set(d.layout.directories()) and all(f.repaired for f in loose)
        assert report.ok
        assert other_user.run(["cat", secret]).returncode != 0
        assert other_user.run([os.path.join(root, "id-suid"), "-u"]).returncode != 0
        d.put("app")
    finally:
        d.cleanup()


# ---------------------------------------------------------------- 2: other processes hold layers

_HOLD = textwrap.dedent("""
    import sys, aufs
    d = aufs.Driver(sys.argv[1], backend="overlay")
    d.get("app")
    print("held", flush=True)
    sys.stdin.read()
    d.put("app")
""")


def test_remove_refuses_a_layer_another_process_holds(store: Driver, home: Path) -> None:
    store.create("base")
    store.create("app", parent="base")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(home)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(aufs.LayerInUse, match=f"pid {holder.pid}"):
            store.remove("app")
        code, _, err = cli(home, "rm", "app")
        assert code == 5 and f"pid {holder.pid}" in err, err
        assert store.exists("app") and store.is_mounted("app")
        holder.communicate(b"", timeout=30)  # its put() works: the layer was never taken away
        assert holder.returncode == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert not store.is_mounted("app")
    code, out, err = cli(home, "rm", "app", "missing", "base")
    assert code == 3 and out == "" and "removed app" in err and "missing" in err, (out, err)
    assert store.layers() == ["base"]


def test_force_removes_a_held_layer(store: Driver, home: Path) -> None:
    store.create("base")
    store.create("app", parent="base")
    code, path, _ = cli(home, "mount", "app")
    assert code == 0
    code, out, err = cli(home, "rm", "--force", "app")
    assert code == 0 and out.strip() == "app", err
    assert not store.exists("app") and not mounts.mounted(path.strip())


# ---------------------------------------------------------------- 13: aufs mount is a deliberate hold


def test_aufs_mount_is_a_hold_that_check_respects(store: Driver, home: Path) -> None:
    store.create("base")
    store.create("app", parent="base")
    code, out, _ = cli(home, "mount", "app")
    assert code == 0
    path = out.strip()
    write(os.path.join(path, "hello"), "hi")
    assert cli(home, "mount", "app")[1].strip() == path  # the same mount, one hold
    code, out, _ = cli(home, "check")
    assert code == 0, out
    code, out, _ = cli(home, "check", "--repair")
    assert code == 0 and mounts.mounted(path), out
    assert cli(home, "umount", "app")[0] == 0
    assert not mounts.mounted(path)
    # umount of a layer that is not mounted says so and mounts nothing
    code, out, _ = cli(home, "umount", "app")
    assert code == 0 and "not mounted" in out and not store.is_mounted("app")
    assert read(os.path.join(store.diff_dir("app"), "hello")) == "hi"


# ---------------------------------------------------------------- 15: a read-only store


@pytest.fixture
def ro_home(ramdir: Path) -> Path:
    fs = ramdir / "fs"
    fs.mkdir()
    mounts.mount("tmpfs", str(fs), "tmpfs", 0, "size=64m")
    yield fs / "store"
    for info in mounts.submounts(str(fs)):
        mounts.unmount(info.mountpoint, lazy=True)


def test_a_read_only_store_can_be_read(ro_home: Path, ramdir: Path) -> None:
    d = Driver(ro_home, backend="overlay")
    d.create("base")
    write(os.path.join(d.diff_dir("base"), "a"), "A")
    d.create("app", parent="base")
    write(os.path.join(d.diff_dir("app"), "b"), "B")
    mounts.mount(None, str(ro_home.parent), None, mounts.MS_REMOUNT | mounts.MS_RDONLY)
    for argv in (["ls"], ["status"], ["changes", "app"], ["check"], ["--json", "status"]):
        code, out, err = cli(ro_home, *argv)
        assert code == 0, (argv, err)
    assert json.loads(cli(ro_home, "--json", "status")[1])["read_only"] is True
    assert "A /b" in cli(ro_home, "changes", "app")[1]
    code, _, err = cli(ro_home, "diff", "app", "-o", str(ramdir / "app.tar"))
    assert code == 0 and (ramdir / "app.tar").stat().st_size > 0, err
    code, _, err = cli(ro_home, "export", "app", str(ramdir / "image"))
    assert code == 0, err
    for argv in (["create", "x"], ["mount", "app"], ["rm", "app"], ["apply", "app", str(ramdir / "app.tar")],
                 ["check", "--repair"]):
        code, _, err = cli(ro_home, *argv)
        assert code == 10 and "read-only" in err and str(ro_home) in err and "Errno" not in err, (argv, err)
    assert Driver(ro_home).layers() == ["app", "base"]


# ---------------------------------------------------------------- 16: wrong homes


def test_no_store_in_an_empty_path_or_over_foreign_files(ramdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ramdir)
    with pytest.raises(ValueError):
        Driver("")
    assert os.listdir(ramdir) == []
    foreign = ramdir / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(aufs.StoreFormatMismatch, match="not empty"):
        Driver(foreign)
    assert os.listdir(foreign) == ["cat.jpg"]
    code, _, err = cli(foreign, "create", "x")
    assert code != 0 and os.listdir(foreign) == ["cat.jpg"], err


def test_reading_commands_do_not_create_a_store(ramdir: Path) -> None:
    missing = ramdir / "nowhere"
    for argv in (["ls"], ["status"], ["check"], ["changes", "x"], ["mount", "x"], ["cleanup"]):
        code, _, err = cli(missing, *argv)
        assert code == 3 and "no aufs store" in err, (argv, err)
        assert not missing.exists()
    with pytest.raises(aufs.StoreNotFound):
        Driver(missing, create=False)
    assert cli(missing, "create", "x")[0] == 0 and Driver(missing).layers() == ["x"]


# ---------------------------------------------------------------- 18: errors for scripts


def test_json_errors_are_json_on_stderr(ramdir: Path) -> None:
    home = ramdir / "store"
    assert cli(home, "create", "a")[0] == 0
    code, out, err = cli(home, "--json", "mount", "nope")
    record = json.loads(err)
    assert code == 3 and out == ""
    assert record["exit"] == 3 and record["kind"] == "LayerNotFound" and record["layer_id"] == "nope"
    assert "nope" in record["error"]
    status = json.loads(cli(home, "--json", "status")[1])
    assert status["layers"] == 1 and isinstance(status["max_depth"], int) and status["read_only"] is False


def test_a_home_without_trusted_xattrs_is_refused(ramdir: Path) -> None:
    fs = ramdir / "ram"
    fs.mkdir()
    mounts.mount("ramfs", str(fs), "ramfs")
    try:
        with pytest.raises(aufs.BackendUnavailable, match="trusted"):
            Driver(fs / "store", backend="overlay")
        assert os.listdir(fs) == []  # nothing half-created
        code, _, err = cli(fs / "store", "create", "x")
        assert code == 8 and "trusted" in err and os.listdir(fs) == []
    finally:
        mounts.unmount(str(fs))


# ---------------------------------------------------------------- 14: any byte in a home path

ODD_HOMES = ["systemd\\x2descaped", "with,comma", "with:colon", "with space", "new\nline", "tab\there", "ünï"]


@pytest.mark.parametrize("backend_name", backend_params(["overlay", "fuse-overlayfs"]), indirect=True)
@pytest.mark.parametrize("odd", ODD_HOMES, ids=lambda o: o.encode("unicode_escape").decode())
@pytest.mark.parametrize("legacy", [False, True], ids=["new-mount-api", "mount2"])
def test_any_home_path_mounts(ramdir: Path, backend_name: str, odd: str, legacy: bool,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    if legacy:
        if backend_name != "overlay":
            pytest.skip("only kernel overlayfs has a legacy mount(2) path")
        plain = dataclasses.replace(kernel.features(), overlay_lowerdir_plus=False, overlay_layer_fd=False)
        monkeypatch.setattr(kernel, "features", lambda: plain)
    d = Driver(ramdir / odd / "store", backend=backend_name)
    try:
        d.create("base")
        write(os.path.join(d.diff_dir("base"), "f"), "x")
        d.create("top", parent="base")
        if backend_name == "fuse-overlayfs" and ":" in odd:
            with pytest.raises(aufs.MountError, match="':'"):
                d.get("top")  # fuse-overlayfs splits every path at ':' and cannot escape it
            return
        with d.mount("top") as root:
            assert read(os.path.join(root, "f")) == "x"
            write(os.path.join(root, "g"), "y")
        assert read(os.path.join(d.diff_dir("top"), "g")) == "y"
        assert sorted(c.path for c in d.changes("top")) == ["/g"]
    finally:
        d.cleanup()
