"""Servers that let container engines use an aufs store (``aufs serve ENGINE``)."""
from __future__ import annotations
