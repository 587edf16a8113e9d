"""Fixtures of the layer-store tests: one store per test, on tmpfs, for every usable backend.

``backend_name`` runs a test once per backend that can run here (kernel AUFS is skipped with
the reason when the kernel lacks it); ``driver`` is a fresh store on that backend, cleaned up
(all mounts gone) after the test.
"""
from __future__ import annotations

import os

import pytest

from aufs.backends import BACKENDS

from ..backends import backend_params

ALL_BACKENDS: list[str] = list(BACKENDS)


@pytest.fixture(params=backend_params(ALL_BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)



def write(path: str, data: str = "") -> None:
    with open(path, "w") as f:
        f.write(data)


def tree(root: str) -> dict:
    """Every entry below ``root`` -> (kind, mode, content) for comparisons."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", st.st_mode & 0o7777, f.read())
    return out


def read(path: str | os.PathLike[str]) -> str:
    with open(path) as f:
        return f.read()
