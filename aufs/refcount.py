"""Reference counts of layer mounts, persisted in the store and shared by every process.

A layer's table (``state/ID.refs``) maps each *holder* to the number of ``get`` calls it has
not yet matched with a ``put``. A holder is one ``Driver`` object: ``PID-START:NONCE``. Keeping
counts per holder is what makes a stray ``put`` harmless: a holder can only give back what it
took, so it can never unmount a mount that another holder still uses. Holders whose process
has died are dropped whenever the table is read, so a crash never pins a mount forever (and
a mount left behind by a dead process is adopted by the next ``get``).

Callers must hold the layer's lock (:mod:`aufs.locks`) around load-modify-save; saving
replaces the file by rename, so a reader never sees half a table.
"""
from __future__ import annotations

import json
import os
import pathlib

from .owners import ProcessToken

__all__ = ["RefTable"]


class RefTable:
    """The reference counts of one layer's mount: ``holders`` maps holder -> count (> 0)."""

    def __init__(self, path: pathlib.Path, holders: dict[str, int]) -> None:
        self.path = path
        self.holders = holders

    @classmethod
    def load(cls, path: pathlib.Path) -> RefTable:
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
            if holder.startswith("persistent:") and isinstance(count, int) and count > 0:
                holders[holder] = count  # TEMPORARY (serve-docker): issue 13's persistent holders
                continue
            token = ProcessToken.parse(holder)
            if token is not None and isinstance(count, int) and count > 0 and token.alive():
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
        if not self.holders:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            json.dump({"holders": self.holders}, f)
        os.replace(tmp, self.path)
