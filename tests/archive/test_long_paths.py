"""A tree deeper than any path buffer, written by a container through a mount (issue 9, item 5).

Nothing stops a process from building a 76 KB deep tree through `mkdirat` chains; `changes()`
and `diff()` of that layer must then fail with a typed :class:`aufs.PathTooLong` (an
``AufsError`` and an ``OSError`` with ``ENAMETOOLONG``) that names the layer and the path
where it became too long, not a bare ``OSError``, and the layer stays usable (removable).
"""
from __future__ import annotations

import errno
import io
import os
import pathlib
from collections.abc import Iterator

import pytest

import aufs
from aufs.errors import AufsError

PathTooLong = getattr(aufs, "PathTooLong", AufsError)

from .apply_helpers import entry, make_tar

COMPONENT = "d" * 250
DEPTH = 76 * 1024 // (len(COMPONENT) + 1)  # a 76 KB path


@pytest.fixture
def deep_layer(ramdir: pathlib.Path) -> Iterator[aufs.Driver]:
    driver = aufs.Driver(ramdir / "store")
    try:
        driver.create("base")
        driver.apply_diff("base", make_tar([entry("etc/os-release", data=b"ID=test\n")]))
        driver.create("work", parent="base")
        with driver.mount("work") as root:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for _ in range(DEPTH):  # what a container's `mkdir -p` chain does
                    os.mkdir(COMPONENT, dir_fd=fd)
                    next_fd = os.open(COMPONENT, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                    os.close(fd)
                    fd = next_fd
                with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                    f.write(b"deep")
            finally:
                os.close(fd)
        yield driver
    finally:
        driver.cleanup()


def _assert_typed(exc: PathTooLong) -> None:
    assert isinstance(exc, aufs.AufsError) and isinstance(exc, OSError)
    assert exc.errno == errno.ENAMETOOLONG
    assert exc.layer_id == "work"
    assert exc.path and exc.path.startswith("/" + COMPONENT), exc.path
    assert "work" in str(exc) and COMPONENT[:20] in str(exc)


def test_changes_of_a_too_deep_tree_is_path_too_long(deep_layer: aufs.Driver) -> None:
    with pytest.raises(PathTooLong) as info:
        deep_layer.changes("work")
    _assert_typed(info.value)


def test_diff_of_a_too_deep_tree_is_path_too_long(deep_layer: aufs.Driver) -> None:
    with pytest.raises(PathTooLong) as info:
        deep_layer.diff("work", io.BytesIO())
    _assert_typed(info.value)
    deep_layer.remove("work")  # still a layer like any other
    assert not deep_layer.exists("work")
