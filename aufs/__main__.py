"""``python -m aufs``: the same command as ``aufs`` (see :mod:`aufs.cli`)."""
from __future__ import annotations

from .cli import console_main

if __name__ == "__main__":
    console_main()
