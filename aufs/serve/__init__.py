"""Servers that let container engines use a store: ``aufs serve ENGINE`` (one module per engine)."""
from __future__ import annotations
