"""What every union backend provides to the store, and the unmount discipline they share.

A backend turns a *mount request* (a target directory, the lower directories top-most first,
and for a writable mount an upper and a work directory) into a live union mount, and takes it
down again. It knows nothing of layer ids, locks or reference counts: :class:`aufs.Driver`
owns those. Each backend declares the whiteout formats it can read (the first is the one a new
store gets), how deep a chain it can mount, and why it cannot run here, if it cannot.
"""
from __future__ import annotations

import abc
import enum
import errno
import os
import time
from typing import ClassVar, NamedTuple

from .. import mounts
from ..errors import MountError
from ..kernel import filesystems as kernel_filesystems
from ..kernel import has_cap_sys_admin
from ..layout import Layout
from ..whiteouts import WhiteoutFormat

__all__ = ["Backend", "Detached", "MountRequest", "detach", "has_cap_sys_admin", "kernel_filesystems"]


class MountRequest(NamedTuple):
    """One union mount. ``lowers`` is never empty; ``upper``/``work`` are None for a read-only view.

    ``record`` names a file where the backend may note what a later unmount (possibly by another
    process) will need, such as a daemon's pid; the store deletes it with the layer.
    """

    target: str
    lowers: tuple[str, ...]
    upper: str | None = None
    work: str | None = None
    record: str | None = None


class Detached(enum.Enum):
    """How :func:`detach` ended."""

    NOT_MOUNTED = "not mounted"
    UNMOUNTED = "unmounted"
    LAZILY = "detached lazily (still busy: the kernel frees it when its last user goes)"


def detach(target: str, *, busy_retries: int = 5) -> Detached:
    """Unmount ``target``: bounded EBUSY retries, then a lazy detach.

    The lazy fallback makes the mount vanish from the namespace at once; the kernel frees it
    when its last user lets go, which is the right outcome for a layer being put or removed.
    """
    try:
        return Detached.UNMOUNTED if mounts.unmount(target, busy_retries=busy_retries) else Detached.NOT_MOUNTED
    except (MountError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        if getattr(cause, "errno", None) != errno.EBUSY:
            raise
    return Detached.LAZILY if mounts.unmount(target, lazy=True) else Detached.NOT_MOUNTED


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
    """A union filesystem implementation the store can mount layer chains with."""

    name: ClassVar[str]
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

    def lower_path(self, layer_id: str) -> str:
        """The path naming the layer's diff dir in a lower list (backends may shorten it)."""
        return self.layout.diff_path(layer_id)

    def lower_paths(self, layer_ids: list[str]) -> tuple[str, ...]:
        """:meth:`lower_path` of each layer, in order."""
        return tuple(self.lower_path(i) for i in layer_ids)

    def short_lower_path(self, layer_id: str) -> str:
        """The layer's fixed-length short link (made on first use), for long lower lists."""
        link = str(self.layout.short_link(layer_id))
        if not os.path.islink(link):
            try:
                os.symlink(self.layout.short_link_target(layer_id), link)
            except FileExistsError:
                pass
        return link

    @abc.abstractmethod
    def mount(self, request: MountRequest) -> None:
        """Mount the union ``request`` describes on ``request.target`` (an existing empty dir).

        Raises :class:`aufs.MountError` (with the OSError as ``__cause__``) and leaves nothing
        mounted when it fails.
        """

    def unmount(self, target: str, *, record: str | None = None, upper: str | None = None) -> bool:
        """Take the mount at ``target`` down (see :func:`detach`); False if nothing was mounted.

        ``record`` and ``upper`` are those of the mount request, so the backend can finish its
        own bookkeeping (wait for a daemon, tidy what it wrote into ``upper``).
        """
        return detach(target) is not Detached.NOT_MOUNTED

    def tidy(self, upper: str) -> None:
        """Make ``upper`` (possibly in use by a mount) hold only the store's whiteout format.

        Called under the layer lock before a layer is exported or compared. Default: nothing.
        """

    def settle(self, record: str, upper: str) -> None:
        """Finish the bookkeeping of an earlier mount of ``upper`` that is no longer mounted.

        Called by the store, under the layer lock, before it mounts, exports or changes a layer
        whose ``record`` file exists (left by a crash or a lazy unmount). Default: nothing.
        """
