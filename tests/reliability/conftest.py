"""Fixtures of the reliability tests: backends that can run here, stores on tmpfs."""
from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from aufs.backends import BACKENDS
from aufs.store import Driver


def usable_backends() -> list[object]:
    """overlay first (the fast one the long runs use), each skipped with its reason if unusable."""
    params: list[object] = []
    for name in ("overlay", "fuse-overlayfs"):
        reason = BACKENDS[name].unavailable_reason()
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=usable_backends())
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def home(ramdir: pathlib.Path) -> pathlib.Path:
    return ramdir / "store"


@pytest.fixture
def driver(home: pathlib.Path, backend_name: str) -> Iterator[Driver]:
    d = Driver(home, backend=backend_name)
    try:
        yield d
    finally:
        d.cleanup()
