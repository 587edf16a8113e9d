"""Crash injection: run a scenario of store operations in a child, SIGKILL it, check the store.

The child is a ``fork`` of the caller (same mount namespace, so the caller sees and cleans up
what it mounted). It is killed in one of two ways:

* deterministically, at its K-th *event*: a profile hook counts every call made into or from
  ``aufs`` code (Python functions and builtins such as ``os.rename``) and sends SIGKILL to the
  process itself when the count reaches K. Sweeping K over the event count of a whole run
  kills the scenario between every pair of steps of the store's code;
* after a random delay, from the parent (catches what the hook cannot see: the C extractor
  halfway through an entry, a mount syscall in flight).

:func:`kill_recovery` then kills the recovery too (a new Driver's sweep, ``check(repair=True)``
and ``cleanup()``), so a crash during the clean-up of a crash is covered as well.

Before each step the child writes the step's index to a pipe and after it the index + 1, so
the parent knows that the store must be in the state after ``done`` steps or, if the step in
flight had finished but not yet said so, after ``done + 1``: never anything else.

:func:`verify_after_crash` checks everything the issue asks of a store after a crash and
returns a list of problems (empty: survived).
"""
from __future__ import annotations

import os
import pathlib
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aufs
from aufs import mounts

from .trees import (
    first_diff,
    fork_with_pipe,
    gzip_bytes,
    mounts_below,
    read_to_end,
    sample_layers,
    store_state,
    wait_or_kill,
)

StepFunction = Callable[[aufs.Driver, "Scratch"], object]
Step = tuple[str, StepFunction]


@dataclass
class Scratch:
    """Files the scenario reads and writes outside the store (tars in, diffs out)."""

    root: pathlib.Path
    tars: list[pathlib.Path] = field(default_factory=list)


def make_scratch(root: pathlib.Path) -> Scratch:
    root.mkdir(parents=True, exist_ok=True)
    scratch = Scratch(root)
    for i, data in enumerate(sample_layers()):
        path = root / f"layer{i}.tar"
        path.write_bytes(data)
        scratch.tars.append(path)
    return scratch


def _apply_path(layer: str, index: int) -> StepFunction:
    return lambda d, s: d.apply_diff(layer, s.tars[index])


def _apply_gzip(layer: str, index: int) -> StepFunction:
    return lambda d, s: d.apply_diff(layer, gzip_bytes(s.tars[index].read_bytes()))


def _diff(layer: str) -> StepFunction:
    def run(d: aufs.Driver, s: Scratch) -> None:
        with open(s.root / f"out-{os.getpid()}.tar", "wb") as out:
            d.diff(layer, out)
    return run


def _mount_cycle(layer: str) -> StepFunction:
    def run(d: aufs.Driver, s: Scratch) -> None:
        with d.mount(layer) as root:
            os.listdir(root)
    return run


# Every store operation, several on one layer, and the re-use of an id after its removal.
SCENARIO: list[Step] = [
    ("create base", lambda d, s: d.create("base")),
    ("apply base (tar file)", _apply_path("base", 0)),
    ("create app", lambda d, s: d.create("app", parent="base")),
    ("apply app (gzip bytes)", _apply_gzip("app", 1)),
    ("get/put app", _mount_cycle("app")),
    ("diff app", _diff("app")),
    ("changes app", lambda d, s: d.changes("app")),
    ("apply app update", _apply_path("app", 2)),
    ("get base (held)", lambda d, s: d.get("base")),
    ("cleanup (base held)", lambda d, s: d.cleanup()),
    ("get base again (held)", lambda d, s: d.get("base")),
    ("remove app", lambda d, s: d.remove("app")),
    ("put base", lambda d, s: d.put("base")),
    ("remove base", lambda d, s: d.remove("base")),
    ("create base again", lambda d, s: d.create("base")),
    ("apply base again", _apply_path("base", 0)),
]


def reference_states(home: pathlib.Path, scratch: Scratch, backend: str) -> list[dict[str, Any]]:
    """The store's state before the scenario and after each step, from an undisturbed run."""
    d = aufs.Driver(home, backend=backend)
    states = [store_state(home)]
    try:
        for _, step in SCENARIO:
            step(d, scratch)
            states.append(store_state(home))
    finally:
        d.cleanup()
    shutil.rmtree(home)
    return states


# ----------------------------------------------------------------------------- the child


def _count_events_and_die_at(kill_at: int) -> None:
    """Install a profile hook that SIGKILLs this process at its ``kill_at``-th aufs event."""
    count = [0]

    def in_aufs(frame: Any) -> bool:
        return frame is not None and str(frame.f_globals.get("__name__", "")).startswith("aufs")

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            if not (in_aufs(frame) or in_aufs(frame.f_back)):
                return
        elif event != "c_call" or not in_aufs(frame):
            return
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.setprofile(hook)


def _child(home: pathlib.Path, scratch: Scratch, backend: str, kill_at: int | None, progress: int,
           count_fd: int | None) -> None:
    """Run the scenario (never returns). With ``count_fd`` the event total is written there."""
    code = 0
    try:
        d = aufs.Driver(home, backend=backend)
        count = [0]
        if kill_at is not None:
            _count_events_and_die_at(kill_at)
        elif count_fd is not None:
            def counter(frame: Any, event: str, arg: Any) -> None:
                if event in ("call", "c_call"):
                    name = str(frame.f_globals.get("__name__", ""))
                    back = frame.f_back
                    if name.startswith("aufs") or (event == "call" and back is not None and str(
                            back.f_globals.get("__name__", "")).startswith("aufs")):
                        count[0] += 1
            sys.setprofile(counter)
        for index, (_, step) in enumerate(SCENARIO):
            os.write(progress, bytes([2 * index]))
            step(d, scratch)
            os.write(progress, bytes([2 * index + 1]))
        sys.setprofile(None)
        if count_fd is not None:
            os.write(count_fd, str(count[0]).encode())
    except BaseException:  # noqa: BLE001 - the child reports and exits, never returns to pytest
        sys.setprofile(None)
        import traceback

        traceback.print_exc()
        code = 3
    finally:
        os._exit(code)


def _recovery_child(home: pathlib.Path, backend: str, kill_at: int) -> None:
    """Open the store (its sweep), check(repair=True) and cleanup(), killed at event ``kill_at``."""
    code = 0
    try:
        _count_events_and_die_at(kill_at)
        d = aufs.Driver(home, backend=backend)
        d.check(repair=True)
        d.cleanup()
        sys.setprofile(None)
    except BaseException:  # noqa: BLE001 - the child reports and exits, never returns to pytest
        sys.setprofile(None)
        import traceback

        traceback.print_exc()
        code = 3
    finally:
        os._exit(code)


def kill_recovery(home: pathlib.Path, backend: str, kill_at: int) -> bool:
    """Run the recovery of a crashed store in a child and kill it too; True if it was killed."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        _recovery_child(home, backend, kill_at)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        raise RuntimeError("the recovery child failed (see its traceback above)")
    return os.WIFSIGNALED(status)


@dataclass
class Outcome:
    """What happened to one child: how it ended and how far it got."""

    killed: bool
    exit_code: int | None
    done: int
    in_flight: bool


def run_child(home: pathlib.Path, scratch: Scratch, backend: str, *, kill_at: int | None = None,
              kill_after: float | None = None, timeout: float = 60.0) -> Outcome:
    """Fork a child running the scenario; kill it at event ``kill_at`` or after ``kill_after`` s."""
    pid, read_fd = fork_with_pipe(lambda write_fd: _child(home, scratch, backend, kill_at, write_fd, None))
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    status = wait_or_kill(pid, timeout)
    if status is None:
        os.close(read_fd)
        raise TimeoutError(f"scenario child hung (kill_at={kill_at})")
    marks = read_to_end(read_fd)
    done = sum(1 for m in marks if m % 2 == 1)
    in_flight = bool(marks) and marks[-1] % 2 == 0
    assert status is not None
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return Outcome(killed, os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, done, in_flight)


def count_events(home: pathlib.Path, scratch: Scratch, backend: str) -> int:
    """The number of events of one undisturbed run of the scenario (the range of ``kill_at``)."""
    read_fd, write_fd = os.pipe()
    count_r, count_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        os.close(count_r)
        _child(home, scratch, backend, None, write_fd, count_w)
    os.close(write_fd)
    os.close(count_w)
    _, status = os.waitpid(pid, 0)
    total = os.read(count_r, 64)
    os.close(read_fd)
    os.close(count_r)
    if status != 0 or not total:
        raise RuntimeError(f"undisturbed scenario run failed (status {status})")
    aufs.Driver(home, backend=backend).cleanup()
    shutil.rmtree(home)
    return int(total)


# ----------------------------------------------------------------------------- the checks

# What a store killed mid-operation may legitimately show to check() after it reopens: the
# union a dead holder had mounted (adopted by the next get, or unmounted by cleanup), its
# reference table, the empty mountpoint of a get killed before it mounted (the sweep leaves
# those of live layers to their get), and the lock file of a layer removed before its lock
# was deleted.
TOLERATED_AFTER_CRASH = {"stale-mount", "stale-references", "stale-state", "stale-mountpoint"}


def verify_after_crash(home: pathlib.Path, backend: str, states: list[dict[str, Any]], outcome: Outcome,
                       *, check_reuse: bool = True) -> list[str]:
    """Every property the store must have after the child died; returns the problems found."""
    problems: list[str] = []
    allowed = [outcome.done] + ([outcome.done + 1] if outcome.in_flight and outcome.done + 1 < len(states) else [])
    try:
        d = aufs.Driver(home, backend=backend)
    except Exception as exc:  # noqa: BLE001 - that is the finding
        return [f"reopening the store failed: {exc!r}"]
    state = store_state(home)
    if not any(state == states[i] for i in allowed):
        diffs = [_state_diff(state, states[i]) for i in allowed]
        problems.append(f"store is in no allowed state (after step {allowed}): {diffs}")
    for layer_id in d.layers():
        if not d.exists(layer_id):
            problems.append(f"layers() lists {layer_id!r}, which does not exist")
    tmp_left = os.listdir(home / "tmp")
    if tmp_left:
        problems.append(f"debris left in tmp/ after reopening: {tmp_left}")
    report = d.check()
    unexpected = [f for f in report.findings if f.kind not in TOLERATED_AFTER_CRASH
                  and not _is_refs_tmp_of_live_layer(f.path, d)]
    if unexpected:
        problems.append(f"check() after reopening: {[(f.kind, f.path) for f in unexpected]}")
    repaired = d.check(repair=True)
    if not repaired.ok:
        problems.append(f"check(repair=True) left {repaired.unrepaired}")
    again = d.check()
    if not again.clean:
        problems.append(f"check() after repair still finds {again.findings}")
    if mounts_below(home):
        problems.append(f"mounts left after check(repair=True): {mounts_below(home)}")
    # a mount of the dead process, if any, is still usable: get adopts or mounts afresh
    for layer_id in d.layers():
        with d.mount(layer_id) as root:
            os.listdir(root)
    d.cleanup()
    if mounts_below(home):
        problems.append(f"mounts left after cleanup(): {mounts_below(home)}")
    if check_reuse:
        problems += _verify_reuse(d)
    return problems


def _is_refs_tmp_of_live_layer(path: str, d: aufs.Driver) -> bool:
    """A reference table's ``.tmp`` file of an existing layer: written under the layer lock with
    a fixed name, the next save of that table overwrites it, so a kill in ``save`` leaves this one
    harmless file until then (the sweep only removes those of absent layers)."""
    name = os.path.basename(path)
    return name.endswith(".refs.tmp") and d.exists(name[: -len(".refs.tmp")])


def _state_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    if set(a) != set(b):
        return f"layers {sorted(a)} != {sorted(b)}"
    for key in a:
        if a[key][0] != b[key][0]:
            return f"{key}: metadata {a[key][0]} != {b[key][0]}"
        if a[key][1] != b[key][1]:
            return f"{key}: {first_diff(a[key][1] or {}, b[key][1] or {})}"
    return "equal"


def _verify_reuse(d: aufs.Driver) -> list[str]:
    """Every surviving id can be removed and created again, and the new layer mounts."""
    problems = []
    present = d.layers()
    parents = {i: d.parent(i) for i in present}

    def depth(layer_id: str | None) -> int:
        return 0 if layer_id is None else 1 + depth(parents.get(layer_id))

    order = sorted(present, key=depth, reverse=True)
    try:
        for layer_id in order:
            d.remove(layer_id)
        if d.layers():
            problems.append(f"layers left after removing all: {d.layers()}")
        for layer_id in reversed(order):
            d.create(layer_id, parent=parents[layer_id])
        for layer_id in order:
            with d.mount(layer_id) as root:
                os.listdir(root)
    except Exception as exc:  # noqa: BLE001 - that is the finding
        problems.append(f"re-using the ids {order} failed: {exc!r}")
    d.cleanup()
    if not d.check().clean:
        problems.append(f"check() after re-use: {d.check()}")
    return problems


def kill_points(total: int, count: int, rng: random.Random) -> list[int]:
    """``count`` event numbers spread over ``1..total`` (evenly, each jittered within its slot)."""
    if count >= total:
        return list(range(1, total + 1))
    slot = total / count
    return [min(total, 1 + int(i * slot + rng.random() * slot)) for i in range(count)]


def scratch_dir() -> pathlib.Path:
    return pathlib.Path(tempfile.mkdtemp(prefix="aufs-crash-"))


__all__ = [
    "SCENARIO",
    "TOLERATED_AFTER_CRASH",
    "Outcome",
    "Scratch",
    "count_events",
    "kill_points",
    "kill_recovery",
    "make_scratch",
    "mounts",
    "reference_states",
    "run_child",
    "verify_after_crash",
]
