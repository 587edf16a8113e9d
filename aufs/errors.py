"""The exception hierarchy of aufs.

Every error aufs raises on purpose derives from :class:`AufsError` and also from the builtin
exception closest in meaning, so callers can catch either: ``LayerNotFound`` is a
``LookupError``, ``LayerExists`` a ``FileExistsError``, ``ArchiveError`` a ``ValueError``.
Each carries the layer id and/or path it is about (``.layer_id``, ``.path``) and is raised
``from`` its cause when there is one.

OS-level failures of the syscalls themselves are plain ``OSError`` subclasses with errno,
strerror and path (see :mod:`aufs._syscalls`).
"""
from __future__ import annotations

import errno
import os
from typing import Optional, Union

__all__ = [
    "AufsError",
    "BackendUnavailable",
    "StoreFormatMismatch",
    "StoreLocked",
    "StoreNotFound",
    "StoreReadOnly",
    "LayerNotFound",
    "InvalidLayerId",
    "LayerExists",
    "LayerInUse",
    "MaxDepthExceeded",
    "MountError",
    "MountDataTooLong",
    "ArchiveError",
    "UnsafeArchive",
    "NoSpace",
    "PathTooLong",
    "ImageError",
    "DigestMismatch",
    "ImageNotFound",
]

_PathArg = Optional[Union[str, "os.PathLike[str]"]]


class AufsError(Exception):
    """Base class of every error aufs raises on purpose.

    :param message: what went wrong and, where it helps, what to do about it.
    :param layer_id: the layer concerned, if any.
    :param path: the filesystem path concerned, if any.
    """

    def __init__(self, message: str, *, layer_id: Optional[str] = None, path: _PathArg = None):
        super().__init__(message)
        self.message = message
        self.layer_id = layer_id
        self.path = os.fspath(path) if path is not None else None

    def __str__(self) -> str:
        return self.message


class BackendUnavailable(AufsError, RuntimeError):
    """No usable union backend, or the one asked for cannot run here (says what is missing)."""


class StoreFormatMismatch(AufsError, ValueError):
    """The store was created with an on-disk format the requested backend cannot read."""


class StoreLocked(AufsError, RuntimeError):
    """A store-wide operation could not take the store lock."""


class StoreNotFound(AufsError, FileNotFoundError):
    """There is no store at the home directory (and the operation does not create one)."""


class StoreReadOnly(AufsError, PermissionError):
    """The store's filesystem is mounted read-only: it can be read, not changed."""


class LayerNotFound(AufsError, LookupError):
    """The layer (or the named parent) does not exist in the store."""


class InvalidLayerId(LayerNotFound, ValueError):
    """A layer id that is not well formed (1 to 128 of ``[A-Za-z0-9_.-]``, first alphanumeric).

    It is a ``ValueError`` (the argument is bad) and also a :class:`LayerNotFound` (no such
    layer can exist), so lookups of a malformed id behave like lookups of a missing one.
    """


class LayerExists(AufsError, FileExistsError):
    """A layer with that id already exists."""


class LayerInUse(AufsError, RuntimeError):
    """The layer is mounted or is the parent of other layers, so the operation is refused."""


class MaxDepthExceeded(AufsError, ValueError):
    """The layer chain would be deeper than the backend can mount."""


class MountError(AufsError, OSError):
    """A mount or unmount failed; ``__cause__`` holds the OSError with errno."""


class MountDataTooLong(MountError, ValueError):
    """Legacy mount(2) data would not fit in one page; the kernel would truncate it silently."""


class ArchiveError(AufsError, ValueError):
    """A layer archive is corrupt, truncated, of an unsupported format, or otherwise unusable."""


class UnsafeArchive(ArchiveError):
    """An archive entry would create, modify or delete something outside the layer."""


class NoSpace(AufsError, OSError):
    """The filesystem under the store ran out of space (ENOSPC) or quota (EDQUOT)."""


class PathTooLong(AufsError, OSError):
    """A path in a layer is too long for aufs to name (``errno`` is ``ENAMETOOLONG``), e.g. a
    tree deeper than 64 KiB written through a mount; ``.path`` is the path (absolute in the
    layer) where it became too long, ``.layer_id`` the layer."""

    def __init__(self, message: str, *, layer_id: Optional[str] = None, path: _PathArg = None):
        super().__init__(message, layer_id=layer_id, path=path)
        self.errno = errno.ENAMETOOLONG
        self.strerror = os.strerror(errno.ENAMETOOLONG)

    @classmethod
    def of(cls, name: Union[str, bytes, None], what: str) -> "PathTooLong":
        """The error for a path of a layer too long to name: ``name`` relative to the layer
        (or absolute in it), shown shortened in the message, whole in ``.path``."""
        rel = os.fsdecode(name or "").lstrip("/")
        path = "/" + rel
        shown = path if len(path) <= 160 else f"{path[:100]}...{path[-40:]} ({len(path)} bytes)"
        return cls(f"{what}: the path {shown!r} is too long ({os.strerror(errno.ENAMETOOLONG)})", path=path)


class ImageError(AufsError, ValueError):
    """An image (docker-save tarball or OCI layout) is malformed or unsupported."""


class DigestMismatch(ImageError):
    """A blob's sha256 or a layer's diffID does not match what the image declares."""


class ImageNotFound(AufsError, LookupError):
    """No imported image has that name or id (or several do)."""
