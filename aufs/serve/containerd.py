"""``aufs serve containerd``: a containerd proxy snapshotter over gRPC on a unix socket.

containerd loads external snapshotters as *proxy plugins*; with this in its config (version 2,
as Debian 12's containerd 1.6 reads it)::

    [proxy_plugins.aufs]
      type = "snapshot"
      address = "/run/aufs/containerd.sock"

``ctr --snapshotter aufs ...`` (and nerdctl, the CRI, Docker's containerd image store) keep image
layers and container roots in the store, as ordinary layers (``aufs ls`` shows them as
``ctd-*``). This module serves ``containerd.services.snapshots.v1.Snapshots`` (all ten RPCs)
by translating requests to :class:`aufs.serve.snapshotter.Snapshotter` and its errors to the
gRPC codes containerd's ``errdefs`` turns back into its own: NotFound, AlreadyExists,
FailedPrecondition, InvalidArgument. Mounts are described, not performed: containerd mounts
them itself with mount(2), which limits a chain to what one page of overlay options holds
(about 180 layers, refused beyond; see :mod:`aufs.serve.snapshotter`).

The socket gives root-equivalent power over the host, so it is created 0600 (0660 and owned
by a group only when one is named), and the server refuses a socket path owned by another user,
a parent directory another (non-root) user owns, or a socket another server listens on.

grpcio and protobuf come with the ``aufs[containerd]`` extra; the message and service modules in
:mod:`aufs.serve._proto` are generated from containerd's protos (see its README).
"""
from __future__ import annotations

import errno
import grp
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import TYPE_CHECKING, Any, TypeVar, Union

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from ..errors import AufsError, LayerNotFound
from ..plan import Mount
from .sockets import SocketRefused, claim_socket_path, require_servable
from ._proto import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from .snapshotter import (
    ACTIVE,
    COMMITTED,
    VIEW,
    InvalidSnapshotRequest,
    Snapshot,
    SnapshotConflict,
    SnapshotExists,
    SnapshotNotFound,
    Snapshotter,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Driver

__all__ = ["ContainerdServer", "SocketRefused", "serve_containerd"]

PathArg = Union[str, "os.PathLike[str]"]
log = logging.getLogger("aufs.serve.containerd")

LIST_BATCH = 100
"""Snapshots per List response message at most (containerd's own service sends 100 at a time)."""
LIST_BATCH_BYTES = 1 << 20
"""...and at most about this many bytes (labels can be large; gRPC clients refuse messages over
4 MiB by default)."""

_KIND_TO_PROTO = {VIEW: snapshots_pb2.VIEW, ACTIVE: snapshots_pb2.ACTIVE, COMMITTED: snapshots_pb2.COMMITTED}

# most specific first: InvalidSnapshotRequest is a ValueError, a SnapshotNotFound a LookupError
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (SnapshotNotFound, grpc.StatusCode.NOT_FOUND),
    (LayerNotFound, grpc.StatusCode.NOT_FOUND),
    (SnapshotExists, grpc.StatusCode.ALREADY_EXISTS),
    (SnapshotConflict, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidSnapshotRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _info(snap: Snapshot) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=snap.key, parent=snap.parent, kind=_KIND_TO_PROTO[snap.kind],
        created_at=_timestamp(snap.created), updated_at=_timestamp(snap.updated), labels=dict(snap.labels),
    )


def _mounts(described: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in described]


_Reply = TypeVar("_Reply")


class _Servicer(snapshots_pb2_grpc.SnapshotsServicer):
    """The gRPC face of one :class:`Snapshotter`: decode, call, encode, map errors."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self.snapshotter = snapshotter

    def _call(self, method: str, subject: str, context: grpc.ServicerContext,
              work: Callable[[], _Reply]) -> _Reply:
        started = time.monotonic()
        outcome = "OK"
        try:
            return work()
        except BaseException as exc:
            code = next((c for t, c in _CODES if isinstance(exc, t)), None)
            if code is None:
                if isinstance(exc, (AufsError, OSError)):
                    code = grpc.StatusCode.UNKNOWN
                else:
                    log.exception("%s %s: internal error", method, subject)
                    code = grpc.StatusCode.INTERNAL
            outcome = code.name
            context.abort(code, str(exc) or type(exc).__name__)
            raise  # pragma: no cover - abort raises
        finally:
            log.debug("%s %s -> %s %.1fms", method, subject, outcome, (time.monotonic() - started) * 1000)

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("Prepare", f"key={request.key!r} parent={request.parent!r}", context, lambda: (
            snapshots_pb2.PrepareSnapshotResponse(mounts=_mounts(
                self.snapshotter.prepare(request.key, request.parent, dict(request.labels))))))

    def View(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("View", f"key={request.key!r} parent={request.parent!r}", context, lambda: (
            snapshots_pb2.ViewSnapshotResponse(mounts=_mounts(
                self.snapshotter.view(request.key, request.parent, dict(request.labels))))))

    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("Mounts", f"key={request.key!r}", context, lambda: (
            snapshots_pb2.MountsResponse(mounts=_mounts(self.snapshotter.mounts(request.key)))))

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:
            self.snapshotter.commit(request.name, request.key, dict(request.labels))
            return empty_pb2.Empty()
        return self._call("Commit", f"name={request.name!r} key={request.key!r}", context, work)

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:
            self.snapshotter.remove(request.key)
            return empty_pb2.Empty()
        return self._call("Remove", f"key={request.key!r}", context, work)

    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("Stat", f"key={request.key!r}", context, lambda: (
            snapshots_pb2.StatSnapshotResponse(info=_info(self.snapshotter.stat(request.key)))))

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        paths = list(request.update_mask.paths)
        return self._call("Update", f"key={request.info.name!r} paths={paths}", context, lambda: (
            snapshots_pb2.UpdateSnapshotResponse(info=_info(
                self.snapshotter.update(request.info.name, dict(request.info.labels), paths)))))

    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        filters = list(request.filters)
        # the walk copies the records under the lock; the stream runs without it, so a client
        # that stops reading (or disconnects) holds nothing up
        found = self._call("List", f"filters={filters}", context, lambda: self.snapshotter.walk(filters))
        batch: list[Any] = []
        size = 0
        for sent, snap in enumerate(found):
            info = _info(snap)
            batch.append(info)
            size += info.ByteSize()
            if len(batch) == LIST_BATCH or size >= LIST_BATCH_BYTES or sent == len(found) - 1:
                if not context.is_active():
                    log.debug("List: client went away after %d of %d snapshots", sent + 1 - len(batch), len(found))
                    return
                yield snapshots_pb2.ListSnapshotsResponse(info=batch)
                batch, size = [], 0

    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:
            usage = self.snapshotter.usage(request.key)
            return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)
        return self._call("Usage", f"key={request.key!r}", context, work)

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:
            self.snapshotter.cleanup()
            return empty_pb2.Empty()
        return self._call("Cleanup", "", context, work)


# -------------------------------------------------------------------- the socket

def _group_id(group: str | int) -> int:
    if isinstance(group, int) or group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group named {group!r}") from None


class ContainerdServer:
    """The snapshotter gRPC server on a unix socket, for the life of a ``with`` block.

    ``ContainerdServer(driver, socket, group=None, workers=8)``: ``start()`` (or entering the
    block) claims the socket path (see the module docstring), opens the store's
    :class:`Snapshotter` (:class:`aufs.StoreLocked` if another server runs on the store) and
    serves; ``stop()`` (or leaving the block) stops serving, waits up to ``grace`` seconds for
    requests in flight, removes the socket and closes the snapshotter. Both are idempotent.
    """

    def __init__(self, driver: Driver, socket: PathArg, *, group: str | int | None = None,
                 workers: int = 8) -> None:
        require_servable(driver, "containerd")
        self.driver = driver
        self.socket = os.path.abspath(os.fspath(socket))
        self.group = None if group is None else _group_id(group)
        self.workers = workers
        self._server: grpc.Server | None = None
        self._snapshotter: Snapshotter | None = None
        self._socket_id: tuple[int, int] | None = None

    def __enter__(self) -> ContainerdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def snapshotter(self) -> Snapshotter:
        if self._snapshotter is None:
            raise RuntimeError("the server is not running")
        return self._snapshotter

    def start(self) -> None:
        if self._server is not None:
            return
        claim_socket_path(self.socket, make_parents=True)
        self._snapshotter = Snapshotter(self.driver)
        try:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="aufs-grpc"))
            snapshots_pb2_grpc.add_SnapshotsServicer_to_server(  # type: ignore[no-untyped-call]
                _Servicer(self._snapshotter), server)
            # the socket is created by bind() inside add_insecure_port: the umask makes it 0600
            # from its first instant (the umask is process-wide, hence the short window)
            old = os.umask(0o177)
            try:
                if server.add_insecure_port("unix:" + self.socket) == 0:
                    raise OSError(errno.EADDRINUSE, "cannot listen on the socket", self.socket)
            finally:
                os.umask(old)
            st = os.lstat(self.socket)
            self._socket_id = (st.st_dev, st.st_ino)
            if self.group is not None:
                os.chown(self.socket, -1, self.group)
                os.chmod(self.socket, 0o660)
            else:
                os.chmod(self.socket, 0o600)
            server.start()
            self._server = server
        except BaseException:
            self._remove_socket()
            self._snapshotter.close()
            self._snapshotter = None
            raise
        log.info("serving containerd snapshots for %s on %s", self.driver.home, self.socket)

    def stop(self, grace: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()
        self._remove_socket()
        if self._snapshotter is not None:
            self._snapshotter.close()
            self._snapshotter = None

    def _remove_socket(self) -> None:
        # only the socket we made: a successor may already listen on the same path
        try:
            st = os.lstat(self.socket)
        except FileNotFoundError:
            return
        if self._socket_id == (st.st_dev, st.st_ino):
            os.unlink(self.socket)
        self._socket_id = None


def serve_containerd(driver: Driver, socket: PathArg, *, group: str | int | None = None,
                     stop: threading.Event | None = None,
                     ready: Callable[[ContainerdServer], None] | None = None) -> None:
    """Serve containerd's Snapshots API for ``driver``'s store on the unix socket ``socket``.

    Blocks until ``stop`` is set or, when called from the main thread, SIGTERM or SIGINT
    arrives; then stops cleanly (requests in flight finish, the socket is removed) and returns.
    ``group`` (name or gid) makes the socket 0660 for that group instead of 0600. ``ready`` is
    called with the running :class:`ContainerdServer` once it accepts requests.
    Raises :class:`SocketRefused`, :class:`aufs.StoreLocked`, ``OSError``.
    """
    stop = stop if stop is not None else threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    saved: dict[signal.Signals, Any] = {}
    if in_main:
        for signum in (signal.SIGTERM, signal.SIGINT):
            saved[signum] = signal.signal(signum, lambda received, frame: stop.set())
    try:
        with ContainerdServer(driver, socket, group=group) as server:
            if ready is not None:
                ready(server)
            while not stop.wait(1.0):
                pass
            log.info("stopping")
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)

