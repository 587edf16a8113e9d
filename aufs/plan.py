"""Mount planning: which layers a chain mounts, and the mount that shows them, as data.

Everything here is a pure function of its arguments: nothing touches the disk or the kernel.
The store gathers the facts (a layer's ancestors, which layers have an opaque root, the
paths of their diff dirs) and this module turns them into :class:`Mount` descriptions, like
containerd's ``Mounts``: a type, a source and a list of options. A description can be handed
to another process (a container engine mounts it itself) or performed by
:func:`aufs.mounts.mount_described`; ``Driver.get`` performs exactly what ``Driver.mounts``
describes.

Option values are written as the kernel's ``mount(2)`` parser for overlayfs reads them:
``\\``, ``:`` and ``,`` inside a path are escaped with a backslash (:func:`escape_option`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

__all__ = [
    "OVERLAY_MAX_LOWERS",
    "OVERLAY_OPTIONS",
    "USERNS_OVERLAY_OPTIONS",
    "Mount",
    "fit_lowers",
    "escape_option",
    "legacy_overlay_max_depth",
    "mount_chain",
    "mount_data",
    "overlay_mount",
    "parse_overlay_options",
    "split_option_list",
    "unescape_option",
]

OVERLAY_MAX_LOWERS = 500
"""The kernel's limit on overlayfs lower layers (OVL_MAX_STACK)."""

OVERLAY_OPTIONS = ("index=off", "redirect_dir=off", "metacopy=off")
"""Pinned overlayfs features: with these off a diff dir holds complete files and whiteouts only
(no ``redirect`` xattrs on renamed directories, no metacopy files whose data stays below, no
inode index)."""

USERNS_OVERLAY_OPTIONS = ("userxattr", "index=off", "metacopy=off")
"""The same in a user namespace: ``userxattr`` (whiteout and opaque markers in ``user.overlay.*``;
the kernel refuses ``trusted.*`` there), which itself keeps ``redirect_dir`` at ``nofollow``
(renamed directories are copied, no redirect written) and refuses ``redirect_dir=off``."""


class Mount(NamedTuple):
    """One mount, described: what ``mount -t TYPE -o OPTIONS SOURCE TARGET`` would do.

    ``type`` is the filesystem type (``"overlay"``, ``"aufs"``, ``"fuse3.fuse-overlayfs"``,
    ``"bind"``), ``source`` the mount source, ``options`` the mount options in order. A list of
    mounts is performed in order on one target (a ``"remount"`` option changes the mount the
    previous entries made). Same shape as containerd's ``types.Mount``.
    """

    type: str
    source: str
    options: tuple[str, ...]


def escape_option(path: str) -> str:
    """``path`` as an option value: backslash before ``\\``, ``:`` and ``,``."""
    if "\\" not in path and ":" not in path and "," not in path:  # three C scans, no generator
        return path
    return "".join("\\" + c if c in "\\:," else c for c in path)


def unescape_option(value: str) -> str:
    """The inverse of :func:`escape_option`."""
    if "\\" not in value:
        return value
    out = []
    chars = iter(value)
    for c in chars:
        out.append(next(chars, "") if c == "\\" else c)
    return "".join(out)


def split_option_list(value: str, sep: str = ":") -> list[str]:
    """Split an escaped option value on unescaped ``sep`` and unescape each part."""
    if "\\" not in value:  # the common case, and a 500-layer lowerdir is 40 KB
        return value.split(sep)
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for c in value:
        if escaped:
            current.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def mount_chain(
    layer_id: str,
    ancestors: Sequence[str],
    root_opaque: Callable[[str], bool],
    *,
    include_self: bool = False,
) -> list[str]:
    """The layers a mount of ``layer_id`` shows below its top, top-most first.

    ``ancestors`` is the layer's parent chain, parent first. Kernel overlayfs ignores the
    opaque flag on a layer's *root* directory, so a layer whose root is opaque must be the
    bottom of the mount: the chain stops there. With ``include_self`` (a read-only view of the
    layer itself) the layer heads the list; otherwise it is the writable top and not listed.
    """
    chain = [layer_id] if include_self else []
    if root_opaque(layer_id):
        return chain
    for ancestor in ancestors:
        chain.append(ancestor)
        if root_opaque(ancestor):
            break
    return chain


def mount_data(options: Sequence[str]) -> str:
    """The ``mount(2)`` data string of a mount's options."""
    return ",".join(options)


def overlay_mount(
    lowers: Sequence[str],
    upper: str | None = None,
    work: str | None = None,
    options: Sequence[str] = OVERLAY_OPTIONS,
) -> Mount:
    """An overlayfs mount of ``lowers`` (top-most first) under ``upper``; read-only without it."""
    if not lowers:
        raise ValueError("an overlay mount needs at least one lower directory")
    if (upper is None) != (work is None):
        raise ValueError("upper and work directories go together")
    opts = list(options)
    opts.append("lowerdir=" + ":".join(map(escape_option, lowers)))
    if upper is not None and work is not None:
        opts.append("upperdir=" + escape_option(upper))
        opts.append("workdir=" + escape_option(work))
    return Mount("overlay", "overlay", tuple(opts))


def parse_overlay_options(options: Sequence[str]) -> tuple[list[str], str | None, str | None, list[str]]:
    """``(lowers, upper, work, other options)`` of an overlay :class:`Mount`'s options."""
    lowers: list[str] = []
    upper = work = None
    rest: list[str] = []
    for option in options:
        key, eq, value = option.partition("=")
        if eq and key == "lowerdir":
            lowers = split_option_list(value)
        elif eq and key == "upperdir":
            upper = unescape_option(value)
        elif eq and key == "workdir":
            work = unescape_option(value)
        else:
            rest.append(option)
    return lowers, upper, work, rest


def fit_lowers(
    full: Sequence[str],
    short: Callable[[], Sequence[str]],
    render: Callable[[Sequence[str]], Mount],
    page_size: int,
) -> Sequence[str]:
    """The lower names to describe: ``full`` paths when the mount data fits in one page, else
    the fixed-length aliases ``short()`` returns (which fit a page for chains up to about
    ``page_size / alias length`` layers; deeper ones only the new mount API performs, and a
    container engine that shortens a common prefix, as containerd does, still gets the most
    layers into one page from aliases)."""
    if len(mount_data(render(full).options)) <= page_size - 1:  # one page, NUL included
        return full
    return short()


def legacy_overlay_max_depth(page_size: int, short_link_length: int, longest_diff_dir: int,
                             options: Sequence[str] = OVERLAY_OPTIONS) -> int:
    """The deepest chain a kernel without ``lowerdir+`` mounts: every lower named by a short
    link, the whole data (lowers, upper, work, options) in one page, as Docker's overlay2."""
    fixed = len("lowerdir=,upperdir=,workdir=") + 2 * longest_diff_dir + sum(len(o) + 1 for o in options)
    per_lower = short_link_length + 1
    return max(1, min(OVERLAY_MAX_LOWERS, (page_size - 1 - fixed) // per_lower) + 1)
