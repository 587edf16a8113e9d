"""Ctrl-C as an ordinary user (issue 10): in the middle of a rootless import, and in a loop of
mounts, it leaves no mount, no fuse-overlayfs daemon, no temporary entry and no half layer."""
from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import tarfile
import threading
import time

import pytest

from ..users import User
from .conftest import user_popen, user_processes
from .test_userns_store import holders, no_holder_left  # noqa: F401 (fixture)

_APPLY = r'''
import sys, aufs
d = aufs.Driver(sys.argv[1], rootless=sys.argv[2])
d.create("victim")
print("ready", flush=True)
d.apply_diff("victim", sys.stdin.buffer)
print("finished", flush=True)
'''

# argv: store home, and the layer to mount (default: a new "app" on a new "base")
MOUNT_LOOP = r'''
import os, sys, aufs
d = aufs.Driver(sys.argv[1])
layer = sys.argv[2] if len(sys.argv) > 2 else "app"
if not d.exists(layer):
    d.create("base"); d.create(layer, parent="base")
n = 0
while True:
    with d.mount(layer) as root:
        open(os.path.join(root, "f%d" % (n % 5)), "w").write("x")
        n += 1
        if n == 3:
            print("ready", flush=True)
'''

_STATE = r'''
import json, os, sys, aufs
d = aufs.Driver(sys.argv[1])
print(json.dumps({"status": d.status(), "layers": sorted(d.layers()),
                  "tmp": os.listdir(os.path.join(sys.argv[1], "tmp")),
                  "victim": sorted(os.listdir(d.diff_dir("victim"))) if "victim" in d.layers() else None}))
'''


def _big_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(256):
            info = tarfile.TarInfo(f"data/{i:04d}")
            info.size, info.uid, info.gid, info.mode = 65536, 0, 0, 0o4755
            tar.addfile(info, io.BytesIO(bytes([i]) * 65536))
    return buf.getvalue()


def feed_slowly(proc, data: bytes) -> threading.Thread:  # type: ignore[no-untyped-def]
    """Write ``data`` to ``proc``'s stdin in 64 KiB pieces, 10 ms apart, from a thread (started),
    so that an interrupt lands in the middle of the import."""
    def feed() -> None:
        try:
            for at in range(0, len(data), 65536):
                proc.stdin.write(data[at:at + 65536])
                proc.stdin.flush()
                time.sleep(0.01)
            proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass  # interrupted: that is the point

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    return feeder


def _interrupt(proc) -> None:  # type: ignore[no-untyped-def]
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)


def _clean(user: User, user_dir: pathlib.Path, home: pathlib.Path) -> dict:
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if str(user_dir) in line]
    assert user_processes(user, "fuse-overlayfs") == []
    assert holders(user) == []
    proc = user.python(_STATE, str(home))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert holders(user) == []
    state = json.loads(proc.stdout)
    assert state["tmp"] == [] and state["status"]["mounted"] == 0
    return state


@pytest.mark.parametrize("kind", ["override_stat", "userns"])
def test_ctrl_c_in_a_rootless_import(kind: str, test_user: User, user_fuse: None, user_dir: pathlib.Path) -> None:
    home = user_dir / "store"
    data = _big_layer()
    proc = user_popen(test_user, _APPLY, str(home), kind, stdin=-1)
    assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode()[-2000:]

    feeder = feed_slowly(proc, data)
    time.sleep(0.5)
    _interrupt(proc)
    feeder.join(timeout=30)
    assert proc.returncode != 0 and b"finished" not in proc.stdout.read()
    state = _clean(test_user, user_dir, home)
    assert state["layers"] == ["victim"] and state["victim"] == []  # exactly as it was: empty
    assert state["status"]["rootless_kind"] == kind


def test_ctrl_c_in_a_rootless_mount_loop(test_user: User, user_fuse: None, user_dir: pathlib.Path) -> None:
    home = user_dir / "store"
    for _ in range(3):
        if home.exists():
            proc = test_user.python("import sys, aufs; d = aufs.Driver(sys.argv[1]); d.remove('app'); d.remove('base')",
                                    str(home))
            assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        proc = user_popen(test_user, MOUNT_LOOP, str(home))
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
        _interrupt(proc)
        err = proc.stderr.read()
        assert b"KeyboardInterrupt" in err, err.decode()[-3000:]
        state = _clean(test_user, user_dir, home)
        assert state["layers"] == ["app", "base"]
