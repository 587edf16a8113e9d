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

from .. import kernel, mounts
from ..errors import MountError
from ..whiteouts import WhiteoutFormat
from .base import Backend, MountRequest, has_cap_sys_admin, kernel_filesystems

__all__ = ["MOUNT_OPTIONS", "OVERLAY_MAX_LOWERS", "OverlayBackend"]

OVERLAY_MAX_LOWERS = 500
"""The kernel's limit on lower layers (OVL_MAX_STACK)."""

MOUNT_OPTIONS = ("index=off", "redirect_dir=off", "metacopy=off")


class OverlayBackend(Backend):
    """Kernel overlayfs: the layer's diff dir is the upper dir, its ancestors the lower dirs."""

    name = "overlay"
    formats = (WhiteoutFormat.OVERLAY,)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if "overlay" not in kernel_filesystems():
            return "the kernel has no overlayfs (try `modprobe overlay`)"
        if not has_cap_sys_admin():
            return "kernel overlayfs needs CAP_SYS_ADMIN (run as root) to mount"
        return None

    def _legacy(self) -> bool:
        """True if this kernel needs all layers in one page of mount(2) data."""
        return not kernel.lowerdir_plus(len(self.layout.diff_path("x" * 128)))

    @property
    def max_depth(self) -> int:
        if not self._legacy():
            return OVERLAY_MAX_LOWERS + 1
        # legacy mount(2), as Docker's overlay2 does it: lowers named by short links, each
        # costing its path and a ':' out of one page that also holds upper, work and options
        page = kernel.page_size()
        per_lower = len(str(self.layout.short_link("x"))) + 1
        longest = len(self.layout.diff_path("x" * 128))
        fixed = len("lowerdir=,upperdir=,workdir=") + 2 * longest + sum(len(o) + 1 for o in MOUNT_OPTIONS)
        return max(1, min(OVERLAY_MAX_LOWERS, (page - 1 - fixed) // per_lower) + 1)

    def lower_path(self, layer_id: str) -> str:
        if self._legacy():
            return self.short_lower_path(layer_id)
        return self.layout.diff_path(layer_id)

    def lower_paths(self, layer_ids: list[str]) -> tuple[str, ...]:
        if self._legacy():
            return tuple(self.short_lower_path(i) for i in layer_ids)
        return tuple(self.layout.diff_path(i) for i in layer_ids)

    def mount(self, request: MountRequest) -> None:
        lowers = list(request.lowers)
        if request.upper is None and len(lowers) == 1:
            # overlayfs refuses a single lower without an upper: the empty dir makes a second
            lowers.append(str(self.layout.empty_dir))
        try:
            mounts.mount_overlay(
                request.target, lowers, request.upper, request.work, options=MOUNT_OPTIONS
            )
        except MountError:
            raise
        except OSError as exc:
            raise MountError(f"overlay mount on {request.target} failed: {exc}", path=request.target) from exc
