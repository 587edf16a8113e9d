"""containerd's filter language, as the Snapshots ``List`` RPC receives it.

A request carries filter strings; a snapshot is listed if it matches *any* of them (none: all).
One filter is a comma-separated list of selectors that must *all* match. A selector is a field
path, optionally followed by an operator and a value::

    name==base               parent!=""          kind==committed
    labels."containerd.io/gc.root"               labels.l~=^v[0-9]

``==`` compares, ``!=`` negates, ``~=`` searches a regular expression, and a bare field path
matches when the field is present and not empty. Field path components and values may be
double-quoted (with backslash escapes). Malformed filters raise :class:`FilterSyntaxError`
(a ``ValueError``), which the server reports as InvalidArgument.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

from ..errors import AufsError

__all__ = ["FilterSyntaxError", "Selector", "compile_filters", "parse_filter"]

Lookup = Callable[[Sequence[str]], Optional[str]]
"""Field path -> value of one snapshot (None: the field is absent)."""

_FIELD_CHARS = re.compile(r"[A-Za-z0-9_]+")
_OPERATORS = ("==", "!=", "~=")


class FilterSyntaxError(AufsError, ValueError):
    """A List filter that does not parse (says where)."""


class Selector(NamedTuple):
    """``path`` (components), and ``operator``/``value`` (both empty for a presence test)."""

    path: tuple[str, ...]
    operator: str
    value: str

    def matches(self, lookup: Lookup) -> bool:
        found = lookup(self.path)
        if self.operator == "":
            return bool(found)
        if self.operator == "==":
            return (found or "") == self.value
        if self.operator == "!=":
            return (found or "") != self.value
        return found is not None and re.search(self.value, found) is not None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> FilterSyntaxError:
        return FilterSyntaxError(f"filter {self.text!r}: {what} at offset {self.pos}")

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def quoted(self) -> str:
        # a JSON string literal is the same as a Go quoted string for every escape clients send
        end = self.pos + 1
        while end < len(self.text):
            if self.text[end] == "\\":
                end += 2
                continue
            if self.text[end] == '"':
                break
            end += 1
        else:
            raise self.fail("unterminated quoted string")
        literal = self.text[self.pos:end + 1]
        try:
            value = json.loads(literal)
        except ValueError:
            raise self.fail("bad escape in quoted string") from None
        self.pos = end + 1
        return str(value)

    def field(self) -> str:
        if self.peek('"'):
            return self.quoted()
        match = _FIELD_CHARS.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected a field name")
        self.pos = match.end()
        return match.group()

    def value(self) -> str:
        if self.peek('"'):
            return self.quoted()
        end = self.text.find(",", self.pos)
        end = len(self.text) if end < 0 else end
        raw = self.text[self.pos:end].strip()
        self.pos = end
        return raw


def parse_filter(text: str) -> list[Selector]:
    """The selectors of one filter string (all must match)."""
    scan = _Scanner(text)
    selectors: list[Selector] = []
    while True:
        path = [scan.field()]
        while scan.peek("."):
            scan.pos += 1
            path.append(scan.field())
        operator = value = ""
        for candidate in _OPERATORS:
            if scan.peek(candidate):
                operator = candidate
                scan.pos += len(candidate)
                value = scan.value()
                break
        if operator == "~=":
            try:
                re.compile(value)
            except re.error as exc:
                raise scan.fail(f"bad regular expression {value!r} ({exc})") from None
        selectors.append(Selector(tuple(path), operator, value))
        if scan.at_end():
            return selectors
        if not scan.peek(","):
            raise scan.fail("expected ',' or an operator (==, !=, ~=)")
        scan.pos += 1


def compile_filters(filters: Sequence[str]) -> Callable[[Lookup], bool]:
    """A predicate over a snapshot's field lookup: true if any filter matches (or none given)."""
    parsed = [parse_filter(f) for f in filters if f.strip()]
    if not parsed:
        return lambda lookup: True
    return lambda lookup: any(all(s.matches(lookup) for s in selectors) for selectors in parsed)
