"""The kernel AUFS backend and its ``br:`` mount-data builder.

AUFS takes its branches in the mount data: ``br:UPPER=rw:LOWER1=ro+wh:...`` (top-most first)
plus options such as ``xino=``. mount(2) data is one page, so like the mature Docker driver we
put as many branches as fit into the first mount and add the rest with ``append:`` remounts;
unlike it we batch several ``append:`` options into each remount, and we never let the
kernel cut data short: every chunk is checked to fit (NUL included) before it is used.
:func:`branch_mount_data` is a pure function so the batching is tested without AUFS.

Layers use the AUFS whiteout format (``.wh.NAME`` files, ``.wh..wh..opq``), AUFS's own.
The default kernel build allows 127 branches (CONFIG_AUFS_BRANCH_MAX_127).
"""
from __future__ import annotations

from collections.abc import Sequence

from .. import kernel, mounts
from ..errors import MountDataTooLong, MountError
from ..plan import Mount
from ..whiteouts import WhiteoutFormat
from .base import Backend, has_cap_sys_admin, kernel_filesystems

__all__ = ["AUFS_MAX_BRANCHES", "DEFAULT_XINO", "AufsBackend", "branch_mount_data"]

AUFS_MAX_BRANCHES = 127
DEFAULT_XINO = "/dev/shm/aufs.xino"
_FORBIDDEN = (":", ",", "=", "\n")  # separators of the br: syntax


def _branch(path: str, mode: str) -> str:
    if any(c in path for c in _FORBIDDEN):
        raise ValueError(f"AUFS cannot take the branch path {path!r} (':', ',' or '=' in it)")
    return f"{path}={mode}"


def branch_mount_data(
    upper: str | None,
    lowers: Sequence[str],
    *,
    page_size: int,
    xino: str = DEFAULT_XINO,
    options: Sequence[str] = ("dio",),
) -> tuple[str, list[str]]:
    """Mount data for an AUFS union: ``(first, appends)``.

    ``first`` is for the initial mount: ``br:`` with ``upper`` (``=rw``, omitted for a read-only
    view) and as many ``lowers`` (``=ro+wh``, top-most first) as fit, then ``options`` and
    ``xino``. ``appends`` are the data of the ``MS_REMOUNT`` calls that add the other lowers
    in order, each ``append:BRANCH`` options joined by commas. Every lower appears exactly once,
    in order; every string is shorter than ``page_size`` (room for the NUL).
    Raises MountDataTooLong if even one branch cannot fit, ValueError for unusable paths.
    """
    limit = page_size - 1  # the kernel copies at most one page including the terminating NUL
    tail = "".join(f",{o}" for o in options) + f",xino={xino}"
    branches = [_branch(p, "ro+wh") for p in lowers]
    head = "br:" + (_branch(upper, "rw") if upper is not None else "")
    index = 0
    if upper is None:
        if not branches:
            raise ValueError("a read-only AUFS view needs at least one lower branch")
        head += branches[0]
        index = 1
    if len(head) + len(tail) > limit:
        raise MountDataTooLong(f"AUFS mount data for {head[:60]}... exceeds one page", path=upper)
    while index < len(branches) and len(head) + 1 + len(branches[index]) + len(tail) <= limit:
        head += ":" + branches[index]
        index += 1
    appends: list[str] = []
    chunk = ""
    for branch in branches[index:]:
        option = "append:" + branch
        if len(option) > limit:
            raise MountDataTooLong(f"AUFS branch {branch[:60]}... does not fit in one page", path=branch)
        if chunk and len(chunk) + 1 + len(option) > limit:
            appends.append(chunk)
            chunk = ""
        chunk = option if not chunk else chunk + "," + option
    if chunk:
        appends.append(chunk)
    return head + tail, appends


class AufsBackend(Backend):
    """Kernel AUFS: the layer's diff dir is the rw branch, its ancestors ro+wh branches."""

    name = "aufs"
    formats = (WhiteoutFormat.AUFS,)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if "aufs" not in kernel_filesystems():
            return "the kernel has no AUFS (/proc/filesystems lacks aufs)"
        if not has_cap_sys_admin():
            return "kernel AUFS needs CAP_SYS_ADMIN (run as root) to mount"
        return None

    @property
    def max_depth(self) -> int:
        return AUFS_MAX_BRANCHES

    def describe(self, lowers: Sequence[str], upper: str | None, work: str | None) -> list[Mount]:
        try:
            first, appends = branch_mount_data(upper, lowers, page_size=kernel.page_size())
        except ValueError as exc:
            if isinstance(exc, MountDataTooLong):
                raise
            raise MountError(str(exc), path=upper) from exc
        ro = ("ro",) if upper is None else ()
        described = [Mount("aufs", "none", ro + tuple(first.split(",")))]
        described += [Mount("aufs", "none", ro + ("remount",) + tuple(data.split(","))) for data in appends]
        return described

    def perform(self, described: list[Mount], target: str, record: str | None = None) -> None:
        super().perform(described, target, record)
        if not mounts.mounted(target):
            raise MountError(f"AUFS mount on {target} did not appear", path=target)
