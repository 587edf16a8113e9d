"""The kernel overlayfs backend.

Layers use the OVERLAY whiteout format (0/0 character devices, ``trusted.overlay.opaque``),
which is what overlayfs reads. Mounts go through :func:`aufs.mounts.mount_overlay`, which uses
the new mount API with one ``lowerdir+`` per layer, so the kernel's own limit of 500 lower
layers is reachable no matter how long the paths are (mount(2) data is one page).

Mount options pin the features that would write overlay-private state into a layer's diff dir
(``redirect_dir`` xattrs on renamed directories, ``metacopy`` files whose data stays below,
the inode index): with them off, a diff dir holds complete files and whiteouts only.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import kernel
from ..whiteouts import WhiteoutFormat
from ..plan import (OVERLAY_MAX_LOWERS, OVERLAY_OPTIONS, USERNS_OVERLAY_OPTIONS, Mount, fit_lowers,
                    legacy_overlay_max_depth, overlay_mount)
from .base import Backend, has_cap_sys_admin, kernel_filesystems

__all__ = ["MOUNT_OPTIONS", "OVERLAY_MAX_LOWERS", "OverlayBackend"]

MOUNT_OPTIONS = OVERLAY_OPTIONS


class OverlayBackend(Backend):
    """Kernel overlayfs: the layer's diff dir is the upper dir, its ancestors the lower dirs."""

    name = "overlay"
    formats = (WhiteoutFormat.OVERLAY,)
    @property
    def options(self) -> tuple[str, ...]:
        return USERNS_OVERLAY_OPTIONS if self.userxattr else MOUNT_OPTIONS

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if "overlay" not in kernel_filesystems():
            return "the kernel has no overlayfs (try `modprobe overlay`)"
        if not has_cap_sys_admin():
            return "kernel overlayfs needs CAP_SYS_ADMIN (run as root) to mount"
        if kernel.in_user_namespace():
            return kernel.userns_overlay_reason()
        return None

    def _legacy(self) -> bool:
        """True if this kernel needs all layers in one page of mount(2) data."""
        return not kernel.lowerdir_plus(kernel.fsconfig_takes(self.layout.diff_dir("x" * 128)))

    @property
    def max_depth(self) -> int:
        if not self._legacy():
            return OVERLAY_MAX_LOWERS + 1
        # legacy mount(2), as Docker's overlay2 does it: lowers named by short links
        return legacy_overlay_max_depth(kernel.page_size(), len(self.layout.short_link("x")),
                                        len(self.layout.diff_dir("x" * 128)), self.options)

    def pick_lowers(self, full: Sequence[str], short: Callable[[], Sequence[str]],
                    upper: str | None, work: str | None) -> Sequence[str]:
        # data that fits one page, so that mount(2) (a container engine's, an old kernel's)
        # can perform the description; full paths when they fit, as they read best
        return fit_lowers(full, short, lambda lowers: self.describe(lowers, upper, work)[0],
                          kernel.page_size())

    def describe(self, lowers: Sequence[str], upper: str | None, work: str | None) -> list[Mount]:
        lowers = list(lowers)
        if upper is None and len(lowers) == 1:
            # overlayfs refuses a single lower without an upper: the empty dir makes a second
            lowers.append(self.layout.empty_dir)
        return [overlay_mount(lowers, upper, work, self.options)]
