"""Client side of the snapshotter tests: a thin gRPC client and containerd's way of mounting.

:class:`Client` speaks the Snapshots API as containerd's proxy client does (a gRPC call per
method, ``grpc.RpcError`` with containerd's codes on failure). :func:`mount_as_containerd`
performs returned mounts as containerd 1.6 does: one mount(2) per mount, ``ro`` as MS_RDONLY,
the rest as the data string, and for overlay data near a page the lower dirs made relative
to their common parent directory (containerd's ``compactLowerdirOption``), mounted from there.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from aufs import mounts as aufs_mounts
from aufs.serve._proto import snapshots_pb2, snapshots_pb2_grpc

MS_RDONLY = 1
KIND_NAMES = {snapshots_pb2.VIEW: "view", snapshots_pb2.ACTIVE: "active", snapshots_pb2.COMMITTED: "committed"}


class Client:
    """The ten RPCs, returning plain values; errors stay ``grpc.RpcError``."""

    def __init__(self, socket: str) -> None:
        self.channel = grpc.insecure_channel("unix:" + socket)
        self.stub = snapshots_pb2_grpc.SnapshotsStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def prepare(self, key: str, parent: str = "", labels: dict[str, str] | None = None) -> list[Any]:
        return list(self.stub.Prepare(snapshots_pb2.PrepareSnapshotRequest(key=key, parent=parent, labels=labels or {})).mounts)

    def view(self, key: str, parent: str = "", labels: dict[str, str] | None = None) -> list[Any]:
        return list(self.stub.View(snapshots_pb2.ViewSnapshotRequest(key=key, parent=parent, labels=labels or {})).mounts)

    def mounts(self, key: str) -> list[Any]:
        return list(self.stub.Mounts(snapshots_pb2.MountsRequest(key=key)).mounts)

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        self.stub.Commit(snapshots_pb2.CommitSnapshotRequest(name=name, key=key, labels=labels or {}))

    def remove(self, key: str) -> None:
        self.stub.Remove(snapshots_pb2.RemoveSnapshotRequest(key=key))

    def stat(self, key: str) -> Any:
        return self.stub.Stat(snapshots_pb2.StatSnapshotRequest(key=key)).info

    def update(self, info: Any, *paths: str) -> Any:
        request = snapshots_pb2.UpdateSnapshotRequest(info=info, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))
        return self.stub.Update(request).info

    def walk(self, *filters: str) -> list[Any]:
        out = []
        for response in self.stub.List(snapshots_pb2.ListSnapshotsRequest(filters=list(filters))):
            out.extend(response.info)
        return out

    def usage(self, key: str) -> tuple[int, int]:
        reply = self.stub.Usage(snapshots_pb2.UsageRequest(key=key))
        return reply.size, reply.inodes

    def cleanup(self) -> None:
        self.stub.Cleanup(snapshots_pb2.CleanupRequest())


def code_of(call: Any, *args: Any) -> grpc.StatusCode:
    """The gRPC status code ``call(*args)`` fails with (AssertionError if it succeeds)."""
    try:
        call(*args)
    except grpc.RpcError as exc:
        return exc.code()
    raise AssertionError(f"{getattr(call, '__name__', call)}{args} succeeded")


def _compact_lowerdirs(options: list[str]) -> tuple[str | None, list[str]]:
    lowers = [o for o in options if o.startswith("lowerdir=")]
    if len(lowers) != 1:
        return None, options
    dirs = lowers[0][len("lowerdir="):].split(":")
    if len(dirs) == 1:
        return None, options
    common = os.path.commonprefix(dirs)
    common = os.path.dirname(common)
    if common in ("", "/"):
        return None, options
    common += "/"
    rest = [o for o in options if not o.startswith("lowerdir=")]
    return common, rest + ["lowerdir=" + ":".join(d[len(common):] for d in dirs)]


def mount_as_containerd(described: Sequence[Any], target: str) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    for m in described:
        options = list(m.options)
        chdir = None
        if m.type == "overlay" and len(",".join(options)) >= page - 512:
            chdir, options = _compact_lowerdirs(options)
        flags = MS_RDONLY if "ro" in options else 0
        data = ",".join(o for o in options if o not in ("ro", "rw"))
        if chdir is None:
            aufs_mounts.mount(m.source, target, m.type, flags, data)
        else:
            # relative lower dirs resolve against the mounting process's cwd: mount from a child
            subprocess.run(["mount", "-t", m.type, "-o", ("ro," if flags else "") + data, m.source, target],
                           cwd=chdir, check=True, capture_output=True)


@contextmanager
def mounted(described: Sequence[Any], target: str) -> Iterator[str]:
    os.makedirs(target, exist_ok=True)
    mount_as_containerd(described, target)
    try:
        yield target
    finally:
        aufs_mounts.unmount(target)
