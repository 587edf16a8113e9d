"""Real daemons for the engine tests: containerd with a private config, and `aufs serve containerd`.

Both run as child processes of the test session, inside its private mount namespace, with every
path (root, state, sockets, the store) under the test's tmpfs directory. ``stop()`` is always
safe to call again, and the fixtures call it in their finalizers.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PLUGIN = "aufs-store"
"""The proxy plugin's name: Debian's containerd has a built-in ``aufs`` snapshotter, and a
proxy plugin of the same name makes containerd 1.6 panic at start ("id already registered")."""

REPO = Path(__file__).resolve().parents[2]


def _wait_for_socket(path: Path, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30.0) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while not accepts(path):
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not create {path} in {timeout}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.02)


def accepts(path: Path) -> bool:
    """True if something listens on the socket ``path`` (a stale socket file does not count)."""
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class SnapshotServer:
    """``python -m aufs --home HOME serve containerd --socket SOCKET --debug`` as a child process."""

    def __init__(self, home: Path, socket: Path, log: Path) -> None:
        self.home, self.socket, self.log = home, socket, log
        self.proc: subprocess.Popen | None = None  # type: ignore[type-arg]

    def start(self) -> SnapshotServer:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aufs", "--home", str(self.home), "--backend", "overlay",
                 "serve", "containerd", "--socket", str(self.socket), "--debug"],
                stdout=log, stderr=log, env=env, cwd=str(REPO))
        _wait_for_socket(self.socket, self.proc, "aufs serve containerd", self.log)
        return self

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it was not running)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("aufs serve containerd ignored SIGTERM for 30 s") from None

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up (its socket file stays)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()


class Containerd:
    """containerd with root, state, sockets under ``base``; the CRI plugin off; our proxy plugin on."""

    def __init__(self, base: Path, snapshot_socket: Path, namespace: str = "aufs-tests") -> None:
        self.base = base
        self.address = base / "containerd.sock"
        self.namespace = namespace
        self.log = base / "containerd.log"
        self.config = base / "config.toml"
        self.config.write_text(
            "version = 2\n"
            f'root = "{base}/root"\n'
            f'state = "{base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{base}/containerd.sock.ttrpc"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{base}/opt"\n'
            f"[proxy_plugins.{PLUGIN}]\n"
            '  type = "snapshot"\n'
            f'  address = "{snapshot_socket}"\n'
        )
        self.proc: subprocess.Popen | None = None  # type: ignore[type-arg]

    def start(self) -> Containerd:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(self.config)], stdout=log, stderr=log)
        _wait_for_socket(self.address, self.proc, "containerd", self.log)
        return self

    def ctr(self, *args: str, check: bool = True, timeout: float = 120, text: bool = True) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        argv = ["ctr", "--address", str(self.address), "--namespace", self.namespace, *args]
        proc = subprocess.run(argv, capture_output=True, text=text, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            err = proc.stderr if text else proc.stderr.decode(errors="replace")
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{err}\n"
                                 f"containerd log:\n{self.log.read_text()[-3000:]}")
        return proc

    def remove_everything(self) -> None:
        """Kill tasks, delete containers: what must go before containerd stops (shims outlive it)."""
        listed = self.ctr("containers", "ls", "-q", check=False)
        for container in listed.stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", container, check=False)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                deleted = self.ctr("tasks", "delete", container, check=False)
                if deleted.returncode == 0 or "not found" in deleted.stderr:
                    break
                time.sleep(0.05)  # the task is still dying
            self.ctr("containers", "delete", container, check=False)

    def restart(self) -> None:
        """Stop containerd (containers and their snapshots stay, no task may run) and start it."""
        proc, self.proc = self.proc, None
        assert proc is not None
        proc.terminate()
        proc.wait(timeout=30)
        self.address.unlink(missing_ok=True)
        self.start()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        self.remove_everything()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
