"""Userns stores: an ordinary user's store that keeps real owners, as podman's does.

Where ``/etc/subuid`` and ``/etc/subgid`` give the user subordinate ids and ``newuidmap`` /
``newgidmap`` exist (Debian package ``uidmap``), a store made with ``rootless="userns"``
(``aufs --rootless userns``) lives in a user namespace of its own, with a mount namespace:

* the namespace maps the user to 0 and every subordinate range after it, in file order
  (a user with ``100000:65536`` has ids 0 to 65536; with a second range, up to 131072);
* files are extracted there with their image owners for real (on disk they belong to the
  matching subordinate id), setuid bits and fifos too; what the namespace cannot hold (an
  owner beyond the mapped ids, such as 3000000, a device node, ``trusted.*`` or ``security.*``
  xattrs) is recorded as in an override_stat store (:mod:`aufs.rootless`), so that ``diff``
  and ``export`` give back exactly what a root store gives;
* layers mount with kernel overlayfs and ``userxattr`` (whiteouts are 0/0 devices, opaque
  directories carry ``user.overlay.opaque``): no FUSE daemon, kernel speed.

The mounts live in the namespace's mount namespace, which a small *holder* process (``ps``
shows ``aufs-userns HOME``) keeps alive between commands. Every aufs process that opens the
store joins it (``setns``: the process must be single-threaded then); the last one to leave
stops the holder when nothing of the store is mounted. Outside, a mount is reached through
``aufs unshare`` (a shell or command in the namespace) or ``/proc/HOLDER/root/PATH``, as with
``podman unshare``. The store description records the mapping; a store whose mapping changed
(``/etc/subuid`` edited) is refused, as its ids would be misread.
"""
from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from . import _syscalls, kernel, mounts
from .errors import BackendUnavailable
from .layout import Layout
from .owners import process_alive, process_start_time
from .refcount import save_state

__all__ = ["FORMAT", "IdMap", "enter", "holder_pid", "id_map", "inside", "leave", "require_outside",
           "unavailable_reason"]

FORMAT = "userns"
"""The value of ``"rootless"`` in a userns store's description."""

_HOLDER_NAME = "aufs-userns"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0

Ranges = tuple[tuple[int, int, int], ...]
"""(first id inside, first id outside, count) triples, as in /proc/PID/uid_map."""


@dataclasses.dataclass(frozen=True)
class IdMap:
    """The ids a userns store's namespace maps: the user to 0, then the subordinate ranges."""

    uids: Ranges
    gids: Ranges

    def to_json(self) -> dict[str, list[list[int]]]:
        return {"uid": [list(r) for r in self.uids], "gid": [list(r) for r in self.gids]}

    @classmethod
    def from_json(cls, value: Any) -> IdMap:
        """The map a store description records; ``ValueError`` if it is malformed."""
        def ranges(key: str) -> Ranges:
            items = value[key]
            out = tuple((int(a), int(b), int(c)) for a, b, c in items)
            if not out or any(c <= 0 or a < 0 or b < 0 for a, b, c in out):
                raise ValueError(f"bad {key} ranges {items!r}")
            return out
        if not isinstance(value, dict):
            raise ValueError("the id map is not an object")
        return cls(ranges("uid"), ranges("gid"))


def _subordinate(path: str, name: str, ident: int) -> list[tuple[int, int]]:
    """The (start, count) ranges ``path`` (/etc/subuid or /etc/subgid) gives a user, in file
    order; lines name the user or their numeric id."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) != 3 or fields[0] not in (name, str(ident)):
                    continue
                try:
                    start, count = int(fields[1]), int(fields[2])
                except ValueError:
                    continue
                if start > 0 and count > 0:
                    out.append((start, count))
    except FileNotFoundError:
        pass
    return out


def _chain(own: int, ranges: Sequence[tuple[int, int]]) -> Ranges:
    out = [(0, own, 1)]
    inside = 1
    for start, count in ranges:
        out.append((inside, start, count))
        inside += count
    return tuple(out)


def id_map(subuid: str = "/etc/subuid", subgid: str = "/etc/subgid") -> IdMap:
    """The map this user's namespace gets: themself as 0, then every subordinate range.

    Raises :class:`aufs.BackendUnavailable` saying what is missing (no range, no
    ``newuidmap``/``newgidmap``)."""
    reason = unavailable_reason(subuid, subgid)
    if reason is not None:
        raise BackendUnavailable(f"a userns store is not possible here: {reason}")
    uid, gid = os.getuid(), os.getgid()
    name = pwd.getpwuid(uid).pw_name
    return IdMap(_chain(uid, _subordinate(subuid, name, uid)), _chain(gid, _subordinate(subgid, name, uid)))


def unavailable_reason(subuid: str = "/etc/subuid", subgid: str = "/etc/subgid") -> str | None:
    """Why this process cannot make or use a userns store, or None."""
    uid = os.getuid()
    if uid == 0:
        return "root keeps real owners without a user namespace: open a store without rootless='userns'"
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/bin:/bin") is None:
            return f"{tool} is not installed (Debian package uidmap)"
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid} has no name in the password database, which /etc/subuid needs"
    for path in (subuid, subgid):
        if not _subordinate(path, name, uid):
            return (f"{path} gives user {name} no subordinate ids (add a line such as "
                    f"`{name}:100000:65536`, e.g. with `usermod --add-subuids/--add-subgids`)")
    if not os.path.exists("/proc/self/ns/user"):
        return "this kernel has no user namespaces"
    return None


# ---------------------------------------------------------------------- the namespace


def _ns_ino(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def _read_record(layout: Layout) -> dict[str, int] | None:
    try:
        with open(layout.userns_record, encoding="ascii") as f:
            rec = json.load(f)
        return {k: int(rec[k]) for k in ("pid", "started", "userns", "mntns")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(layout: Layout, rec: dict[str, int] | None) -> None:
    save_state(layout.userns_record, rec)


def _alive(rec: dict[str, int] | None) -> bool:
    """True if the recorded holder still runs and still is in its namespace."""
    if rec is None or not process_alive(rec["pid"], rec["started"]):
        return False
    try:
        return _ns_ino(rec["pid"], "user") == rec["userns"] and _ns_ino(rec["pid"], "mnt") == rec["mntns"]
    except OSError:
        return False


def holder_pid(layout: Layout) -> int | None:
    """The pid of the process keeping the store's namespace (and its mounts), or None."""
    rec = _read_record(layout)
    return rec["pid"] if rec is not None and _alive(rec) else None


def inside(layout: Layout) -> bool:
    """True if this process is in the store's namespace (its user and mount namespaces)."""
    rec = _read_record(layout)
    try:
        return rec is not None and _ns_ino("self", "user") == rec["userns"] and \
            _ns_ino("self", "mnt") == rec["mntns"]
    except OSError:
        return False


_HOLDER_CODE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from aufs import _syscalls
try:
    _syscalls.unshare(_syscalls.NS_USER | _syscalls.NS_MOUNT)
except OSError as exc:
    sys.stdout.write(f"error {exc}\n"); sys.stdout.flush(); os._exit(1)
sys.stdout.write("unshared\n"); sys.stdout.flush()
if sys.stdin.readline().strip() != "mapped":
    os._exit(1)
null = os.open("/dev/null", os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
os.execv(sys.argv[2], [sys.argv[3], "infinity"])
"""


def _map_args(pid: int, ranges: Ranges) -> list[str]:
    return [str(pid), *(str(n) for r in ranges for n in r)]


def _interpreter() -> str:
    """This Python (an embedding program may have none to name: then python3 from PATH)."""
    found = sys.executable or shutil.which("python3")
    if not found:
        raise BackendUnavailable("no Python interpreter to start the store's namespace holder with "
                                 "(sys.executable is empty and python3 is not on PATH)")
    return found


def _sleep() -> str:
    """What a holder runs once its namespaces are set: coreutils' sleep."""
    return shutil.which("sleep") or "/bin/sleep"


def _spawn_holder(layout: Layout, idmap: IdMap) -> dict[str, int]:
    """Start a holder in a new user and mount namespace mapped by ``idmap``."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [_interpreter(), "-c", _HOLDER_CODE, package_parent, _sleep(), f"{_HOLDER_NAME} {layout.home}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, close_fds=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline().decode(errors="replace").strip()
        if line != "unshared":
            raise BackendUnavailable(f"cannot make a user namespace for the store: {line or 'the holder died'} "
                                     "(are unprivileged user namespaces disabled? see "
                                     "/proc/sys/kernel/unprivileged_userns_clone, /proc/sys/user/max_user_namespaces)")
        for tool, ranges in (("newuidmap", idmap.uids), ("newgidmap", idmap.gids)):
            done = subprocess.run([tool, *_map_args(proc.pid, ranges)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=_START_TIMEOUT)
            if done.returncode != 0:
                raise BackendUnavailable(f"{tool} refused the store's id map {ranges}: "
                                         f"{done.stderr.decode(errors='replace').strip()}")
        proc.stdin.write(b"mapped\n")
        proc.stdin.close()
        # the holder lets go of its end of the pipe when it is done (just before it becomes
        # `sleep`): its namespaces are final then
        proc.stdout.read()
        started = process_start_time(proc.pid)
        if proc.poll() is not None or started is None:
            raise BackendUnavailable("the store's namespace holder died at start")
        rec = {"pid": proc.pid, "started": started, "userns": _ns_ino(proc.pid, "user"),
               "mntns": _ns_ino(proc.pid, "mnt")}
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    _children.append(proc)
    return rec


def _spawn_keeper(layout: Layout) -> dict[str, int]:
    """Start a holder in this process's namespaces (they hold mounts, and their holder died)."""
    proc = subprocess.Popen([f"{_HOLDER_NAME} {layout.home}", "infinity"], executable=_sleep(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    _children.append(proc)  # Popen returns once it runs: its start time is there
    return {"pid": proc.pid, "started": process_start_time(proc.pid) or 0, "userns": _ns_ino("self", "user"),
            "mntns": _ns_ino("self", "mnt")}


_children: list[subprocess.Popen[bytes]] = []
_joined: dict[str, tuple[dict[str, int] | None, int]] = {}
"""home -> (the holder's record at joining, the fd holding the members lock shared)"""


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


class _Lock:
    """The store's namespace lock (``HOME/.userns.lock``), exclusive: start, join, stop."""

    def __init__(self, layout: Layout) -> None:
        self.path = layout.userns_lock

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def enter(layout: Layout, idmap: IdMap) -> None:
    """Join the store's namespace, starting its holder if none runs; idempotent.

    The process must be single-threaded (the kernel lets only such a process join a user
    namespace): open userns stores before starting threads. Raises
    :class:`aufs.BackendUnavailable` saying why the namespace cannot be made or joined."""
    if inside(layout):
        if layout.home not in _joined:
            with _Lock(layout):
                _note_joined(layout, _read_record(layout))
        return
    require_outside(layout)
    if _threads() > 1:
        raise BackendUnavailable(
            f"{layout.home} is a userns store: a process joins its user namespace only while it runs one "
            f"thread (this one runs {_threads()}); open the store before starting threads, or run inside "
            "`aufs unshare`")
    with _Lock(layout):
        rec = _read_record(layout)
        if not _alive(rec):
            rec = _spawn_holder(layout, idmap)
            _write_record(layout, rec)
        assert rec is not None
        _join(rec)
        _note_joined(layout, rec)


def require_outside(layout: Layout) -> None:
    """Raise :class:`aufs.BackendUnavailable` if this process, not in the store's namespace,
    runs in some user namespace (another store's, or ``unshare -U``): it cannot join from there."""
    if kernel.in_user_namespace() and not inside(layout):
        others = sorted(set(_joined) - {layout.home})
        where = f"the namespace of the userns store {others[0]}" if others else "a user namespace already"
        raise BackendUnavailable(
            f"{layout.home} is a userns store, and this process runs in {where}: a process works in one "
            "userns store's namespace, entered from outside any; open this store from another process")


def _note_joined(layout: Layout, rec: dict[str, int] | None) -> None:
    """A member of the namespace until :func:`leave` (or death: the kernel drops the lock)."""
    member = os.open(layout.userns_members, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(member, fcntl.LOCK_SH)
    if not _joined:
        atexit.register(leave_all)
    _joined[layout.home] = (rec, member)


def _no_other_member(layout: Layout) -> bool:
    """True if no process holds the members lock (this one has let go of its own)."""
    fd = os.open(layout.userns_members, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _join(rec: dict[str, int]) -> None:
    pid = rec["pid"]
    user_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        mnt_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(user_fd).st_ino != rec["userns"] or os.fstat(mnt_fd).st_ino != rec["mntns"]:
                raise BackendUnavailable(f"the store's namespace holder (pid {pid}) changed under us; retry")
            cwd = _cwd()
            try:
                _syscalls.setns(user_fd, _syscalls.NS_USER)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise BackendUnavailable(f"cannot join the store's user namespace: {exc} (a process "
                                             "in another user namespace, or running threads)") from None
                raise BackendUnavailable(f"cannot join the store's user namespace: {exc}") from None
            _syscalls.setns(mnt_fd, _syscalls.NS_MOUNT)
            if cwd is not None:
                try:
                    os.chdir(cwd)
                except OSError:
                    pass
        finally:
            os.close(mnt_fd)
    finally:
        os.close(user_fd)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def _store_mounts(layout: Layout) -> Iterator[str]:
    """Mountpoints of the store in this process's mount namespace."""
    prefix = layout.home.rstrip("/") + "/"
    for info in mounts.mount_table():
        if info.mountpoint.startswith(prefix):
            yield info.mountpoint


def leave(layout: Layout) -> None:
    """This process is done with the store: if no other process is in the store's namespace
    and nothing of the store is mounted there, stop the holder; if mounts are left and their
    holder died, start another. The process stays in the namespace. Idempotent."""
    if layout.home not in _joined:
        return
    joined, member = _joined.pop(layout.home)
    os.close(member)  # no longer a member: the last one out finds the lock free
    if not os.path.isdir(layout.home):
        # the store was deleted from inside (a demo's temporary store), its locks with it
        if joined is not None and _alive(joined) and _ns_ino("self", "user") == joined["userns"] and \
                not any(True for _ in _store_mounts(layout)) and _no_process_inside(joined):
            _stop(joined)
        return
    if not inside(layout):
        return
    with _Lock(layout):
        rec = _read_record(layout)
        mounted = any(True for _ in _store_mounts(layout))
        if mounted and not _alive(rec):
            _write_record(layout, _spawn_keeper(layout))
        elif not mounted and rec is not None and _alive(rec) and _no_other_member(layout):
            _stop(rec)
            _write_record(layout, None)


def _no_process_inside(rec: dict[str, int]) -> bool:
    """True if no other process runs in the namespace of ``rec`` (the holder aside)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, rec["pid"]):
            continue
        try:
            if _ns_ino(entry, "user") == rec["userns"]:
                return False
        except OSError:
            continue
    return True


def _stop(rec: dict[str, int]) -> None:
    pid = rec["pid"]
    for child in _children:
        if child.pid == pid:
            child.kill()
            child.wait()
            _children.remove(child)
            return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if process_start_time(pid) != rec["started"]:
            return
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], _STOP_TIMEOUT)
    finally:
        os.close(pidfd)


def leave_all() -> None:
    """:func:`leave` every store this process joined (run at exit)."""
    for home in list(_joined):
        try:
            leave(Layout(home))
        except OSError:
            pass
