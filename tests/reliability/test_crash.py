"""Crash injection: a process killed (SIGKILL) anywhere in create / apply_diff / get / put / diff /
changes / remove leaves a store that reopens cleanly, shows every layer absent, as it was or
complete, lists no debris, lets every id be removed and created again, and that
``cleanup()`` and ``check(repair=True)`` bring back to a clean state.

The suite kills the scenario at a few dozen event points spread over a whole run;
``tools/crashloop.py`` kills it at every point (see RELIABILITY.md).
"""
from __future__ import annotations

from pathlib import Path
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import aufs

from . import crashkit as ck
from .trees import build_tar, mounts_below, snapshot

ROOT = str(pathlib.Path(__file__).resolve().parents[2])

# kill points per backend in the fast subset (fuse-overlayfs mounts cost ~10x more)
FAST_POINTS = {"overlay": 60, "fuse-overlayfs": 12}


def _sweep_kills(ramdir: pathlib.Path, backend: str, points: int, seed: int) -> dict[str, Any]:
    scratch = ck.make_scratch(ramdir / "scratch")
    home = ramdir / "store"
    states = ck.reference_states(home, scratch, backend)
    total = ck.count_events(home, scratch, backend)
    failures: list[str] = []
    survived = 0
    for kill_at in ck.kill_points(total, points, random.Random(seed)):
        outcome = ck.run_child(home, scratch, backend, kill_at=kill_at)
        problems = ck.verify_after_crash(home, backend, states, outcome)
        if problems:
            failures.append(f"kill at event {kill_at}/{total} ({outcome}): {problems}")
        elif outcome.killed:
            survived += 1
        aufs.Driver(home, backend=backend).cleanup()
        shutil.rmtree(home)
    return {"total": total, "survived": survived, "failures": failures}


def test_killed_at_spread_event_points(ramdir: pathlib.Path, backend_name: str) -> None:
    result = _sweep_kills(ramdir, backend_name, FAST_POINTS[backend_name], seed=6)
    assert not result["failures"], "\n".join(result["failures"][:5])
    assert result["survived"] >= FAST_POINTS[backend_name] - 1  # the last point may fall after the end


def test_killed_again_while_recovering(ramdir: pathlib.Path) -> None:
    """The process that opens, repairs and cleans up a crashed store is killed too."""
    scratch = ck.make_scratch(ramdir / "scratch")
    home = ramdir / "store"
    states = ck.reference_states(home, scratch, "overlay")
    total = ck.count_events(home, scratch, "overlay")
    rng = random.Random(9)
    failures = []
    for kill_at in ck.kill_points(total, 25, rng):
        outcome = ck.run_child(home, scratch, "overlay", kill_at=kill_at)
        ck.kill_recovery(home, "overlay", rng.randrange(1, 400))
        problems = ck.verify_after_crash(home, "overlay", states, outcome, check_reuse=False)
        if problems:
            failures.append(f"kill at {kill_at}/{total} ({outcome}): {problems}")
        aufs.Driver(home, backend="overlay").cleanup()
        shutil.rmtree(home)
    assert not failures, "\n".join(failures[:5])


def test_killed_after_random_delays(ramdir: pathlib.Path) -> None:
    """Kills from outside, at random times: also lands inside C calls (extraction, mounts)."""
    scratch = ck.make_scratch(ramdir / "scratch")
    home = ramdir / "store"
    states = ck.reference_states(home, scratch, "overlay")
    start = time.monotonic()
    ck.run_child(home, scratch, "overlay")
    duration = time.monotonic() - start
    aufs.Driver(home, backend="overlay").cleanup()
    shutil.rmtree(home)
    rng = random.Random(66)
    failures = []
    for _ in range(20):
        outcome = ck.run_child(home, scratch, "overlay", kill_after=rng.uniform(0, duration))
        problems = ck.verify_after_crash(home, "overlay", states, outcome, check_reuse=False)
        if problems:
            failures.append(f"{outcome}: {problems}")
        aufs.Driver(home, backend="overlay").cleanup()
        shutil.rmtree(home)
    assert not failures, "\n".join(failures[:5])


_APPLY_LOOP = """
import sys, aufs
d = aufs.Driver(sys.argv[1], backend="overlay")
print("ready", flush=True)
while True:
    for tar in sys.argv[2:]:
        d.apply_diff("victim", tar)
"""


def test_separate_process_killed_while_applying_big_layers(ramdir: pathlib.Path) -> None:
    """A real interpreter (not a fork) applying layers in a loop, killed at random moments:
    the victim layer always equals one of the layers' results, never a mix."""
    home = ramdir / "store"
    one = build_tar([("dir", "d")] + [("file", f"d/f{i:03d}", bytes([i]) * 20_000) for i in range(150)])
    two = build_tar([("file", "d/.wh..wh..opq", b"")] + [("file", f"d/g{i:03d}", b"2" * 30_000) for i in range(150)])
    tars = []
    for name, data in (("one.tar", one), ("two.tar", two)):
        (ramdir / name).write_bytes(data)
        tars.append(str(ramdir / name))
    d = aufs.Driver(home, backend="overlay")
    d.create("victim")
    expected = []
    for tar in tars:  # the layer after applying one.tar, two.tar, one.tar...: all the states it can be in
        d.apply_diff("victim", tar)
        expected.append(snapshot(Path(d.diff_dir("victim")), times=False))
    d.apply_diff("victim", tars[0])
    expected.append(snapshot(Path(d.diff_dir("victim")), times=False))
    env = dict(os.environ, PYTHONPATH=ROOT)
    rng = random.Random(7)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_APPLY_LOOP), str(home), *tars],
                                env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        again = aufs.Driver(home, backend="overlay")
        assert os.listdir(home / "tmp") == []
        state = snapshot(Path(again.diff_dir("victim")), times=False)
        assert state in expected
        assert again.check().clean, str(again.check())
    assert mounts_below(home) == []


def _open_new_store_and_die_at(home: pathlib.Path, kill_at: int) -> bool:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ck._count_events_and_die_at(kill_at)
            aufs.Driver(home, backend="overlay")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


def test_killed_while_creating_a_new_store(ramdir: pathlib.Path) -> None:
    """Killed while the very first Driver lays out a new store: the next one opens it."""
    kills = 0
    for kill_at in range(1, 400, 3):
        home = ramdir / f"store{kill_at}"
        if not _open_new_store_and_die_at(home, kill_at):
            break  # the open finished before the kill point: all points covered
        kills += 1
        d = aufs.Driver(home, backend="overlay")
        assert d.check().clean, str(d.check())
        d.create("x")
        assert d.layers() == ["x"]
    assert kills > 10
