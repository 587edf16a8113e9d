"""Helpers for the native tests: real mounts that are always undone."""
from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator

import pytest

from aufs import mounts

MS_BIND = 4096
MS_REC = 16384


class Mounter:
    """Mounts for one test; every mount is unmounted (innermost first) when the test ends."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    def bind(self, source: os.PathLike[str] | str, target: os.PathLike[str] | str) -> str:
        mounts.mount(os.fspath(source), os.fspath(target), None, MS_BIND)
        self.targets.append(os.fspath(target))
        return os.fspath(target)

    def tmpfs(self, target: os.PathLike[str] | str, data: str = "size=16m") -> str:
        mounts.mount("tmpfs", os.fspath(target), "tmpfs", 0, data)
        self.targets.append(os.fspath(target))
        return os.fspath(target)

    def overlay(self, target: os.PathLike[str] | str, lowers: list[str],
                upper: str | None = None, work: str | None = None,
                options: tuple = ()) -> str:
        mounts.mount_overlay(os.fspath(target), lowers, upper, work, options=options)
        self.targets.append(os.fspath(target))
        return os.fspath(target)

    def track(self, target: os.PathLike[str] | str) -> None:
        self.targets.append(os.fspath(target))

    def cleanup(self) -> None:
        for target in reversed(self.targets):
            with contextlib.suppress(OSError):
                mounts.unmount(target, lazy=True)
        self.targets.clear()


@pytest.fixture
def mounter() -> Iterator[Mounter]:
    m = Mounter()
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def root(ramdir: pathlib.Path) -> pathlib.Path:
    """An empty directory on the session tmpfs (which is itself a mount)."""
    return ramdir
