"""Rootless stores: what an ordinary user's store records instead of owners it cannot set.

An unprivileged process cannot ``chown`` to another user, ``mknod`` a device, or set
``security.*`` / ``trusted.*`` xattrs. A *rootless* store (made by such a process) therefore
keeps every layer's files owned by the store's owner and records what the image says:

* owner, full mode (setuid/setgid/sticky too) and type in the ``user.containers.override_stat``
  xattr, as ``UID:GID:0MODE:TYPE`` (TYPE: ``file``, ``dir``, ``pipe``, ``char-MAJ-MIN``,
  ``block-MAJ-MIN``) on regular files and directories; devices and fifos are stored as empty
  regular files carrying it. Entries that are ``0:0`` with a mode the disk shows as is carry
  none: the store's owner stands for root, as in a rootless container.
* xattrs outside ``user.*`` under ``user.aufs.xattr.`` + their name;
* the owner of a symlink that is not ``0:0`` on its directory, as ``user.aufs.lowner.`` +
  its name = ``UID:GID:TARGET`` (a symlink can carry no user.* xattr; the target tells the
  recorded symlink from one put in its place through a mount, whose copy-up carries the
  directory's xattrs along; records of older stores, ``UID:GID``, still count).

Why this xattr and not umoci's ``user.rootlesscontainers`` (a protobuf of uid and gid only):
containers/storage writes the same one, and fuse-overlayfs (``-o xattr_permissions=2``) shows
it as the real owner and mode inside the mount, so a rootless mount looks like the root
store's. ``diff`` and ``export`` read the records back (:mod:`aufs.export`), so the store
exports byte for byte what a root store exports of the same image. On disk the store's
owner always has u+rw (u+rwx on directories), and no file is setuid or setgid.

The store description records the mode (``aufs-store.json`` ``"rootless"``) and stores of
the two kinds are never opened as each other.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from .kernel import in_user_namespace

__all__ = ["LINK_OWNER_PREFIX", "OVERRIDE_XATTR", "XATTR_PREFIX", "Owner", "unprivileged"]

OVERRIDE_XATTR = "user.containers.override_stat"
XATTR_PREFIX = "user.aufs.xattr."
LINK_OWNER_PREFIX = "user.aufs.lowner."
FORMAT = "override_stat"
"""The value of ``"rootless"`` in a rootless store's description."""


class Owner(NamedTuple):
    """The ids a rootless store's files really have on disk (exported as root's)."""

    uid: int
    gid: int


def unprivileged() -> bool:
    """True if this process cannot give files away (not root, or root of a user namespace,
    which owns only the ids mapped into it): new stores must be rootless."""
    return os.geteuid() != 0 or in_user_namespace()
