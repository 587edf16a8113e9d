"""Fixtures of the layer-tar tests."""
from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

import aufs


@pytest.fixture
def driver(ramdir: pathlib.Path) -> Iterator[aufs.Driver]:
    """A store on tmpfs (the backend ``auto`` picks; kernel overlayfs as root here), every
    mount gone afterwards. Tests that need layers in it make them."""
    d = aufs.Driver(ramdir / "store")
    try:
        yield d
    finally:
        d.cleanup()
