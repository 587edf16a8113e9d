"""What every union backend provides to the store, and the unmount discipline they share.

A backend turns a planned chain (the lower directories top-most first, and for a writable
mount an upper and a work directory) into a mount description, performs it, and takes the
mount down again. It knows nothing of layer ids, locks or reference counts: :class:`aufs.Driver`
owns those. Each backend declares the whiteout formats it can read (the first is the one a new
store gets), how deep a chain it can mount, and why it cannot run here, if it cannot.
"""
from __future__ import annotations

import abc
import os
import enum
import errno
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from .. import mounts
from ..errors import MountError
from ..kernel import filesystems as kernel_filesystems
from ..kernel import has_cap_sys_admin
from ..layout import Layout
from ..plan import Mount
from ..whiteouts import WhiteoutFormat

__all__ = ["Backend", "Detached", "detach", "fusermount_binary", "has_cap_sys_admin", "kernel_filesystems"]


class Detached(enum.Enum):
    """How :func:`detach` ended."""

    NOT_MOUNTED = "not mounted"
    UNMOUNTED = "unmounted"
    LAZILY = "detached lazily (still busy: the kernel frees it when its last user goes)"


def detach(target: str, *, busy_retries: int = 5) -> Detached:
    """Unmount ``target``: bounded EBUSY retries, then a lazy detach.

    The lazy fallback makes the mount vanish from the namespace at once; the kernel frees it
    when its last user lets go, which is the right outcome for a layer being put or removed.
    A process that may not umount2 (an ordinary user, EPERM) takes its own FUSE mounts down
    with the setuid helper ``fusermount3 -u`` (or ``fusermount -u``), as libfuse intends.
    """
    try:
        return Detached.UNMOUNTED if mounts.unmount(target, busy_retries=busy_retries) else Detached.NOT_MOUNTED
    except (MountError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        code = getattr(cause, "errno", None)
        if code == errno.EPERM:
            return _fusermount_detach(target, exc, busy_retries)
        if code != errno.EBUSY:
            raise
    return Detached.LAZILY if mounts.unmount(target, lazy=True) else Detached.NOT_MOUNTED


def fusermount_binary() -> str | None:
    """The FUSE unmount helper an unprivileged process uses, or None if none is installed."""
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _fusermount_detach(target: str, refused: BaseException, busy_retries: int) -> Detached:
    """``fusermount3 -u target`` for a process umount2 refused; lazily (``-z``) when busy."""
    binary = fusermount_binary()
    if binary is None:
        raise MountError(f"cannot unmount {target!r}: umount2 needs privilege and neither fusermount3 "
                         "nor fusermount is installed (apt-get install fuse3)", path=target) from refused
    delay = 0.01
    message = ""
    for attempt in range(busy_retries + 2):
        lazy = attempt > busy_retries  # the last try detaches lazily, as umount2 does
        if not mounts.mounted(target):
            return Detached.NOT_MOUNTED
        # a session of its own: a Ctrl-C aimed at the caller's process group must not kill
        # the helper halfway and leave the mount behind
        proc = subprocess.run([binary, "-u", *(["-z"] if lazy else []), "--", target],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False, start_new_session=True)
        if proc.returncode == 0:
            return Detached.LAZILY if lazy else Detached.UNMOUNTED
        message = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        if proc.returncode > 0 and "busy" not in message.lower() and "exit status" not in message:
            break  # a reason that will not change (not ours, not a FUSE mount)
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    if not mounts.mounted(target):
        return Detached.NOT_MOUNTED
    raise MountError(f"cannot unmount {target!r}: umount2 needs privilege and {os.path.basename(binary)} "
                     f"failed: {message} (only FUSE mounts this user made can be "
                     "taken down without privilege)", path=target) from refused


def wait_unmounted(target: str, timeout: float) -> bool:
    """Poll until ``target`` is no mount point; False on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while mounts.mounted(target):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


class Backend(abc.ABC):
    """A union filesystem implementation the store can mount layer chains with.

    The store plans a chain (which layers, in which order, see :mod:`aufs.plan`) and asks the
    backend to *describe* the mount (:meth:`describe`) and, for ``get``, to *perform* that
    description (:meth:`perform`). The same description is what ``Driver.mounts`` hands out.
    """

    name: ClassVar[str]
    rootless: bool = False
    """Set by the store for a rootless store (owners recorded in xattrs, see aufs.rootless)."""
    userxattr: bool = False
    """Set by the store for a userns store (aufs.userns): kernel overlayfs mounts it with
    ``userxattr`` in the store's user namespace."""
    formats: ClassVar[tuple[WhiteoutFormat, ...]]
    """Whiteout formats this backend reads; ``formats[0]`` is what a new store is created with."""

    def __init__(self, layout: Layout, fmt: WhiteoutFormat) -> None:
        if fmt not in self.formats:
            raise ValueError(f"backend {self.name} cannot read the {fmt.value} whiteout format")
        self.layout = layout
        self.format = fmt

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls) -> str | None:
        """None if the backend can run here, else what is missing (for BackendUnavailable)."""

    @property
    @abc.abstractmethod
    def max_depth(self) -> int:
        """The longest layer chain (the layer and all its ancestors) this backend mounts."""

    def pick_lowers(self, full: Sequence[str], short: Callable[[], Sequence[str]],
                    upper: str | None, work: str | None) -> Sequence[str]:
        """How to name the lower layers in a description: their diff dirs (``full``) or their
        fixed-length short links (``short()``, which makes the links). Default: ``full``."""
        return full

    @abc.abstractmethod
    def describe(self, lowers: Sequence[str], upper: str | None, work: str | None) -> list[Mount]:
        """The mounts that show ``lowers`` (top-most first, never empty) under the writable
        ``upper`` with its ``work`` dir, or read-only when both are None."""

    def perform(self, described: list[Mount], target: str, record: str | None = None) -> None:
        """Mount ``described`` on ``target`` (an existing empty directory).

        ``record`` names a file where the backend may note what a later unmount (possibly by
        another process) needs, such as a daemon's pid; the store deletes it with the layer.
        Raises :class:`aufs.MountError` (with the OSError as ``__cause__``) and leaves nothing
        mounted when it fails.
        """
        try:
            mounts.mount_described(described, target)
        except MountError:
            raise
        except OSError as exc:
            raise MountError(f"{self.name} mount on {target} failed: {exc}", path=target) from exc

    def unmount(self, target: str, *, record: str | None = None, upper: str | None = None) -> bool:
        """Take the mount at ``target`` down (see :func:`detach`); False if nothing was mounted.

        ``record`` and ``upper`` are those of the mount, so the backend can finish its own
        bookkeeping (wait for a daemon, normalise what it wrote into ``upper``).
        """
        return detach(target) is not Detached.NOT_MOUNTED

    def normalise(self, upper: str) -> None:
        """Make ``upper`` (possibly in use by a mount) hold only the store's whiteout format.

        Called under the layer lock before a layer is exported or compared. Default: nothing.
        """

    def settle(self, record: str, upper: str, *, wait: bool = False) -> None:
        """Finish the bookkeeping of an earlier mount of ``upper`` that is no longer mounted.

        Called by the store, under the layer lock, before it mounts, exports or changes a layer
        whose ``record`` file exists (left by a crash or a lazy unmount). With ``wait`` the
        backend first waits (bounded) for whatever still serves that mount to go away, as
        ``cleanup`` wants after detaching everything. Default: nothing.
        """
