"""A hostile layer may be deep: a pax path of 1,200 directories is a legal tar entry, and the
extractor creates it (one directory at a time, below the layer root). Everything the store
does afterwards must cope without recursion limits: apply onto it, export it, list its
changes, mount it, remove it, sweep it."""
from __future__ import annotations

from pathlib import Path
import io
import os
import pathlib
import subprocess
import tarfile

import pytest

import aufs
from aufs.owners import ProcessToken

from .trees import build_tar, mounts_below

DEPTH = 1200  # deeper than Python's default recursion limit (1000)


@pytest.fixture(scope="module")
def deep_tar() -> bytes:
    return build_tar([("file", "a/" * DEPTH + "bottom", b"deep")])


def _depth(root: pathlib.Path) -> int:
    """How deep the chain of ``a`` directories goes (walked by fd: paths may pass PATH_MAX)."""
    fd, depth = os.open(root, os.O_RDONLY | os.O_DIRECTORY), 0
    try:
        while True:
            try:
                below = os.open("a", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                return depth
            os.close(fd)
            fd, depth = below, depth + 1
    finally:
        os.close(fd)


def test_deep_layer_through_its_whole_life(ramdir: pathlib.Path, deep_tar: bytes) -> None:
    d = aufs.Driver(ramdir / "store", backend="overlay")
    d.create("deep")
    d.apply_diff("deep", deep_tar)
    assert _depth(Path(d.diff_dir("deep"))) == DEPTH
    # applying onto it swaps the deep tree out, and the old one must be deleted
    d.apply_diff("deep", build_tar([("file", "top", b"t")]))
    assert (Path(d.diff_dir("deep")) / "top").is_file()
    assert os.listdir(d.home / "tmp") == []
    out = io.BytesIO()
    d.diff("deep", out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
    assert any(n.endswith("/bottom") for n in names) and "top" in names
    d.create("child", parent="deep")
    assert d.changes("child") == []
    with d.mount("child") as root:
        assert _depth(pathlib.Path(root)) == DEPTH
    d.remove("child")
    d.remove("deep")
    assert d.layers() == [] and os.listdir(d.home / "tmp") == []
    assert d.check().clean, str(d.check())
    assert mounts_below(d.home) == []


def test_deep_debris_is_repaired_and_swept(ramdir: pathlib.Path, deep_tar: bytes) -> None:
    """What a process killed while removing a deep layer leaves: the tree under a temporary name."""
    d = aufs.Driver(ramdir / "store", backend="overlay")
    dead = subprocess.Popen(["true"])
    dead.wait()
    for layer_id in ("deep", "deep2"):
        d.create(layer_id)
        d.apply_diff(layer_id, deep_tar)
        os.rename(Path(d.layout.layer_dir(layer_id)), Path(d.layout.temp_path("remove", ProcessToken(dead.pid, 1), layer_id)))
        if layer_id == "deep":  # found and repaired by check()
            report = d.check(repair=True)
            assert {f.kind for f in report.findings} == {"leftover-temporary", "stale-state"}, str(report)
            assert report.ok and os.listdir(d.home / "tmp") == []
        else:  # swept by the next open
            aufs.Driver(ramdir / "store", backend="overlay")
            assert os.listdir(d.home / "tmp") == []


def test_layer_near_path_max_applies_or_fails_atomically(ramdir: pathlib.Path) -> None:
    """A path of 4,060 bytes inside a layer is legal (the extractor accepts it), but below the
    store's staging directory its absolute path is longer than PATH_MAX. Applying such a
    layer, or onto it, must work, or fail before the swap: the layer as it was, nothing left."""
    d = aufs.Driver(ramdir / "store", backend="overlay")
    d.create("long")

    def state() -> tuple[list[str], int]:
        return sorted(os.listdir(Path(d.diff_dir("long")))), _depth(Path(d.diff_dir("long")))

    for tar in (build_tar([("file", "a/" * 2030 + "f", b"x")]), build_tar([("file", "top", b"t")])):
        before = state()
        try:
            d.apply_diff("long", tar)
        except OSError as exc:
            assert state() == before
            assert os.listdir(d.home / "tmp") == []
            d.remove("long")
            assert d.check().clean
            pytest.xfail(f"the store walks the staged layer by absolute path: {exc.strerror}")
    assert (Path(d.diff_dir("long")) / "top").is_file()
    assert _depth(Path(d.diff_dir("long"))) == 2030
    d.remove("long")
    assert d.check().clean and os.listdir(d.home / "tmp") == []
