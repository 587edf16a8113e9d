"""Property: a random layer tree, tarred by GNU tar, applied by apply_tar, is the same tree.

Types, modes (setuid/setgid/sticky too), owners, nanosecond mtimes (directories included),
xattrs (security.capability, trusted.*, user.*), content, symlink targets, device numbers and
hard-link groups must all come back; the archive is gzipped half of the time.
"""
from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aufs.apply import apply_tar
from aufs.whiteouts import WhiteoutFormat

from .apply_helpers import snapshot

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")

CAP = bytes([1, 0, 0, 2, 0x20, 0, 0, 0] + [0] * 12)
NAMES = st.sampled_from(["a", "b", "dir", "f.txt", "ü", "x y", ".hidden", "n" * 40])
IDS = st.sampled_from([0, 1, 1000, 65534])
MTIMES = st.tuples(st.integers(0, 2**33), st.integers(0, 999_999_999))
XATTRS = st.dictionaries(st.sampled_from(["user.k", "trusted.t"]), st.binary(min_size=1, max_size=40),
                         max_size=2) | st.just({"security.capability": CAP, "user.k": b"v"})


@st.composite
def trees(draw):
    nodes = {}
    dirs = [""]
    files = []
    for _ in range(draw(st.integers(1, 30))):
        parent = draw(st.sampled_from(dirs))
        path = (parent + "/" if parent else "") + draw(NAMES)
        if path in nodes:
            continue
        kind = draw(st.sampled_from(["file", "file", "dir", "dir", "symlink", "hardlink", "fifo", "char"]))
        if kind == "hardlink" and not files:
            kind = "file"
        spec = {"kind": kind, "uid": draw(IDS), "gid": draw(IDS), "mtime": draw(MTIMES)}
        if kind == "file":
            spec["mode"] = draw(st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o2711, 0o444, 0o000]))
            spec["data"] = draw(st.binary(max_size=3000) | st.just(b"z" * 70000))
            spec["xattrs"] = draw(XATTRS)
            files.append(path)
        elif kind == "dir":
            spec["mode"] = draw(st.sampled_from([0o755, 0o700, 0o1777, 0o2775, 0o555]))
            spec["xattrs"] = {k: v for k, v in draw(XATTRS).items() if k != "security.capability"}
            dirs.append(path)
        elif kind == "symlink":
            spec["target"] = draw(st.sampled_from(["a", "/etc/passwd", "../", "dir/f.txt", "/"]))
            if spec["target"] == "../" and "/" not in path:
                spec["target"] = "./"
        elif kind == "hardlink":
            spec["target"] = draw(st.sampled_from(files))
        elif kind == "fifo":
            spec["mode"] = draw(st.sampled_from([0o644, 0o600]))
        else:
            spec["mode"] = 0o660
            spec["dev"] = draw(st.tuples(st.integers(1, 255), st.integers(0, 255)))
        nodes[path] = spec
    return nodes


def build(root, nodes):
    for path, spec in nodes.items():
        full = os.path.join(root, path)
        kind = spec["kind"]
        if kind == "file":
            with open(full, "wb") as f:
                f.write(spec["data"])
        elif kind == "dir":
            os.mkdir(full)
        elif kind == "symlink":
            os.symlink(spec["target"], full)
        elif kind == "hardlink":
            os.link(os.path.join(root, spec["target"]), full)
            continue
        elif kind == "fifo":
            os.mkfifo(full)
        else:
            os.mknod(full, stat.S_IFCHR | 0o600, os.makedev(*spec["dev"]))
        os.chown(full, spec["uid"], spec["gid"], follow_symlinks=False)
        if kind != "symlink":
            os.chmod(full, spec["mode"])
        for k, v in spec.get("xattrs", {}).items():
            os.setxattr(full, k, v)
    # times last, deepest first, so creating content does not move them
    for path in sorted(nodes, key=lambda p: -p.count("/")):
        spec = nodes[path]
        if spec["kind"] != "hardlink":
            sec, nsec = spec["mtime"]
            os.utime(os.path.join(root, path), ns=(sec * 10**9 + nsec,) * 2, follow_symlinks=False)


@given(nodes=trees(), gz=st.booleans(), fmt=st.sampled_from(list(WhiteoutFormat)))
def test_random_tree_roundtrip(ramdir, nodes, gz, fmt):
    case = ramdir / os.urandom(6).hex()
    src, dst = case / "src", case / "dst"
    src.mkdir(parents=True)
    dst.mkdir()
    build(str(src), nodes)
    tar = subprocess.run(["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                          "-cf", "-", "-C", str(src), "."], check=True, capture_output=True).stdout
    apply_tar(dst, gzip.compress(tar, 1) if gz else tar, fmt)
    assert snapshot(str(dst)) == snapshot(str(src))
    shutil.rmtree(case)
