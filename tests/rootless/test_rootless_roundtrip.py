"""Rootless extraction loses nothing (issue 10): an ordinary user's store imports layers with
root-owned files, a uid outside any subuid range, devices, fifos, setuid files, privileged
xattrs, hard links and whiteouts, and ``diff`` gives back the very bytes a root store gives."""
from __future__ import annotations

import io
import json
import os
import pathlib
import tarfile

from aufs import Driver

from ..users import User


def _layer(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0, *, size: int = 0,
          link: str = "", dev: tuple[int, int] = (0, 0), xattrs: dict[str, str] | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.size, info.mtime = kind, mode, uid, gid, size, 1_600_000_000
    info.linkname = link
    info.devmajor, info.devminor = dev
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return info


def _base() -> bytes:
    return _layer([
        (_info("etc", tarfile.DIRTYPE, 0o755), None),
        (_info("etc/passwd", tarfile.REGTYPE, 0o644, size=5), b"root\n"),
        (_info("etc/shadow", tarfile.REGTYPE, 0o640, 0, 42, size=3), b"s3c"),
        (_info("usr", tarfile.DIRTYPE, 0o755), None),
        (_info("usr/bin", tarfile.DIRTYPE, 0o755), None),
        (_info("usr/bin/su", tarfile.REGTYPE, 0o4755, size=2), b"su"),
        (_info("usr/bin/ping", tarfile.REGTYPE, 0o755, size=4,
               xattrs={"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}),
         b"ping"),
        (_info("usr/bin/ping-link", tarfile.LNKTYPE, 0o755, link="usr/bin/ping"), None),
        (_info("usr/bin/sh", tarfile.SYMTYPE, 0o777, link="dash"), None),
        (_info("usr/bin/theirs", tarfile.SYMTYPE, 0o777, 1000, 3000000, link="sh"), None),
        (_info("home", tarfile.DIRTYPE, 0o755), None),
        (_info("home/big", tarfile.DIRTYPE, 0o700, 3000000, 3000000), None),
        (_info("home/big/notes", tarfile.REGTYPE, 0o600, 3000000, 3000000, size=2,
               xattrs={"user.note": "kept"}), b"hi"),
        (_info("tmp", tarfile.DIRTYPE, 0o1777), None),
        (_info("dev", tarfile.DIRTYPE, 0o755), None),
        (_info("dev/null", tarfile.CHRTYPE, 0o666, dev=(1, 3)), None),
        (_info("dev/sda", tarfile.BLKTYPE, 0o660, 0, 6, dev=(8, 0)), None),
        (_info("dev/initctl", tarfile.FIFOTYPE, 0o600), None),
        (_info("opt", tarfile.DIRTYPE, 0o555), None),
        (_info("opt/ro", tarfile.REGTYPE, 0o000, size=1), b"r"),
    ])


def _top() -> bytes:
    return _layer([
        (_info("etc", tarfile.DIRTYPE, 0o755), None),
        (_info("etc/.wh.shadow", tarfile.REGTYPE, 0o644), None),
        (_info("usr", tarfile.DIRTYPE, 0o755), None),
        (_info("usr/bin", tarfile.DIRTYPE, 0o755), None),
        (_info("usr/bin/.wh..wh..opq", tarfile.REGTYPE, 0o644), None),
        (_info("usr/bin/new", tarfile.REGTYPE, 0o2755, 0, 50, size=3), b"new"),
        (_info("opt", tarfile.DIRTYPE, 0o555, 7, 0), None),  # only its owner changes
    ])


_SCRIPT = r'''
import json, os, sys
import aufs
home, out = sys.argv[1], sys.argv[2]
d = aufs.Driver(home)
d.create("base"); d.apply_diff("base", sys.argv[3])
d.create("top", parent="base"); d.apply_diff("top", sys.argv[4])
d.diff("base", out + "/base.tar"); d.diff("top", out + "/top.tar")
d.create("rw", parent="top")
with d.mount("rw") as root:
    # the store's owner works in the mount as in a umoci --rootless bundle: every file is theirs
    with open(os.path.join(root, "usr/bin/new"), "ab") as f:
        f.write(b"!")
    with open(os.path.join(root, "home/big/notes"), "ab") as f:
        f.write(b"!")
    open(os.path.join(root, "home/big/mine"), "w").write("mine")
    os.unlink(os.path.join(root, "etc/passwd"))
d.diff("rw", out + "/rw.tar")
print(json.dumps({"status": d.status(), "changes": [[str(c.kind), c.path] for c in d.changes("top")],
                  "rw_changes": sorted([str(c.kind), c.path] for c in d.changes("rw"))}))
'''


def _members(data: bytes) -> list[tuple]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.type, m.mode, m.uid, m.gid, m.size, m.linkname, m.devmajor, m.devminor,
                 sorted(m.pax_headers.items())) for m in tar.getmembers()]


def test_rootless_store_exports_what_a_root_store_exports(test_user: User, user_fuse: None, user_dir: pathlib.Path,
                                                         ramdir: pathlib.Path) -> None:
    base, top = user_dir / "base.tar", user_dir / "top.tar.in"
    base.write_bytes(_base())
    top.write_bytes(_top())
    out = user_dir / "out"
    out.mkdir()
    os.chown(out, test_user.uid, test_user.gid)
    proc = test_user.python(_SCRIPT, str(user_dir / "store"), str(out), str(base), str(top))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"]["rootless"] is True

    root = Driver(ramdir / "root-store", backend="fuse-overlayfs")
    root.create("base"); root.apply_diff("base", base)
    root.create("top", parent="base"); root.apply_diff("top", top)
    want_base, want_top = io.BytesIO(), io.BytesIO()
    root.diff("base", want_base)
    root.diff("top", want_top)
    got_base, got_top = (out / "base.tar").read_bytes(), (out / "top.tar").read_bytes()
    # entry by entry first (a readable failure), then byte for byte (same digests, same chainIDs)
    assert _members(got_base) == _members(want_base.getvalue())
    assert _members(got_top) == _members(want_top.getvalue())
    assert got_base == want_base.getvalue() and got_top == want_top.getvalue()
    # and what they agree on is the image: owners, setuid, devices, fifos, privileged xattrs
    members = {m[0]: m for m in _members(got_base)}
    assert members["home/big/notes"][3:5] == (3000000, 3000000)
    assert ("SCHILY.xattr.user.note", "kept") in members["home/big/notes"][9]
    assert members["usr/bin/su"][2] == 0o4755 and members["tmp"][2] == 0o1777
    assert members["dev/null"][1:3] == (tarfile.CHRTYPE, 0o666) and members["dev/null"][7:9] == (1, 3)
    assert members["dev/sda"][1] == tarfile.BLKTYPE and members["dev/sda"][4] == 6
    assert members["dev/initctl"][1] == tarfile.FIFOTYPE
    assert members["etc/shadow"][4] == 42 and members["opt/ro"][2] == 0
    assert "SCHILY.xattr.security.capability" in dict(members["usr/bin/ping"][9])
    assert members["usr/bin/ping-link"][1] == tarfile.LNKTYPE
    assert members["usr/bin/theirs"][1] == tarfile.SYMTYPE and members["usr/bin/theirs"][3:5] == (1000, 3000000)
    assert sorted(result["changes"]) == sorted([str(c.kind), c.path] for c in root.changes("top"))
    assert ["C", "/opt"] in result["changes"]

    # written through the mount: copied-up files keep what was recorded, new ones are root's
    rw = {m[0]: m for m in _members((out / "rw.tar").read_bytes())}
    assert rw["usr/bin/new"][2:6] == (0o2755, 0, 50, 4)
    assert rw["home/big/notes"][3:6] == (3000000, 3000000, 3)
    assert rw["home/big/mine"][3:5] == (0, 0)
    assert "etc/.wh.passwd" in rw
    assert ["D", "/etc/passwd"] in result["rw_changes"] and ["A", "/home/big/mine"] in result["rw_changes"]

    # on disk: everything is the user's, nothing setuid, no device
    for dirpath, dirnames, filenames in os.walk(user_dir / "store" / "layers"):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_uid == test_user.uid, os.path.join(dirpath, name)
            assert not st.st_mode & 0o6000 and not (os.path.stat.S_ISCHR(st.st_mode) or os.path.stat.S_ISBLK(st.st_mode))
