"""An ordinary user inside a user namespace of their own (``unshare -Urm``): root there, but
owning only their own id. Kernel overlayfs is skipped with its reason (it would need
``userxattr``), the store is rootless and mounts with fuse-overlayfs, and what it exports is
what a root store exports (issue 10)."""
from __future__ import annotations

import io
import json
import pathlib
import shutil
import tarfile

import pytest

import aufs

from ..users import User

_SCRIPT = r'''
import json, os, sys
import aufs
d = aufs.Driver(sys.argv[1])
d.create("base"); d.apply_diff("base", sys.argv[2])
d.diff("base", sys.argv[3])
with d.mount("base") as root:
    listing = sorted(os.listdir(root))
print(json.dumps({"status": d.status(), "uid": os.geteuid(), "listing": listing}))
'''


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, uid in (("etc", tarfile.DIRTYPE, 0o755, 0), ("etc/f", tarfile.REGTYPE, 0o4755, 0),
                                      ("far", tarfile.REGTYPE, 0o600, 3000000), ("dev", tarfile.DIRTYPE, 0o755, 0),
                                      ("dev/null", tarfile.CHRTYPE, 0o666, 0)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, uid, 1_600_000_000
            if name == "dev/null":
                info.devmajor, info.devminor = 1, 3
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def test_a_user_namespace_gets_a_rootless_store(test_user: User, user_fuse: None, user_dir: pathlib.Path,
                                                ramdir: pathlib.Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is missing")
    layer = user_dir / "layer.tar"
    layer.write_bytes(_layer())
    out = user_dir / "out"
    out.mkdir()
    import os
    os.chown(out, test_user.uid, test_user.gid)
    code = ["-c", _SCRIPT, str(user_dir / "store"), str(layer), str(out / "base.tar")]
    proc = test_user.run(["unshare", "-Urm", *test_user._python, *code],
                         env={"PYTHONPATH": test_user._pythonpath, "PYTHONNOUSERSITE": "1"})
    if proc.returncode != 0 and b"unshare failed" in proc.stderr:
        pytest.skip(f"unprivileged user namespaces are disabled here: {proc.stderr.decode().strip()}")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result = json.loads(proc.stdout)
    assert result["uid"] == 0  # root in the namespace
    status = result["status"]
    assert status["backend"] == "fuse-overlayfs" and status["rootless"] is True
    assert result["listing"] == ["dev", "etc", "far"]
    root = aufs.Driver(ramdir / "root-store", backend="fuse-overlayfs")
    root.create("base"); root.apply_diff("base", layer)
    want = io.BytesIO()
    root.diff("base", want)
    assert (out / "base.tar").read_bytes() == want.getvalue()
