"""Reference counts of layer mounts, persisted in the store and shared by every process.

A layer's table (``state/ID.refs``) maps each *holder* to the number of ``get`` calls it has
not yet matched with a ``put``. A holder is one ``Driver`` object, ``PID-START:NONCE``, or a
*persistent holder* ``@NAME`` (``Driver(holder=NAME)``) whose references outlive any process. Keeping
counts per holder is what makes a stray ``put`` harmless: a holder can only give back what it
took, so it can never unmount a mount that another holder still uses. Holders whose process
has died are dropped whenever the table is read (persistent holders never are), so a crash never pins a mount forever (and
a mount left behind by a dead process is adopted by the next ``get``).

Callers must hold the layer's lock (:mod:`aufs.locks`) around load-modify-save; saving
replaces the file by rename, so a reader never sees half a table.
"""
from __future__ import annotations

import json
import os

from .layout import Layout
from .owners import ProcessToken

__all__ = ["PERSISTENT_PREFIX", "RefTable", "holder_alive", "save_state"]


def save_state(path: str, value: object) -> None:
    """Replace the small JSON state file ``path`` with ``value`` (through a ``.tmp`` sibling and
    a rename: readers see the old or the new whole), or delete it for None. Not fsync'd: state
    that a crash loses is rebuilt from the live processes and mounts."""
    if value is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    tmp = Layout.tmp_sibling(path)
    with open(tmp, "w", encoding="ascii") as f:
        json.dump(value, f)
    os.replace(tmp, path)


PERSISTENT_PREFIX = "@"
"""Marks a persistent holder's name in a reference table."""


def holder_alive(holder: str) -> bool:
    """True for a persistent holder and for a holder whose process still runs."""
    if holder.startswith(PERSISTENT_PREFIX):
        return len(holder) > 1
    token = ProcessToken.parse(holder)
    return token is not None and token.alive()


class RefTable:
    """The reference counts of one layer's mount: ``holders`` maps holder -> count (> 0)."""

    def __init__(self, path: str | os.PathLike[str], holders: dict[str, int]) -> None:
        self.path = os.fspath(path)
        self.holders = holders

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RefTable:
        """Read the table at ``path`` (empty if absent or unreadable), without dead holders."""
        try:
            with open(path, "rb") as f:
                raw = json.loads(f.read() or b"{}")
        except FileNotFoundError:
            raw = {}
        except ValueError:
            raw = {}  # a torn write is impossible (rename), but never let junk wedge a layer
        holders: dict[str, int] = {}
        for holder, count in dict(raw.get("holders", {})).items():
            if isinstance(count, int) and count > 0 and holder_alive(holder):
                holders[holder] = count
        return cls(path, holders)

    @property
    def total(self) -> int:
        """All references to the mount, from every live holder."""
        return sum(self.holders.values())

    def count(self, holder: str) -> int:
        return self.holders.get(holder, 0)

    def take(self, holder: str) -> None:
        self.holders[holder] = self.holders.get(holder, 0) + 1

    def give_back(self, holder: str) -> bool:
        """Drop one reference of ``holder``; False (and no change) if it holds none."""
        count = self.holders.get(holder, 0)
        if count <= 0:
            return False
        if count == 1:
            del self.holders[holder]
        else:
            self.holders[holder] = count - 1
        return True

    def save(self) -> None:
        """Write the table (or delete the file when nobody holds a reference)."""
        save_state(self.path, {"holders": self.holders} if self.holders else None)
