"""Fixtures of the snapshotter tests: a store on the overlay backend and a server on it."""
from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

pytest.importorskip("grpc", reason="aufs[containerd] (grpcio, protobuf) is not installed")

from aufs import Driver
from aufs.serve.containerd import ContainerdServer

from .helpers import Client


@pytest.fixture
def overlay_driver(ramdir: pathlib.Path) -> Iterator[Driver]:
    d = Driver(ramdir / "store", backend="overlay")
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def server(overlay_driver: Driver, ramdir: pathlib.Path) -> Iterator[ContainerdServer]:
    with ContainerdServer(overlay_driver, ramdir / "run" / "snapshots.sock") as running:
        yield running


@pytest.fixture
def client(server: ContainerdServer) -> Iterator[Client]:
    c = Client(server.socket)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def work(ramdir: pathlib.Path) -> pathlib.Path:
    path = ramdir / "work"
    path.mkdir()
    return path
