"""Crash safety: whatever a killed process was doing, a new Driver shows every layer absent,
as it was, or complete; debris is swept; mounts of dead processes are adopted or cleaned up."""
from __future__ import annotations

from pathlib import Path
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from aufs import mounts
from aufs.owners import ProcessToken

from ..backends import PathLayout
from aufs.store import Driver

from .conftest import read

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def _python(code: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env)


def _dead_token() -> ProcessToken:
    proc = subprocess.Popen(["true"])
    token = ProcessToken(proc.pid, 0)  # start time 0 never matches a live process
    proc.wait()
    return token


def _complete(d: Driver, layer: str) -> bool:
    return Path(d.diff_dir(layer)).is_dir() and Path(d.layout.work_dir(layer)).is_dir() and d.parent(layer) in (None, "base")


def test_opening_sweeps_debris_of_dead_processes_only(driver: Driver, home: pathlib.Path) -> None:
    layout = PathLayout(driver.layout)
    dead = layout.temp_path("create", _dead_token(), "ghost")
    (dead / "diff").mkdir(parents=True)
    live = layout.temp_path("create", ProcessToken.current(), "busy")
    live.mkdir()
    junk = layout.tmp_dir / "not-ours"
    junk.mkdir()
    (layout.mnt_dir / "stale").mkdir()
    (layout.state_dir / "gone.refs").write_text('{"holders": {}}')
    again = Driver(home, backend=driver.backend)
    assert not dead.exists() and not junk.exists()
    assert live.exists()  # a live process's work in progress is never touched
    assert not (layout.mnt_dir / "stale").exists() and not (layout.state_dir / "gone.refs").exists()
    assert again.layers() == [] and not again.exists("ghost")
    live.rmdir()


def test_dead_view_mount_is_unmounted_by_the_sweep(driver: Driver, home: pathlib.Path) -> None:
    layout = PathLayout(driver.layout)
    view = layout.temp_path("view", _dead_token(), "x")
    view.mkdir()
    mounts.mount("tmpfs", view, "tmpfs")
    Driver(home, backend=driver.backend)
    assert not mounts.mounted(view) and not view.exists()


@pytest.mark.parametrize("operation", ["create", "remove"])
def test_killed_mid_operation_leaves_absent_or_complete_layers(
    driver: Driver, home: pathlib.Path, operation: str
) -> None:
    driver.create("base")
    if operation == "remove":
        for i in range(400):
            driver.create(f"l{i}", parent="base")
    code = f"""
        from aufs.store import Driver
        d = Driver({str(home)!r}, backend={driver.backend!r})
        print("ready", flush=True)
        for i in range(400):
            d.{operation}("l%d" % i{', parent="base"' if operation == 'create' else ''})
    """
    for delay in (0.05, 0.15, 0.3):
        proc = _python(code)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        d = Driver(home, backend=driver.backend)
        layers = d.layers()
        assert "base" in layers
        for layer in layers:
            assert _complete(d, layer), layer
        assert os.listdir(Path(d.layout.tmp_dir)) == []
        # everything listed is usable, everything else is truly absent
        for layer in layers[:3]:
            with d.mount(layer):
                pass
        if operation == "create":
            for layer in layers:
                if layer != "base":
                    d.remove(layer)
        else:
            for i in range(400):
                if not d.exists(f"l{i}"):
                    d.create(f"l{i}", parent="base")


def test_mount_of_a_dead_process_is_adopted_then_released(driver: Driver, home: pathlib.Path) -> None:
    driver.create("base")
    driver.create("top", parent="base")
    proc = _python(f"""
        import os, signal
        from aufs.store import Driver
        d = Driver({str(home)!r}, backend={driver.backend!r})
        p = d.get("top")
        open(p + "/by-dead", "w").write("x")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc.wait()
    assert driver.is_mounted("top")
    path = driver.get("top")  # adopts: no second mount stacked on the first
    assert read(f"{path}/by-dead") == "x"
    assert len([i for i in mounts.submounts(Path(driver.layout.mountpoint("top")))]) == 1
    driver.put("top")  # the dead holder's reference is void: the last put unmounts
    assert not driver.is_mounted("top")


def test_cleanup_removes_mounts_left_by_a_dead_process(driver: Driver, home: pathlib.Path) -> None:
    driver.create("base")
    for name in ("a", "b"):
        driver.create(name, parent="base")
    proc = _python(f"""
        import os, signal
        from aufs.store import Driver
        d = Driver({str(home)!r}, backend={driver.backend!r})
        d.get("a"); d.get("b"); d.get("base")
        with d.diffs.lower_view("a"):
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc.wait()
    assert driver.is_mounted("a") and driver.is_mounted("b")
    fresh = Driver(home, backend=driver.backend)  # sweeps the dead view
    fresh.cleanup()
    assert mounts.submounts(home) == []
    assert os.listdir(Path(fresh.layout.tmp_dir)) == []
    if driver.backend == "fuse-overlayfs":
        out = subprocess.run(["pgrep", "-f", f"fuse-overlayfs.*{home}"], capture_output=True, text=True, check=False)
        assert out.stdout.strip() == ""  # no daemon outlives its mount


def test_a_mount_whose_daemon_died_is_replaced(driver: Driver) -> None:
    if driver.backend != "fuse-overlayfs":
        pytest.skip("only a userspace daemon can die under its mount")
    driver.create("base")
    driver.create("top", parent="base")
    path = driver.get("top")
    with open(f"{path}/f", "w") as f:
        f.write("kept")
    pid = int(Path(driver.layout.backend_record("top")).read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    with pytest.raises(OSError):
        os.listdir(path)
    assert driver.is_mounted("top")
    assert driver.get("top") == path  # a fresh daemon
    assert os.listdir(path) == ["f"]
    driver.put("top")
    driver.put("top")
    assert not driver.is_mounted("top")
    driver.cleanup()
    assert mounts.submounts(driver.home) == []


def test_killed_inside_apply_diff_leaves_the_layer_as_it_was_or_complete(
    driver: Driver, home: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    pytest.importorskip("aufs.apply")
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3000):
            info = tarfile.TarInfo(f"dir{i % 10}/file{i}")
            info.size = 2048
            tar.addfile(info, io.BytesIO(b"x" * 2048))
    archive = tmp_path / "layer.tar"
    archive.write_bytes(buf.getvalue())
    full = {f"dir{i % 10}/file{i}" for i in range(3000)} | {f"dir{i}" for i in range(10)}
    for n, delay in enumerate((0.02, 0.08, 0.2, 0.5, 3.0)):
        layer = f"l{n}"
        driver.create(layer)
        (Path(driver.diff_dir(layer)) / "old").write_text("old")
        proc = _python(f"""
            from aufs.store import Driver
            Driver({str(home)!r}, backend={driver.backend!r}).apply_diff({layer!r}, {str(archive)!r})
        """)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        d = Driver(home, backend=driver.backend)
        diff = Path(d.diff_dir(layer))
        names = {str(p.relative_to(diff)) for p in diff.rglob("*")}
        assert names in ({"old"}, full | {"old"}), f"partial layer after a kill at {delay}s"
        assert os.listdir(Path(d.layout.tmp_dir)) == []
