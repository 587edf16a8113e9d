"""Signals. During a long apply_diff (a large layer fed slowly through a pipe) a process is
interrupted by SIGINT, SIGTERM with the default action, or SIGTERM turned into SystemExit as
daemons do: it ends promptly, the layer is exactly as it was, and nothing is left behind (at
once when Python unwinds, after the next open's sweep when the kernel killed it). And Ctrl-C
in a loop of ``with driver.mount(...)`` leaves no mount and no reference behind."""
from __future__ import annotations

from pathlib import Path
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import aufs

from .trees import build_tar, gzip_bytes, mounts_below, snapshot

ROOT = str(pathlib.Path(__file__).resolve().parents[2])

_APPLY_FROM_STDIN = """
import os, signal, sys
import aufs
if sys.argv[2] == "handled":
    def stop(signum, frame):
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, stop)
d = aufs.Driver(sys.argv[1], backend="overlay")
print("ready", flush=True)
d.apply_diff("victim", sys.stdin.buffer)
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def big_layer() -> bytes:
    # ~24 MiB in 384 entries: long enough to be interrupted midway when fed slowly
    return build_tar([("dir", "data")] + [("file", f"data/{i:04d}", bytes([i % 256]) * 65536) for i in range(384)])


def _feed(pipe: subprocess.IO[bytes], data: bytes, chunk: int, pause: float) -> None:
    try:
        for at in range(0, len(data), chunk):
            pipe.write(data[at:at + chunk])
            pipe.flush()
            time.sleep(pause)
        pipe.close()
    except (BrokenPipeError, ValueError, OSError):
        pass  # the applier is gone: that is the point


@pytest.mark.parametrize("how,compressed", [
    ("SIGINT", False), ("SIGINT", True), ("SIGTERM", False), ("SIGTERM-handled", False), ("SIGTERM-handled", True),
])
def test_signal_during_a_slow_apply_leaves_the_layer_as_it_was(
        ramdir: pathlib.Path, big_layer: bytes, how: str, compressed: bool) -> None:
    home = ramdir / "store"
    d = aufs.Driver(home, backend="overlay")
    d.create("victim")
    d.apply_diff("victim", build_tar([("dir", "data"), ("file", "data/0000", b"old"), ("file", "keep", b"k")]))
    before = snapshot(Path(d.diff_dir("victim")))
    data = gzip_bytes(big_layer) if compressed else big_layer
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_APPLY_FROM_STDIN), str(home),
         "handled" if how == "SIGTERM-handled" else "default"],
        env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    chunks = 200
    feeder = threading.Thread(target=_feed, args=(proc.stdin, data, len(data) // chunks + 1, 0.01), daemon=True)
    feeder.start()
    deadline = time.monotonic() + 20
    while not any(n.startswith("apply.") for n in os.listdir(home / "tmp")):  # its staging clone
        assert time.monotonic() < deadline and proc.poll() is None, "the apply never started"
        time.sleep(0.01)
    time.sleep(0.4)  # well into the archive (it takes ~2 s to arrive)
    assert feeder.is_alive(), "the whole archive was sent before the signal"
    proc.send_signal(signal.SIGINT if how == "SIGINT" else signal.SIGTERM)
    # wait without closing its stdin (communicate() would): on a loaded machine the closed
    # pipe could reach the extractor, as a truncated archive, before the signal's handler runs
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{how}: the applier did not stop within 30 s")
    assert proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    feeder.join(5)
    assert b"finished" not in out
    if how == "SIGTERM":
        assert proc.returncode == -signal.SIGTERM
    else:
        # Python unwound: the apply's own cleanup ran, no sweep needed
        assert proc.returncode != 0
        assert (b"KeyboardInterrupt" in err) if how == "SIGINT" else (proc.returncode == 143), err[-2000:]
        assert os.listdir(home / "tmp") == [], "the interrupted apply left its staging clone"
    again = aufs.Driver(home, backend="overlay")
    assert os.listdir(home / "tmp") == []
    assert snapshot(Path(again.diff_dir("victim"))) == before
    assert again.check().clean, str(again.check())
    assert mounts_below(home) == []
    again.apply_diff("victim", big_layer)  # and the layer takes the full apply afterwards
    assert len(os.listdir(Path(again.diff_dir("victim")) / "data")) == 384


_MOUNT_LOOP = """
import sys, aufs
d = aufs.Driver(sys.argv[1], backend=sys.argv[2])
print("ready", flush=True)
while True:
    with d.mount("app") as root:
        pass
"""


@pytest.mark.parametrize("backend", ["overlay", "fuse-overlayfs"])
def test_sigint_during_mount_cycles_leaves_nothing(ramdir: pathlib.Path, backend: str) -> None:
    """Ctrl-C in a program that mounts and unmounts in a loop (``with driver.mount(...)``):
    Python unwinds, so whatever get or put was doing must be finished or undone: no mount, no
    reference, no mountpoint left behind (a KeyboardInterrupt is no crash)."""
    if aufs.store.BACKENDS[backend].unavailable_reason() is not None:
        pytest.skip(f"{backend} is unavailable")
    home = ramdir / "store"
    d = aufs.Driver(home, backend=backend)
    d.create("base")
    d.create("app", parent="base")
    rng = random.Random(12)
    left = []
    for i in range(12):
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_MOUNT_LOOP), str(home), backend],
                                env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.02, 0.25))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert b"KeyboardInterrupt" in err, err[-2000:]
        report = d.check(repair=True)
        if report.findings or mounts_below(home):
            left.append(f"interrupt {i}: {[(f.kind, f.path) for f in report.findings]} "
                        f"(interrupted in: {err.decode(errors='replace').splitlines()[-3:]})")
    assert not left, "\n".join(left)
