"""Backend parametrisation shared by the suites that run on every union backend.

``backend_params(names)`` gives one pytest param per backend, each skipped with the backend's
own reason (e.g. "the kernel has no AUFS") when it cannot run here, so a skip always says why.
"""
from __future__ import annotations

import pathlib
from collections.abc import Iterable, Iterator

import pytest

from aufs.backends import BACKENDS
from aufs.store import Driver


def backend_params(names: Iterable[str] = tuple(BACKENDS)) -> list[object]:
    params: list[object] = []
    for name in names:
        reason = BACKENDS[name].unavailable_reason()
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def open_driver(home: pathlib.Path, backend_name: str) -> Iterator[Driver]:
    """A store on ``backend_name`` for one test; every mount under it is gone afterwards."""
    d = Driver(home, backend=backend_name)
    try:
        yield d
    finally:
        d.cleanup()
