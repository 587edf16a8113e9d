"""Issue 9, item 11: an opaque directory that also holds a whiteout in the same layer.

OCI allows a layer tar to list ``d/.wh..wh..opq`` and ``d/.wh.gone`` together (in either
order, and whiteouts deeper below ``d``). The opaque marker already hides everything the lower
layers have below ``d``, so the whiteout is redundant; kept in the layer, overlayfs shows it
through the mount as a broken ``c?????????`` entry that stat cannot reach (an opaque directory
is read as it is). The stored layer never keeps a whiteout below a directory it marks opaque,
and ``diff`` of the layer writes the marker and no whiteout.
"""
from __future__ import annotations

import io
import os
import pathlib
import tarfile
from collections.abc import Iterator

import pytest

import aufs

from ..backends import backend_params
from .apply_helpers import entry, make_tar

LOWER = [entry("d", "dir"), entry("d/gone", data=b"old"), entry("d/old", data=b"old"),
         entry("d/sub", "dir"), entry("d/sub/x", data=b"x")]

# the marker before the whiteouts, after them, and whiteouts deeper below the opaque directory
ORDERS = {
    "opaque-first": [entry("d", "dir"), entry("d/.wh..wh..opq"), entry("d/.wh.gone"),
                     entry("d/new", data=b"new")],
    "whiteout-first": [entry("d", "dir"), entry("d/.wh.gone"), entry("d/new", data=b"new"),
                       entry("d/.wh..wh..opq")],
    "deeper": [entry("d", "dir"), entry("d/.wh..wh..opq"), entry("d/sub", "dir"),
               entry("d/sub/.wh.x"), entry("d/new", data=b"new")],
}


@pytest.fixture(params=backend_params())
def driver(request: pytest.FixtureRequest, ramdir: pathlib.Path) -> Iterator[aufs.Driver]:
    d = aufs.Driver(ramdir / "store", backend=request.param)
    try:
        d.create("base")
        d.apply_diff("base", make_tar(LOWER))
        yield d
    finally:
        d.cleanup()


def listing(root: str) -> dict[str, str]:
    """Every entry of the mounted tree: stat must reach each one."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            os.lstat(full)  # a broken whiteout entry raises here
            rel = os.path.relpath(full, root)
            out[rel] = "dir" if os.path.isdir(full) else open(full, "rb").read().decode()
    return out


def members(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name.rstrip("/") for m in tar.getmembers()]


@pytest.mark.parametrize("order", list(ORDERS))
def test_opaque_dir_with_whiteout_as_top_layer_and_under_a_child(driver: aufs.Driver, order: str) -> None:
    driver.create("top", parent="base")
    driver.apply_diff("top", make_tar(ORDERS[order]))
    expected = {"d": "dir", "d/new": "new"}
    if order == "deeper":
        expected["d/sub"] = "dir"
    with driver.mount("top") as root:  # the layer as the top layer
        assert listing(root) == expected
    driver.create("child", parent="top")
    with driver.mount("child") as root:  # and under a child
        assert listing(root) == expected


@pytest.mark.parametrize("order", list(ORDERS))
def test_diff_writes_the_marker_and_no_redundant_whiteout(driver: aufs.Driver, order: str) -> None:
    driver.create("top", parent="base")
    driver.apply_diff("top", make_tar(ORDERS[order]))
    out = io.BytesIO()
    driver.diff("top", out)
    names = members(out.getvalue())
    assert "d/.wh..wh..opq" in names
    assert not [n for n in names if n.rpartition("/")[2].startswith(".wh.") and not n.endswith(".wh..wh..opq")], names
    # and the diff applies again to the same view
    driver.create("again", parent="base")
    driver.apply_diff("again", out.getvalue())
    with driver.mount("again") as root:
        assert "d/gone" not in listing(root)


def test_whiteout_outside_the_opaque_dir_stays(driver: aufs.Driver) -> None:
    driver.create("top", parent="base")
    driver.apply_diff("top", make_tar([entry("d", "dir"), entry("d/sub", "dir"), entry("d/sub/.wh.x"),
                                       entry("d/.wh.gone"), entry("d/sub2", "dir"),
                                       entry("d/sub2/.wh..wh..opq")]))
    with driver.mount("top") as root:
        assert listing(root) == {"d": "dir", "d/old": "old", "d/sub": "dir", "d/sub2": "dir"}
    out = io.BytesIO()
    driver.diff("top", out)
    names = members(out.getvalue())
    assert {"d/.wh.gone", "d/sub/.wh.x", "d/sub2/.wh..wh..opq"} <= set(names)


def _whiteout(layer: pathlib.Path, path: str, fmt: aufs.WhiteoutFormat) -> None:
    fd = os.open(layer / os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        aufs.whiteouts.make_whiteout(fd, os.path.basename(path), fmt)
    finally:
        os.close(fd)


def test_a_layer_an_older_aufs_stored_exports_without_the_redundant_whiteouts(driver: aufs.Driver) -> None:
    """Layers stored before issue 9 may keep whiteouts at and below an opaque directory (or
    under an opaque layer root): ``diff`` leaves them out, wherever they are on disk."""
    driver.create("top", parent="base")
    driver.apply_diff("top", make_tar([entry("d", "dir"), entry("d/.wh..wh..opq"), entry("d/sub", "dir"),
                                       entry("d/new", data=b"new"), entry("e", "dir")]))
    diff = pathlib.Path(driver.diff_dir("top"))
    # what an older version left: whiteouts in and below the opaque d, one outside it
    for name in ("d/gone", "d/sub/x", "e/y"):
        _whiteout(diff, name, driver.whiteout_format)
    out = io.BytesIO()
    driver.diff("top", out)
    names = members(out.getvalue())
    assert "d/.wh..wh..opq" in names and "e/.wh.y" in names
    assert "d/.wh.gone" not in names and "d/sub/.wh.x" not in names, names
    # an opaque layer root: no whiteout at all
    driver.create("root-opaque", parent="base")
    driver.apply_diff("root-opaque", make_tar([entry(".wh..wh..opq"), entry("f", data=b"f"), entry("g", "dir")]))
    diff = pathlib.Path(driver.diff_dir("root-opaque"))
    for name in ("gone", "g/x"):
        _whiteout(diff, name, driver.whiteout_format)
    out = io.BytesIO()
    driver.diff("root-opaque", out)
    names = members(out.getvalue())
    assert ".wh..wh..opq" in names and not [n for n in names if ".wh." in n and "opq" not in n], names
