"""Backend parametrisation shared by the suites that run on every union backend.

``backend_params(names)`` gives one pytest param per backend, each skipped with the backend's
own reason (e.g. "the kernel has no AUFS") when it cannot run here, so a skip always says why.
"""
from __future__ import annotations

import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from aufs.backends import BACKENDS
from aufs.layout import Layout
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


class PathLayout:
    """A store's :class:`aufs.layout.Layout` whose paths come back as ``pathlib.Path``, for
    tests that build debris with ``/`` and ``write_text`` (the Layout itself returns str)."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._layout, name)
        if isinstance(value, str):
            return pathlib.Path(value)
        if callable(value):
            def call(*args: Any, **kwargs: Any) -> Any:
                result = value(*args, **kwargs)
                return pathlib.Path(result) if isinstance(result, str) and result.startswith("/") else result
            return call
        return value
