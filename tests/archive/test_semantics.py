"""Docker's layer scenarios through the public ``Driver`` API, on every backend that runs here.

* Docker's ``TestApplyLayerWhiteouts`` (UnpackLayer): a base layer and three layers of
  whiteouts, opaque directories and a root-opaque layer, each with its exact expected tree.
* Docker's graph-driver ``DriverTestDiffApply`` (10 files) and ``DriverTestChanges``
  (20 files, exactly 21 changes).
* Hypothesis: ``apply_diff(diff(x))`` onto x's parent reproduces x.
"""
from __future__ import annotations

import io
import os
import pathlib
import shutil
import stat
import uuid
from collections.abc import Iterator
from typing import Any

import libarchive
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import aufs
from aufs.store import Driver

from ..backends import backend_params, open_driver


@pytest.fixture(params=backend_params())
def driver(request: pytest.FixtureRequest, ramdir: pathlib.Path) -> Iterator[Driver]:
    yield from open_driver(ramdir / "store", str(request.param))


def make_layer_tar(names: list[str]) -> bytes:
    """A layer tar of the given entries (``x/`` a directory, else an empty-ish file)."""
    buf = io.BytesIO()
    with libarchive.custom_writer(buf.write, "pax") as archive:
        for name in names:
            if name.endswith("/"):
                archive.add_file_from_memory(name, 0, b"", filetype=stat.S_IFDIR, permission=0o755)
            else:
                data = b"" if name.rsplit("/", 1)[-1].startswith(".wh.") else name.encode()
                archive.add_file_from_memory(name, len(data), data, permission=0o644)
    return buf.getvalue()


def listing(root: str) -> list[str]:
    """Docker's form of a tree: relative names, directories with a trailing slash, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root) + "/")
        for name in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


# --- Docker's TestApplyLayerWhiteouts -------------------------------------------------------

BASE = [".baz", "bar/", "bar/bax", "bar/bay/", "baz", "foo/", "foo/.abc", "foo/.bcd/", "foo/.bcd/a",
        "foo/cde/", "foo/cde/def", "foo/cde/efg", "foo/fgh", "foobar"]
WHITEOUT_CASES = [
    (BASE, BASE),
    ([".bay", ".wh.baz", "foo/", "foo/.bce", "foo/.wh..wh..opq", "foo/cde/", "foo/cde/efg"],
     [".bay", ".baz", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.bce", "foo/cde/", "foo/cde/efg",
      "foobar"]),
    ([".bay", ".wh..baz", ".wh.foobar", "foo/", "foo/.abc", "foo/.wh.cde", "bar/"],
     [".bay", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.abc", "foo/.bce"]),
    ([".abc", ".wh..wh..opq", "foobar"],
     [".abc", "foobar"]),
]


def test_docker_apply_layer_whiteouts(driver: Driver) -> None:
    parent = None
    for i, (change, expected) in enumerate(WHITEOUT_CASES):
        layer_id = f"layer{i}"
        driver.create(layer_id, parent)
        driver.apply_diff(layer_id, make_layer_tar(change))
        with driver.mount(layer_id) as root:
            assert listing(root) == sorted(expected), f"layer {i}"
        parent = layer_id
    # each layer's own diff comes back out in OCI form, in tar order
    buf = io.BytesIO()
    driver.diff("layer1", buf)
    with libarchive.memory_reader(buf.getvalue()) as archive:
        names = [e.pathname for e in archive]
    assert names == [".bay", ".wh.baz", "foo/", "foo/.wh..wh..opq", "foo/.bce", "foo/cde/", "foo/cde/efg"]
    buf = io.BytesIO()
    driver.diff("layer3", buf)
    with libarchive.memory_reader(buf.getvalue()) as archive:
        assert [e.pathname for e in archive] == [".wh..wh..opq", ".abc", "foobar"]


def test_docker_whiteout_changes(driver: Driver) -> None:
    parent = None
    for i, (change, _) in enumerate(WHITEOUT_CASES):
        driver.create(f"layer{i}", parent)
        driver.apply_diff(f"layer{i}", make_layer_tar(change))
        parent = f"layer{i}"
    got = [(c.path, str(c.kind)) for c in driver.changes("layer2")]
    assert got == [
        ("/.bay", "C"),
        ("/.baz", "D"),
        # /bar/ is in the tar again but unchanged (same mode and mtime): not a change
        ("/foo", "C"),
        # layer1 made /foo opaque, so /foo/.abc is new again
        ("/foo/.abc", "A"),
        ("/foo/cde", "D"),
        ("/foobar", "D"),
    ]
    got = [(c.path, str(c.kind)) for c in driver.changes("layer3")]
    assert got == [("/.abc", "A"), ("/.bay", "D"), ("/bar", "D"), ("/foo", "D"), ("/foobar", "A")]


# --- Docker's graph-driver DiffApply and Changes --------------------------------------------

def _random_content(size: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size) if hasattr(random.Random, "randbytes") else bytes(
        random.Random(seed).getrandbits(8) for _ in range(size))


def add_many_files(root: str, count: int, seed: int) -> None:
    for i in range(0, count, 100):
        directory = os.path.join(root, f"directory-{i}")
        os.makedirs(directory, 0o755, exist_ok=True)
        for j in range(min(100, count - i)):
            with open(os.path.join(directory, f"file-{i + j}"), "wb") as f:
                f.write(_random_content(64, seed + i + j))


def check_many_files(root: str, count: int, seed: int) -> None:
    for i in range(0, count, 100):
        for j in range(min(100, count - i)):
            path = os.path.join(root, f"directory-{i}", f"file-{i + j}")
            with open(path, "rb") as f:
                assert f.read() == _random_content(64, seed + i + j), path


def test_docker_diff_apply(driver: Driver) -> None:
    count = 10
    driver.create("base")
    with driver.mount("base") as root:
        add_many_files(root, count, 3)
        with open(os.path.join(root, "file-remove.txt"), "wb") as f:
            f.write(b"This file should get removed in upper!")
        os.makedirs(os.path.join(root, "var", "lib"), 0o755)
    driver.create("upper", "base")
    with driver.mount("upper") as root:
        add_many_files(root, count, 6)
        os.remove(os.path.join(root, "file-remove.txt"))
        shutil.rmtree(os.path.join(root, "var", "lib"))
    diff_size = driver.diff_size("upper")
    assert diff_size == 640

    driver.create("diff", "base")
    with driver.mount("diff") as root:
        check_many_files(root, count, 3)
        with open(os.path.join(root, "file-remove.txt"), "rb") as f:
            assert f.read() == b"This file should get removed in upper!"
    buf = io.BytesIO()
    written = driver.diff("upper", buf)
    assert written == len(buf.getvalue())
    assert driver.apply_diff("diff", buf.getvalue()) == 640
    with driver.mount("diff") as root:
        check_many_files(root, count, 6)
        assert not os.path.lexists(os.path.join(root, "file-remove.txt"))
        assert not os.path.lexists(os.path.join(root, "var", "lib"))
        assert os.path.isdir(os.path.join(root, "var"))


def test_docker_changes(driver: Driver) -> None:
    driver.create("base")
    with driver.mount("base") as root:
        add_many_files(root, 20, 3)
    driver.create("upper", "base")
    expected = [aufs.Change("/directory-0", aufs.ChangeKind.MODIFY)]
    with driver.mount("upper") as root:
        directory = os.path.join(root, "directory-0")
        for j in range(20):
            if j % 3 == 0:
                with open(os.path.join(directory, f"file-{j}"), "wb") as f:
                    f.write(_random_content(64, 6 + j))
                expected.append(aufs.Change(f"/directory-0/file-{j}", aufs.ChangeKind.MODIFY))
            elif j % 3 == 1:
                with open(os.path.join(directory, f"file-6-{j}"), "wb") as f:
                    f.write(_random_content(64, 6 + j))
                expected.append(aufs.Change(f"/directory-0/file-6-{j}", aufs.ChangeKind.ADD))
            else:
                os.remove(os.path.join(directory, f"file-{j}"))
                expected.append(aufs.Change(f"/directory-0/file-{j}", aufs.ChangeKind.DELETE))
    changes = driver.changes("upper")
    assert len(changes) == 21
    assert changes == sorted(expected)
    # a base layer's changes are all ADDs
    assert {c.kind for c in driver.changes("base")} == {aufs.ChangeKind.ADD}
    assert len(driver.changes("base")) == 21


# --- hypothesis: apply_diff(diff(x)) onto x's parent reproduces x -----------------------------

NAMES = ["a", "b", "c-d", "é"]
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
operations = st.lists(
    st.tuples(
        st.sampled_from(["file", "dir", "remove", "chmod", "symlink", "hardlink", "xattr", "replace-dir"]),
        paths,
        paths,
        st.binary(max_size=300),
    ),
    max_size=12,
)


def _apply_operations(root: str, ops: list[tuple[str, str, str, bytes]]) -> None:
    """Perform random edits through a mount; edits that make no sense here are skipped."""
    for op, path, other, data in ops:
        target = os.path.join(root, path)
        try:
            if op == "file":
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.isdir(target) and not os.path.islink(target):
                    continue
                with open(target, "wb") as f:
                    f.write(data)
            elif op == "dir":
                os.makedirs(target, exist_ok=True)
            elif op == "remove":
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                elif os.path.lexists(target):
                    os.remove(target)
            elif op == "chmod":
                if os.path.lexists(target) and not os.path.islink(target):
                    os.chmod(target, 0o700 if len(data) % 2 else 0o4755)
            elif op == "symlink":
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if not os.path.lexists(target):
                    os.symlink("/" + other, target)
            elif op == "hardlink":
                source = os.path.join(root, other)
                if os.path.isfile(source) and not os.path.islink(source) and not os.path.lexists(target):
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.link(source, target)
            elif op == "xattr":
                if os.path.lexists(target) and not os.path.islink(target):
                    os.setxattr(target, "user.test", data or b"v")
            elif op == "replace-dir" and os.path.isdir(target) and not os.path.islink(target):
                # remove a directory and make it again: an opaque directory in the layer
                shutil.rmtree(target)
                os.makedirs(target)
                with open(os.path.join(target, "new"), "wb") as f:
                    f.write(data)
        except (FileExistsError, NotADirectoryError, FileNotFoundError, IsADirectoryError):
            continue


def snapshot(root: str) -> dict[str, Any]:
    """Every entry: type, mode, owner, mtime in seconds (files), content, link, xattrs, links."""
    out: dict[str, Any] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st_ = os.lstat(path)
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                      for k in os.listxattr(path, follow_symlinks=False) if k.startswith("user.")}
            if stat.S_ISREG(st_.st_mode):
                with open(path, "rb") as f:
                    content: Any = f.read()
                inodes.setdefault(st_.st_ino, []).append(rel)
            elif stat.S_ISLNK(st_.st_mode):
                content = os.readlink(path)
            else:
                content = None
            mtime = None if stat.S_ISDIR(st_.st_mode) else st_.st_mtime_ns // 10**9
            out[rel] = (st_.st_mode, st_.st_uid, st_.st_gid, mtime, content, xattrs)
    out["<hardlinks>"] = sorted(sorted(group) for group in inodes.values() if len(group) > 1)
    return out


@pytest.mark.parametrize("backend", backend_params())
@given(base_ops=operations, top_ops=operations)
def test_diff_then_apply_reproduces_the_layer(ram_root: pathlib.Path, backend: str,
                                                base_ops: list[tuple[str, str, str, bytes]],
                                                top_ops: list[tuple[str, str, str, bytes]]) -> None:
    home = ram_root / ("rt-" + uuid.uuid4().hex[:8])
    driver = Driver(home, backend=backend)
    try:
        driver.create("p")
        with driver.mount("p") as root:
            _apply_operations(root, base_ops)
        driver.create("x", "p")
        with driver.mount("x") as root:
            _apply_operations(root, top_ops)
        # x as stored, seen through a fresh mount: a live fuse-overlayfs mount keeps showing
        # a copied-up hardlink as one inode with its lower twin, which no layer can record
        with driver.mount("x") as root:
            expected = snapshot(root)
        first = io.BytesIO()
        driver.diff("x", first)
        with libarchive.memory_reader(first.getvalue()) as archive:
            for entry in archive:
                if entry.name.rsplit("/", 1)[-1].startswith(".wh."):
                    event("whiteout or opaque marker in the diff")
                if entry.islnk:
                    event("hardlink in the diff")
        driver.create("y", "p")
        size = driver.apply_diff("y", first.getvalue())
        assert size == driver.diff_size("x")
        with driver.mount("y") as root:
            got = snapshot(root)
        if backend == "fuse-overlayfs":
            # fuse-overlayfs reports a copied-up file with its lower inode number, so a
            # hardlink made in the layer to a lower file shows as two inodes in x's view and
            # as one in y's. The layers themselves agree: diff(y) == diff(x) below.
            del got["<hardlinks>"], expected["<hardlinks>"]
        assert got == expected
        second = io.BytesIO()
        driver.diff("y", second)
        assert second.getvalue() == first.getvalue()
        changes_x, changes_y = set(driver.changes("x")), set(driver.changes("y"))
        assert changes_y <= changes_x
        # The tar keeps whole seconds, so a directory whose mtime differs from the one below
        # only within the same second is "unchanged" in y by Docker's sameFsTime rule.
        with driver.mount("y") as root:
            for change in changes_x - changes_y:
                assert change.kind is aufs.ChangeKind.MODIFY
                assert os.path.isdir(root + change.path), change
    finally:
        driver.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def test_xattrs_owners_and_modes_survive_diff_and_apply(driver: Driver) -> None:
    capability = bytes.fromhex("0100000200200000000000000000000000000000")
    driver.create("base")
    driver.create("x", "base")
    with driver.mount("x") as root:
        tool = os.path.join(root, "tool")
        with open(tool, "wb") as f:
            f.write(b"#!/bin/sh\n")
        os.chown(tool, 123, 456)
        os.chmod(tool, 0o2755)
        os.setxattr(tool, "security.capability", capability)
        os.setxattr(tool, "trusted.keep", b"t")
        os.setxattr(tool, "user.keep", b"u")
        os.mkdir(os.path.join(root, "sticky"))
        os.chmod(os.path.join(root, "sticky"), 0o1777)
    buf = io.BytesIO()
    driver.diff("x", buf)
    driver.create("y", "base")
    driver.apply_diff("y", buf.getvalue())
    with driver.mount("y") as root:
        tool = os.path.join(root, "tool")
        st_ = os.lstat(tool)
        assert (st_.st_uid, st_.st_gid, stat.S_IMODE(st_.st_mode)) == (123, 456, 0o2755)
        assert os.getxattr(tool, "security.capability") == capability
        assert os.getxattr(tool, "trusted.keep") == b"t"
        assert os.getxattr(tool, "user.keep") == b"u"
        assert not [k for k in os.listxattr(tool) if k.startswith("trusted.overlay.")]
        assert stat.S_IMODE(os.lstat(os.path.join(root, "sticky")).st_mode) == 0o1777
