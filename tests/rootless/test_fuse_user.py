"""fuse-overlayfs as an ordinary user: auto picks it only when it can work, and every way a
mount ends (put, umount, rm, cleanup, leaving ``with``) unmounts it without privilege and
leaves no daemon (issue 10)."""
from __future__ import annotations

import json
import pathlib

from ..users import User
from .conftest import user_processes

_MOUNT_CYCLE = r'''
import json, os, sys
import aufs
home = sys.argv[1]
d = aufs.Driver(home)
out = {"status": d.status()}
d.create("base"); d.create("app", parent="base")
with d.mount("base") as root:
    open(os.path.join(root, "hello"), "w").write("hi")
with d.mount("app") as root:
    open(os.path.join(root, "new"), "w").write("app")
    os.unlink(os.path.join(root, "hello"))
    out["inside"] = sorted(os.listdir(root))
    out["mounted_inside"] = d.status()["mounted"]
out["mounted_after"] = d.status()["mounted"]
out["changes"] = [[str(c.kind), c.path] for c in d.changes("app")]
out["diff_bytes"] = d.diff("app", os.path.join(home, "..", "app.tar"))
path = d.get("app")
out["get_listing"] = sorted(os.listdir(path))
d.put("app")
d.get("app")
d.remove("app", force=True)   # removing a mounted layer unmounts it
d.get("base")
d.cleanup()
out["mounted_end"] = d.status()["mounted"]
print(json.dumps(out))
'''


def _mounts_under(path: pathlib.Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def test_user_mount_cycle_leaves_no_mount_and_no_daemon(test_user: User, user_fuse: None,
                                                        user_dir: pathlib.Path) -> None:
    home = user_dir / "store"
    proc = test_user.python(_MOUNT_CYCLE, str(home))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json.loads(proc.stdout)
    status = out["status"]
    assert status["backend"] == "fuse-overlayfs"
    # why: the kernel backends were skipped with their reasons
    assert "overlay: cannot show a rootless store's recorded owners" in status["backend_reason"]
    assert status["rootless"] is True
    assert out["inside"] == ["new"] and out["mounted_inside"] == 1
    assert out["mounted_after"] == 0
    assert sorted(out["changes"]) == [["A", "/new"], ["D", "/hello"]]
    assert out["diff_bytes"] > 0
    assert out["get_listing"] == ["new"]
    assert out["mounted_end"] == 0
    assert _mounts_under(user_dir) == []
    assert user_processes(test_user, "fuse-overlayfs") == []


def test_user_cli_mount_umount_rm(test_user: User, user_fuse: None, user_dir: pathlib.Path) -> None:
    home = str(user_dir / "store")

    def aufs(*argv: str) -> str:
        proc = test_user.python("import sys, aufs.cli; sys.exit(aufs.cli.main(sys.argv[1:]))",
                                "--home", home, *argv)
        assert proc.returncode == 0, (argv, proc.stderr.decode()[-2000:])
        return proc.stdout.decode()

    aufs("create", "base")
    path = aufs("mount", "base").strip()
    assert _mounts_under(user_dir) == [path]
    assert user_processes(test_user, "fuse-overlayfs"), "the daemon serves the mount"
    status = aufs("status")
    assert "fuse-overlayfs" in status and "backend_reason" in status
    aufs("umount", "base")
    assert _mounts_under(user_dir) == []
    aufs("mount", "base")
    aufs("rm", "--force", "base")
    assert _mounts_under(user_dir) == []
    assert user_processes(test_user, "fuse-overlayfs") == []


def test_user_without_fuse_access_gets_one_clear_message(test_user: User, root_only_fuse: None,
                                                         user_dir: pathlib.Path) -> None:
    proc = test_user.python("import sys, aufs.cli; sys.exit(aufs.cli.main(sys.argv[1:]))",
                            "--home", str(user_dir / "store"), "create", "base")
    assert proc.returncode == 8, proc.stderr.decode()
    err = proc.stderr.decode().strip()
    assert "may not open /dev/fuse" in err and "chmod 0666 /dev/fuse" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (user_dir / "store").exists()  # nothing half-created


def test_user_without_fuse_overlayfs_gets_one_clear_message(test_user: User, user_fuse: None,
                                                            user_dir: pathlib.Path) -> None:
    empty = user_dir / "bin"
    empty.mkdir()
    proc = test_user.python("import sys, aufs.cli; sys.exit(aufs.cli.main(sys.argv[1:]))",
                            "--home", str(user_dir / "store"), "create", "base", env={"PATH": str(empty)})
    assert proc.returncode == 8, proc.stderr.decode()
    err = proc.stderr.decode().strip()
    assert "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (user_dir / "store").exists()


def test_demo_as_an_ordinary_user(test_user: User, user_fuse: None, user_dir: pathlib.Path) -> None:
    proc = test_user.python("import sys, aufs.cli; sys.exit(aufs.cli.main(sys.argv[1:]))", "demo",
                            env={"TMPDIR": str(user_dir), "COLUMNS": "100"}, timeout=300)
    assert proc.returncode == 0, (proc.stdout.decode()[-2000:], proc.stderr.decode()[-2000:])
    assert "fuse-overlayfs" in proc.stdout.decode()
    assert _mounts_under(user_dir) == [] and list(user_dir.iterdir()) == []
    assert user_processes(test_user, "fuse-overlayfs") == []
