"""Who owns a piece of store state: a process identity that survives pid reuse.

A pid alone is not an identity (pids are recycled), so an owner is the pid plus the process's
start time in clock ticks since boot (field 22 of ``/proc/PID/stat``). The store writes owners
into temporary names and reference tables, and treats an owner whose process is gone (or a
zombie) as dead: its temporary entries are debris and its references are void.
"""
from __future__ import annotations

import os
from typing import NamedTuple

__all__ = ["ProcessToken", "process_alive", "process_start_time"]


def _read_stat(pid: int, proc: str) -> tuple[str, int] | None:
    """(state letter, start time) of ``pid`` from ``PROC/PID/stat``, or None if there is no such process."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name may contain spaces and parentheses: the fields start after the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode("ascii"), int(fields[19])


def process_start_time(pid: int, proc: str = "/proc") -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    st = _read_stat(pid, proc)
    return None if st is None else st[1]


def process_alive(pid: int, start: int, proc: str = "/proc") -> bool:
    """True if the process ``pid`` that started at ``start`` still runs (zombies count as dead)."""
    st = _read_stat(pid, proc)
    return st is not None and st[1] == start and st[0] not in ("Z", "X")


class ProcessToken(NamedTuple):
    """A process identity: ``pid`` and its ``start`` time. ``str()`` gives ``PID-START``."""

    pid: int
    start: int

    def __str__(self) -> str:
        return f"{self.pid}-{self.start}"

    @classmethod
    def current(cls) -> ProcessToken:
        """The calling process (checked per call: a forked child is a different owner)."""
        pid = os.getpid()
        cached = _CURRENT.get(pid)
        if cached is None:
            start = process_start_time(pid)
            assert start is not None
            cached = _CURRENT[pid] = cls(pid, start)
        return cached

    @classmethod
    def parse(cls, text: str) -> ProcessToken | None:
        """The token written as ``PID-START`` (a prefix of ``text`` up to a ``:``), or None."""
        pid_text, _, start_text = text.split(":", 1)[0].partition("-")
        if not (pid_text.isdigit() and start_text.isdigit()):
            return None
        return cls(int(pid_text), int(start_text))

    def alive(self) -> bool:
        """True while the process this token names is running."""
        return process_alive(self.pid, self.start)


# pid -> its token; a process's start time never changes, so this saves a /proc read per call
_CURRENT: dict[int, ProcessToken] = {}
