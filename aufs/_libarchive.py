"""libarchive, bound once: the only module that loads it or declares its functions.

:mod:`aufs.apply` (reading a layer tar) and :mod:`aufs.export` (writing one) ask :func:`load`
for the calls they make from Python and for the addresses of the per-entry calls that the C
fast paths (:mod:`aufs._fastpaths`) make, so neither they nor the C link against libarchive.

The library is the one python-libarchive-c finds (``libarchive.ffi.libarchive_path``), opened
through a private ``CDLL`` handle: its function objects are ours, so the prototypes set here
never change python-libarchive-c's, and return codes are checked by the callers (its own
bindings only log warnings). Loading is lazy (the first apply or export) and thread-safe.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Any, Optional, Sequence

__all__ = ["ARCHIVE_OK", "ARCHIVE_WARN", "Libarchive", "load"]

ARCHIVE_OK = 0
ARCHIVE_WARN = -20


class Libarchive:
    """The libarchive calls made from Python (named as in C without ``archive_``), and
    :meth:`addresses` of those the C fast paths call."""

    def __init__(self, path: str) -> None:
        self._lib = lib = ctypes.CDLL(path)
        self._addresses: dict[tuple[str, ...], dict[str, int]] = {}
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int

        def bind(name: str, restype: object, *argtypes: object) -> Any:
            func = getattr(lib, "archive_" + name)
            func.restype = restype
            func.argtypes = argtypes
            return func

        # shared
        self.errno = bind("errno", i, vp)
        self.error_string = bind("error_string", cp, vp)
        self.filter_bytes = bind("filter_bytes", ctypes.c_longlong, vp, i)
        self.entry_new = bind("entry_new", vp)
        self.entry_free = bind("entry_free", None, vp)
        # reading (aufs.apply)
        self.read_new = bind("read_new", vp)
        self.read_support_format_tar = bind("read_support_format_tar", i, vp)
        self.read_open_fd = bind("read_open_fd", i, vp, i, ctypes.c_size_t)
        self.read_free = bind("read_free", i, vp)
        # writing (aufs.export); callbacks go as addresses (a C function or a ctypes callback)
        self.write_new = bind("write_new", vp)
        self.write_set_format_pax = bind("write_set_format_pax", i, vp)
        self.write_set_options = bind("write_set_options", i, vp, cp)
        self.write_set_bytes_per_block = bind("write_set_bytes_per_block", i, vp, i)
        self.write_set_bytes_in_last_block = bind("write_set_bytes_in_last_block", i, vp, i)
        self.write_open = bind("write_open", i, vp, vp, vp, vp, vp)
        self.write_close = bind("write_close", i, vp)
        self.write_free = bind("write_free", i, vp)

    def addresses(self, names: Sequence[str]) -> dict[str, int]:
        """name -> address of ``archive_<name>``, for the C that calls libarchive by pointer."""
        key = tuple(names)
        found = self._addresses.get(key)
        if found is None:
            found = self._addresses[key] = {
                name: int(ctypes.cast(getattr(self._lib, "archive_" + name),
                                      ctypes.c_void_p).value or 0)
                for name in key}
        return found

    def message(self, archive: int) -> str:
        """libarchive's error message for the handle ``archive``."""
        raw: Optional[bytes] = self.error_string(archive)
        return os.fsdecode(raw) if raw else "unknown libarchive error"


_LOADED: Optional[Libarchive] = None
_LOCK = threading.Lock()


def load() -> Libarchive:
    """The bound library, loaded on first use."""
    global _LOADED
    with _LOCK:
        if _LOADED is None:
            import libarchive.ffi  # type: ignore[import-untyped]  # finds the shared library

            _LOADED = Libarchive(libarchive.ffi.libarchive_path)
        return _LOADED
