"""Helpers for the apply/extraction tests: build tars entry by entry, snapshot trees.

Archives are built with :mod:`tarfile` (it writes any name, link target, device or pax record
we ask for, hostile ones included); nothing here extracts with tarfile.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterable


def entry(name: str, kind: str = "file", *, data: bytes = b"", mode: int | None = None,
          uid: int = 0, gid: int = 0, mtime: float = 1_600_000_000, link: str = "",
          devmajor: int = 0, devminor: int = 0,
          xattrs: dict[str, bytes] | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    """One tar member: kind is file, dir, symlink, hardlink, char, block or fifo."""
    ti = tarfile.TarInfo(name)
    ti.type = {
        "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }[kind]
    ti.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    ti.uid, ti.gid, ti.mtime = uid, gid, mtime
    ti.linkname = link
    ti.devmajor, ti.devminor = devmajor, devminor
    if xattrs:
        ti.pax_headers = {
            "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
        }
    if kind == "file":
        ti.size = len(data)
        return ti, data
    return ti, None


def make_tar(entries: Iterable[tuple[tarfile.TarInfo, bytes | None]],
             fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def xattrs_of(path: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listxattr(path, follow_symlinks=False)):
        out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def snapshot(root: str, *, times: bool = True, dir_times: bool = True) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, mtime_ns, payload, xattrs, link-group) for the whole tree.

    payload: file content, symlink target or device number. Hard-link groups are numbered in
    walk order so two trees compare equal when they link the same names together.
    """
    result: dict[str, tuple] = {}
    groups: dict[tuple[int, int], int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(kind):
                with open(full, "rb") as f:
                    payload: object = f.read()
            elif stat.S_ISLNK(kind):
                payload = os.readlink(full)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                payload = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                payload = None
            group = None
            if not stat.S_ISDIR(kind) and st.st_nlink > 1:
                group = groups.setdefault((st.st_dev, st.st_ino), len(groups))
            mtime = None
            if times and (dir_times or not stat.S_ISDIR(kind)):
                mtime = st.st_mtime_ns
            result[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime, payload,
                           xattrs_of(full), group)
    return result


def names(root: str) -> list[str]:
    return sorted(snapshot(root, times=False))
