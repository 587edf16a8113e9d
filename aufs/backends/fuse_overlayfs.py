"""The fuse-overlayfs backend: the real ``fuse-overlayfs`` binary, one daemon per mount.

fuse-overlayfs reads both whiteout formats in lower and upper dirs, so it serves stores in the
AUFS format (the one it gives new stores, readable by kernel AUFS too) and in the OVERLAY
format. As root it writes overlay-style markers itself (0/0 character-device whiteouts, an
``trusted.overlay.opaque`` xattr plus a ``.wh..wh..opq`` file, and a stray ``.wh..opq``
device); after the daemon exits, :func:`normalise_upper` rewrites what it wrote into the
store's own format, so nothing of the daemon's leaks into a layer's content or its tar.

The daemon runs in the foreground (``-f``) as our child in its own session: we know its pid,
a Ctrl-C aimed at the caller does not kill it, and we wait for it after the unmount, so it
never outlives its mount. Its pid is also written to the mount's record file, so another
process (or a later ``cleanup``) can wait for it too.

Depth limit: the lower list travels as one ``-o`` argument, bounded by the kernel's
MAX_ARG_STRLEN (32 pages = 128 KiB). Lower dirs are named by fixed-length short links
(``HOME/l/<20 chars>``), so 500 layers need about 500 * (len(HOME) + 24) bytes, which fits for
any home shorter than 230 characters; 500 also matches kernel overlayfs, so a chain that
mounts on one backend mounts on the other. It is tested with a 500-layer chain.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from .. import mounts
from ..errors import MountError
from ..layout import Layout
from ..owners import ProcessToken, process_alive, process_start_time
from ..plan import Mount
from ..whiteouts import WhiteoutFormat, make_whiteout
from .base import Backend, Detached, detach, kernel_filesystems

__all__ = ["FUSE_MAX_DEPTH", "MOUNT_TYPE", "FuseOverlayfsBackend", "normalise_upper"]

FUSE_MAX_DEPTH = 500
_MAX_ARG_STRLEN = 32 * 4096
_MOUNT_TIMEOUT = 15.0
_EXIT_TIMEOUT = 15.0
MOUNT_TYPE = "fuse3.fuse-overlayfs"
"""The type the kernel (and containerd) gives a fuse-overlayfs mount."""
_FUSE_DEVICE = "/dev/fuse"
_STRAY_OPAQUE = ".wh..opq"  # fuse-overlayfs's own marker device; never content


def _binary() -> str | None:
    return shutil.which("fuse-overlayfs")


def normalise_upper(upper: str, fmt: WhiteoutFormat) -> None:
    """Rewrite fuse-overlayfs's markers in the dir tree ``upper`` into the whiteout format ``fmt``.

    Removes its stray ``.wh..opq`` devices everywhere; for the AUFS format, turns every 0/0
    character-device whiteout NAME into the file ``.wh.NAME``. Must only run while no daemon
    uses ``upper``.
    """
    stack = [upper]
    while stack:
        directory = stack.pop()
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with os.scandir(dir_fd) as it:
                entries = list(it)
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(os.path.join(directory, entry.name))
                    continue
                if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    continue
                st = entry.stat(follow_symlinks=False)
                if entry.name == _STRAY_OPAQUE:
                    os.unlink(entry.name, dir_fd=dir_fd)
                elif fmt is WhiteoutFormat.AUFS and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    os.unlink(entry.name, dir_fd=dir_fd)
                    make_whiteout(dir_fd, entry.name, WhiteoutFormat.AUFS)
        finally:
            os.close(dir_fd)


def _fuse_escape(path: str) -> str:
    """``path`` as libfuse's option parser reads it back: ``\\`` and ``,`` escaped."""
    return path.replace("\\", "\\\\").replace(",", "\\,")


def _read_record(record: str) -> ProcessToken | None:
    try:
        with open(record, encoding="ascii") as f:
            pid_text, start_text = f.read().split()[:2]
        return ProcessToken(int(pid_text), int(start_text))
    except (FileNotFoundError, ValueError):
        return None


def _wait_gone(token: ProcessToken, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while process_alive(token.pid, token.start):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


class FuseOverlayfsBackend(Backend):
    """fuse-overlayfs: a userspace overlay, no page-size limit on the lower list."""

    name = "fuse-overlayfs"
    formats = (WhiteoutFormat.AUFS, WhiteoutFormat.OVERLAY)

    def __init__(self, layout: Layout, fmt: WhiteoutFormat) -> None:
        super().__init__(layout, fmt)
        # our daemons by mountpoint: waited for at unmount, reaped if someone else unmounted
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._children_lock = threading.Lock()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if _binary() is None:
            return "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)"
        if not os.path.exists(_FUSE_DEVICE):
            return f"{_FUSE_DEVICE} is missing (load the fuse module or pass the device in)"
        if not os.access(_FUSE_DEVICE, os.R_OK | os.W_OK):
            # stock Debian makes it 0666; a 0600 device serves root only
            return (f"this user may not open {_FUSE_DEVICE} for reading and writing (ask the "
                    f"administrator to `chmod 0666 {_FUSE_DEVICE}`, as Debian ships it)")
        if "fuse" not in kernel_filesystems():
            return "the kernel has no FUSE support"
        return None

    @property
    def max_depth(self) -> int:
        return FUSE_MAX_DEPTH

    def _reap(self) -> None:
        """Collect children whose mounts someone else took down (no zombies left around)."""
        with self._children_lock:
            for target, proc in list(self._children.items()):
                if proc.poll() is not None:
                    del self._children[target]

    def pick_lowers(self, full: Sequence[str], short: Callable[[], Sequence[str]],
                    upper: str | None, work: str | None) -> Sequence[str]:
        return short()  # one -o argument of at most 128 KiB carries the whole chain

    def describe(self, lowers: Sequence[str], upper: str | None, work: str | None) -> list[Mount]:
        for path in [*lowers, *(p for p in (upper, work) if p is not None)]:
            if ":" in path:
                raise MountError(
                    f"fuse-overlayfs cannot take the path {path!r}: it splits every path it is "
                    "given at ':' and has no escape for it; move the store to a path without ':'",
                    path=path,
                )
        options = ["lowerdir=" + ":".join(_fuse_escape(p) for p in lowers)]

        if upper is not None and work is not None:
            options += [f"upperdir={_fuse_escape(upper)}", f"workdir={_fuse_escape(work)}"]
        return [Mount(MOUNT_TYPE, "fuse-overlayfs", tuple(options))]

    def perform(self, described: list[Mount], target: str, record: str | None = None) -> None:
        self._reap()
        binary = _binary()
        if binary is None:
            raise MountError("fuse-overlayfs is not installed", path=target)
        if len(described) != 1 or described[0].type != MOUNT_TYPE:
            raise ValueError(f"the fuse-overlayfs backend performs one {MOUNT_TYPE} mount, not {described!r}")
        options = ",".join(described[0].options)
        if len(options) >= _MAX_ARG_STRLEN:
            raise MountError(f"fuse-overlayfs options for {target} exceed 128 KiB", path=target)
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(
                [binary, "-f", "-o", options, target],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
                close_fds=True,
            )
            try:
                # recorded before the mount appears: whoever finds the mount finds its daemon
                if record is not None:
                    start = process_start_time(proc.pid)
                    with open(record, "w", encoding="ascii") as f:
                        f.write(f"{proc.pid} {start}\n")
                self._wait_mounted(proc, target, errors)
            except BaseException:
                self._stop(proc, target)
                if record is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(record)
                raise
        with self._children_lock:
            self._children[target] = proc

    def _wait_mounted(self, proc: subprocess.Popen[bytes], target: str, errors: IO[bytes]) -> None:
        deadline = time.monotonic() + _MOUNT_TIMEOUT
        delay = 0.0005
        while not mounts.mounted(target):
            if proc.poll() is not None:
                errors.seek(0)
                message = errors.read().decode("utf-8", "replace").strip()
                raise MountError(
                    f"fuse-overlayfs failed to mount {target} (exit {proc.returncode}): {message}",
                    path=target,
                )
            if time.monotonic() >= deadline:
                raise MountError(f"fuse-overlayfs did not mount {target} within {_MOUNT_TIMEOUT:.0f} s", path=target)
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _stop(self, proc: subprocess.Popen[bytes], target: str) -> None:
        """Undo a half-made mount: unmount if it appeared, then make sure the daemon is gone."""
        try:
            if mounts.mounted(target):
                detach(target)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def unmount(self, target: str, *, record: str | None = None, upper: str | None = None) -> bool:
        token = _read_record(record) if record is not None else None
        how = detach(target)
        with self._children_lock:
            proc = self._children.pop(target, None)
        if how is Detached.NOT_MOUNTED:
            # nothing of ours to wait for here; a record left behind is settle()'s business
            if proc is not None and proc.poll() is None:
                with self._children_lock:
                    self._children.setdefault(target, proc)
            self._reap()
            return False
        if how is Detached.LAZILY:
            # the daemon serves the busy mount until its last user goes: settle() finishes
            if proc is not None:
                with self._children_lock:
                    self._children.setdefault(target, proc)
            return True
        if proc is not None and (token is None or token.pid == proc.pid):
            try:
                proc.wait(timeout=_EXIT_TIMEOUT)
                exited = True
            except subprocess.TimeoutExpired:
                exited = False  # still busy after a lazy detach: settle() finishes later
                with self._children_lock:
                    self._children.setdefault(target, proc)
        elif token is not None:
            exited = _wait_gone(token, _EXIT_TIMEOUT)
        else:
            exited = False
        if exited and upper is not None and record is not None:
            self._release(record, upper)
        self._reap()
        return True

    def _release(self, record: str, upper: str) -> None:
        """The daemon of ``upper``'s mount is gone: normalise its markers, drop its record."""
        if os.path.isdir(upper):
            normalise_upper(upper, self.format)
        try:
            os.unlink(record)
        except FileNotFoundError:
            pass

    def settle(self, record: str, upper: str, *, wait: bool = False) -> None:
        token = _read_record(record)
        if token is not None:
            if wait:
                _wait_gone(token, _EXIT_TIMEOUT)
            self._reap()
            if process_alive(token.pid, token.start):
                return  # its daemon still serves a lazily detached mount
        self._release(record, upper)

    def normalise(self, upper: str) -> None:
        # fuse-overlayfs honours both marker styles, so rewriting them under a live mount
        # leaves its view unchanged while making the diff dir readable in the store's format
        normalise_upper(upper, self.format)
