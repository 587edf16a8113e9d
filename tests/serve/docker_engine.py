"""A real dockerd for the tests and the benchmark, on the store served by ``aufs serve docker``.

``Engine`` starts (and stops, whatever happens) the plugin server and a dockerd of its own:
``--experimental --storage-driver NAME``, data-root, exec-root, pidfile, API socket and config
file under one temporary directory, no iptables and no bridge, and dockerd's own managed
containerd (its state under the exec-root). It must run in a private mount namespace (the
test session's): ``private_run_dirs`` puts private tmpfs over /run/docker (where dockerd
finds plugin sockets) and /run/containerd (so no containerd of the host is picked up and
the shims' state stays private), and takes them down afterwards.

``build_busybox_image`` makes a tiny runnable image with umoci and skopeo from Debian's
static busybox: layer tars -> OCI layout (umoci) -> ``skopeo copy`` -> docker-archive.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

DOCKERD = shutil.which("dockerd", path="/usr/sbin:/usr/bin") or ""
# Debian's client, the same release as its dockerd (another docker CLI may come first in PATH)
DOCKER = shutil.which("docker", path="/usr/bin") or shutil.which("docker") or ""
BUSYBOX = "/bin/busybox"
IMAGE = "aufs-test/busybox:1"
PLUGIN_NAME = "aufs-test"

_MNT_DETACH = 2


def missing_tools() -> str | None:
    """Why the engine tests cannot run here, or None."""
    for name, path in (("dockerd (Debian docker.io)", DOCKERD), ("docker (Debian docker.io)", DOCKER),
                       ("umoci", shutil.which("umoci")), ("skopeo", shutil.which("skopeo"))):
        if not path:
            return f"{name} is not installed: run scripts/bootstrap"
    if not os.path.exists(BUSYBOX) or not _is_static(BUSYBOX):
        return "a static /bin/busybox (Debian busybox-static) is not installed: run scripts/bootstrap"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return None


def _is_static(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return b"/lib64/ld-linux" not in head and b"/lib/ld-linux" not in head


def run(*argv: str, check: bool = True, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc


# ---------------------------------------------------------------------------- the image


def build_busybox_image(work: pathlib.Path) -> pathlib.Path:
    """A two-layer busybox image as a ``docker save``-style archive (made by umoci + skopeo)."""
    layout, bundle = work / "oci", work / "bundle"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:t")
    run("umoci", "unpack", "--image", f"{layout}:t", str(bundle))
    root = bundle / "rootfs"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "cat", "echo", "ls", "rm", "sleep", "true", "touch", "mkdir", "hostname", "sync"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "hello").write_text("hello from the aufs store\n")
    (root / "etc" / "gone").write_text("a file the tests delete\n")
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:t", str(bundle))
    (root / "etc" / "second").write_text("layer two\n")
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:t", str(bundle))
    run("umoci", "config", "--image", f"{layout}:t", "--config.cmd", "sh",
        "--config.env", "PATH=/bin", "--config.workingdir", "/")
    shutil.rmtree(bundle)
    archive = work / "busybox.tar"
    run("skopeo", "copy", "--quiet", f"oci:{layout}:t", f"docker-archive:{archive}:{IMAGE}")
    return archive


# ---------------------------------------------------------------------------- namespaces


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _assert_private_namespace() -> None:
    try:
        shared = os.readlink("/proc/self/ns/mnt") == os.readlink("/proc/1/ns/mnt")
    except OSError:
        return  # pid 1 is not ours to inspect (a container): the suite's conftest unshared already
    if shared:
        raise AssertionError("the engine must run in a private mount namespace (unshare -m)")


@contextlib.contextmanager
def private_run_dirs() -> Iterator[None]:
    """Private, empty tmpfs over /run/docker and /run/containerd for the block (this namespace only)."""
    _assert_private_namespace()
    libc = _libc()
    done: list[bytes] = []
    try:
        for path in ("/run/docker", "/run/containerd"):
            os.makedirs(path, exist_ok=True)
            if libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, b"mode=0700") != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
            done.append(path.encode())
        os.makedirs("/run/docker/plugins", mode=0o755)
        yield
    finally:
        for path in reversed(done):
            libc.umount2(path, _MNT_DETACH)


# ---------------------------------------------------------------------------- the engine


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line holds ``text`` (our unique directory): what we started."""
    pids = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


class Engine:
    """dockerd on ``storage_driver``; with ``plugin`` the aufs server of the store ``store_home``."""

    def __init__(self, root: pathlib.Path, *, storage_driver: str = PLUGIN_NAME, plugin: bool = True) -> None:
        self.root = root
        self.storage_driver = storage_driver
        self.store_home = root / "store"
        self.data_root = root / "data"
        self.exec_root = root / "x"  # short: unix socket paths below it are limited to 108 bytes
        self.api_socket = root / "api.sock"
        self.pidfile = root / "dockerd.pid"
        self.config = root / "daemon.json"
        self.plugin_socket = pathlib.Path(f"/run/docker/plugins/{storage_driver}.sock")
        self.with_plugin = plugin
        self.plugin_proc: subprocess.Popen[bytes] | None = None
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.plugin_log = root / "plugin.log"
        self.dockerd_log = root / "dockerd.log"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text("{}\n")  # never the host's /etc/docker/daemon.json
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.api_socket}", DOCKER_BUILDKIT="0",
                        DOCKER_CONFIG=str(root / "client"))

    # -- plugin -------------------------------------------------------------------------------

    def start_plugin(self) -> None:
        assert self.with_plugin
        with open(self.plugin_log, "ab") as log:
            self.plugin_proc = subprocess.Popen(
                # no --socket: the default path is /run/docker/plugins/NAME.sock, where dockerd looks
                [sys.executable, "-m", "aufs", "--debug", "--home", str(self.store_home), "serve", "docker",
                 "--name", self.storage_driver],
                stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.plugin_socket))
                return
            except OSError:
                pass
            finally:
                probe.close()
            if self.plugin_proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"aufs serve docker did not start:\n{self.plugin_log.read_text()}")
            time.sleep(0.05)

    def stop_plugin(self, *, kill: bool = False) -> int | None:
        """SIGTERM (or SIGKILL) the plugin server; its exit status."""
        proc, self.plugin_proc = self.plugin_proc, None
        if proc is None:
            return None
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    # -- dockerd ------------------------------------------------------------------------------

    def start_dockerd(self) -> None:
        with open(self.dockerd_log, "ab") as log:
            self.dockerd = subprocess.Popen(
                [DOCKERD, "--experimental", "--storage-driver", self.storage_driver,
                 "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                 "--pidfile", str(self.pidfile), "-H", f"unix://{self.api_socket}",
                 "--config-file", str(self.config),
                 "--iptables=false", "--ip6tables=false", "--bridge=none", "--userland-proxy=false"],
                stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + 90
        while True:
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dockerd did not start:\n{self.dockerd_log.read_text()[-5000:]}")
            if self.api_socket.exists() and self.docker("version", check=False, timeout=30).returncode == 0:
                return
            time.sleep(0.1)

    def stop_dockerd(self, *, timeout: float = 90) -> None:
        proc, self.dockerd = self.dockerd, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._reap_leftovers()

    def _reap_leftovers(self) -> None:
        # a dockerd that had to be killed leaves its containerd and shims; they name our exec-root
        for pid in _pids_mentioning(str(self.exec_root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pids_mentioning(str(self.exec_root)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def docker(self, *args: str, check: bool = True, timeout: float = 300,
               input: str | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(DOCKER, *args, check=check, timeout=timeout, env=self.env, input=input, cwd=cwd)

    # -- all ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.with_plugin:
            self.start_plugin()
        self.start_dockerd()

    def close(self) -> None:
        """Stop everything; afterwards nothing of ours runs and nothing is mounted below ``root``."""
        try:
            if self.dockerd is not None:
                with contextlib.suppress(Exception):
                    ids = self.docker("ps", "-aq", check=False, timeout=60).stdout.split()
                    if ids:
                        self.docker("rm", "-f", *ids, check=False, timeout=120)
            self.stop_dockerd()
        finally:
            self._reap_leftovers()
            self.stop_plugin()
            if self.store_home.exists():
                import aufs

                aufs.Driver(self.store_home).cleanup()
            unmount_below(self.root)

    def logs(self) -> str:
        parts = []
        for path in (self.dockerd_log, self.plugin_log):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def images(self) -> list[str]:
        return self.docker("images", "-q", "--no-trunc").stdout.split()


def unmount_below(root: pathlib.Path) -> None:
    """Detach every mount at or below ``root`` (dockerd's shm mounts, a killed server's mounts)."""
    from aufs.mounts import submounts

    libc = _libc()
    for _ in range(5):
        points = [m.mountpoint for m in submounts(os.path.realpath(root))]
        if not points:
            return
        for point in points:
            libc.umount2(os.fsencode(point), _MNT_DETACH)


def inspect(engine: Engine, what: str) -> dict[str, Any]:
    return json.loads(engine.docker("inspect", what).stdout)[0]  # type: ignore[no-any-return]
