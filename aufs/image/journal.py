"""Import journals: which layers an unfinished import created, so that a crash leaves none behind.

A layer that ``import_image`` creates is empty until its blob has been applied. If the process
dies in between, the store still shows the layer (the store's own crash safety covers each
``create`` and ``apply_diff``, not the pair), and a later import would find it under its
chainID and trust it. So before creating anything an import writes the ids it is about to
create into a journal, ``HOME/image-imports/OWNER.RAND.json`` (OWNER = pid and start time, see
:mod:`aufs.owners`), and deletes the journal once the layers are complete or removed again.

Every import first *recovers*: the layers listed by the journal of a dead process are removed
(children first) and the journal deleted. Layers listed by the journal of a *live* process
are being imported right now: another import that needs them waits for that journal to go.
"""
from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LayerInUse, LayerNotFound
from ..owners import ProcessToken

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Driver

from ..layout import IMPORTS_DIR_NAME

__all__ = ["JOURNAL_DIR", "ImportJournal", "busy_layers", "recover", "wait_for"]

JOURNAL_DIR = IMPORTS_DIR_NAME


def _journal_dir(driver: Driver) -> Path:
    return Path(driver.layout.imports_dir)


def _read(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    layers = data.get("layers") if isinstance(data, dict) else None
    return [str(x) for x in layers] if isinstance(layers, list) else []


def _journals(driver: Driver) -> list[tuple[Path, ProcessToken | None]]:
    try:
        names = sorted(os.listdir(_journal_dir(driver)))
    except FileNotFoundError:
        return []
    return [
        (_journal_dir(driver) / name, ProcessToken.parse(name.split(".", 1)[0]))
        for name in names
        if name.endswith(".json")
    ]


class ImportJournal:
    """The journal of one import in this process; a context manager that deletes it on exit."""

    def __init__(self, driver: Driver) -> None:
        directory = _journal_dir(driver)
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / f"{ProcessToken.current()}.{uuid.uuid4().hex[:8]}.json"

    def record(self, layer_ids: list[str]) -> None:
        """Write the ids this import will create (before creating them): atomically, durably."""
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w") as f:
            json.dump({"layers": layer_ids}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    def __enter__(self) -> ImportJournal:  # noqa: PYI034 - no typing_extensions dependency
        return self

    def __exit__(self, *exc: object) -> None:
        for path in (self.path, self.path.with_suffix(".tmp")):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def recover(driver: Driver) -> list[str]:
    """Remove the layers of imports whose process died; return the ids removed."""
    removed: list[str] = []
    for path, owner in _journals(driver):
        if owner is not None and owner.alive():
            continue
        for layer_id in reversed(_read(path)):  # children before parents
            try:
                driver.remove(layer_id)
                removed.append(layer_id)
            except LayerNotFound:
                pass
            except LayerInUse as exc:  # someone built on the half-imported layer: keep it
                warnings.warn(f"aufs: layer {layer_id} of an interrupted import is in use: {exc}", stacklevel=2)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    return removed


def busy_layers(driver: Driver) -> set[str]:
    """Ids listed by the journals of imports running now (other processes, or other threads)."""
    busy: set[str] = set()
    for path, owner in _journals(driver):
        if owner is not None and owner.alive():
            busy.update(_read(path))
    return busy


def wait_for(driver: Driver, layer_ids: set[str], *, timeout: float = 3600.0) -> None:
    """Wait until no running import lists any of ``layer_ids`` (recovering dead ones)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while busy_layers(driver) & layer_ids:
        if time.monotonic() > deadline:
            raise TimeoutError(f"layers {sorted(layer_ids)[:3]}... are still being imported by another process")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
        recover(driver)
