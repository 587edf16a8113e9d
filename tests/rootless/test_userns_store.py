"""Userns stores (issue 10), as the unprivileged ``aufs-test`` with its subordinate ids: owners
really stored (shifted into the user's range on disk), what the namespace cannot hold recorded,
kernel overlayfs mounts kept by a holder between commands and seen through ``aufs unshare``,
and nothing left once the last mount is gone (Ctrl-C in an import: test_rootless_interrupts). Without a subordinate range (``/etc/subuid``
shadowed by an empty file in this test's mount namespace only) the mode is refused with the
reason, and the default override_stat store still works."""
from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import tarfile
from collections.abc import Iterator

import pytest

from ..users import User

_AUFS = "import sys, aufs.cli; sys.exit(aufs.cli.main(sys.argv[1:]))"
EPOCH = 1_600_000_000


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0, **extra: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, EPOCH
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def base_layer() -> bytes:
    """Root-owned files, ids inside and outside aufs-test's 131,073 mapped ids, setuid and
    setgid files, a fifo, devices, symlinks of other owners, xattrs of every namespace."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
        add(_info("etc", tarfile.DIRTYPE, 0o755))
        add(_info("etc/passwd", tarfile.REGTYPE, 0o644), b"root:x:0:0::/root:/bin/sh\n")
        add(_info("etc/shadow", tarfile.REGTYPE, 0o640, 0, 42), b"root:*:1::::::\n")
        add(_info("usr", tarfile.DIRTYPE, 0o755))
        add(_info("usr/bin", tarfile.DIRTYPE, 0o755))
        add(_info("usr/bin/su", tarfile.REGTYPE, 0o4755), b"su")
        add(_info("usr/bin/wall", tarfile.REGTYPE, 0o2755, 0, 5), b"wall")
        ping = _info("usr/bin/ping", tarfile.REGTYPE, 0o755)
        ping.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20" + "\x00" * 14,
                            "SCHILY.xattr.user.note": "kept", "SCHILY.xattr.trusted.odd": "t"}
        add(ping, b"ping")
        add(_info("home", tarfile.DIRTYPE, 0o755))
        add(_info("home/user", tarfile.DIRTYPE, 0o700, 1000, 1000))
        add(_info("home/user/notes", tarfile.REGTYPE, 0o600, 1000, 1000), b"mine")
        add(_info("home/high", tarfile.DIRTYPE, 0o750, 70000, 70001))  # in the second subuid range
        add(_info("home/far", tarfile.DIRTYPE, 0o700, 3000000, 3000000))  # mapped by no range
        add(_info("home/far/notes", tarfile.REGTYPE, 0o600, 3000000, 3000000), b"far away")
        add(_info("home/far/link", tarfile.SYMTYPE, 0o777, 3000001, 3000001, linkname="notes"))
        add(_info("home/user/link", tarfile.SYMTYPE, 0o777, 1000, 1000, linkname="notes"))
        add(_info("dev", tarfile.DIRTYPE, 0o755))
        add(_info("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3))
        add(_info("dev/sda", tarfile.BLKTYPE, 0o660, 0, 6, devmajor=8, devminor=0))
        add(_info("dev/initctl", tarfile.FIFOTYPE, 0o600))
        add(_info("dev/farfifo", tarfile.FIFOTYPE, 0o600, 3000000, 0))
        add(_info("tmp", tarfile.DIRTYPE, 0o1777))
        add(_info("gone", tarfile.DIRTYPE, 0o755))
        add(_info("gone/file", tarfile.REGTYPE, 0o644), b"x")
    return buf.getvalue()


def top_layer() -> bytes:
    """Whiteouts and an opaque directory over :func:`base_layer`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in (_info("etc", tarfile.DIRTYPE, 0o755), _info("etc/.wh.shadow", tarfile.REGTYPE, 0o644),
                     _info("gone", tarfile.DIRTYPE, 0o755), _info("gone/.wh..wh..opq", tarfile.REGTYPE, 0o644),
                     _info("gone/new", tarfile.REGTYPE, 0o644, 7, 7)):
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


def members(data: bytes) -> list[tuple]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.type, m.mode, m.uid, m.gid, m.size, m.mtime, m.linkname, m.devmajor, m.devminor,
                 tuple(sorted(m.pax_headers.items())), tar.extractfile(m).read() if m.isfile() else None)
                for m in tar.getmembers()]


def holders(user: User) -> list[str]:
    """``user``'s live namespace holders (``ps`` shows ``aufs-userns HOME infinity``)."""
    proc = subprocess.run(["ps", "-u", str(user.uid), "-o", "pid=,stat=,args="], capture_output=True, text=True)
    return [line.strip() for line in proc.stdout.splitlines()
            if "aufs-userns" in line and line.split()[1][:1] != "Z"]


def no_mounts_under(path: pathlib.Path) -> None:
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if str(path) in line]


@pytest.fixture(autouse=True)
def no_holder_left(test_user: User) -> Iterator[None]:
    """Whatever a failed test left: the user's namespace holders go (their mounts with them)."""
    yield
    for line in holders(test_user):
        try:
            os.kill(int(line.split()[0]), 9)
        except ProcessLookupError:
            pass


class Cli:
    """``aufs --home HOME`` as the test user."""

    def __init__(self, user: User, home: pathlib.Path) -> None:
        self.user, self.home = user, home

    def __call__(self, *argv: str, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        proc = self.user.python(_AUFS, "--home", str(self.home), *argv, env=env, timeout=300)
        if ok:
            assert proc.returncode == 0, (argv, proc.stderr.decode()[-3000:])
        return proc

    def out(self, *argv: str) -> str:
        return self(*argv).stdout.decode()


@pytest.fixture
def layers(user_dir: pathlib.Path, test_user: User) -> tuple[pathlib.Path, pathlib.Path]:
    paths = []
    for name, data in (("base.tar", base_layer()), ("top.tar", top_layer())):
        path = user_dir / name
        path.write_bytes(data)
        os.chown(path, test_user.uid, test_user.gid)
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture
def no_subids(ramdir: pathlib.Path) -> Iterator[None]:
    """/etc/subuid and /etc/subgid empty, for this test's mount namespace only (bind mounts of
    empty files over them: the host's files are never touched)."""
    bound = []
    try:
        for name in ("subuid", "subgid"):
            empty = ramdir / f"empty-{name}"
            empty.write_bytes(b"")
            os.chmod(empty, 0o644)
            subprocess.run(["mount", "--bind", str(empty), f"/etc/{name}"], check=True)
            bound.append(f"/etc/{name}")
        yield
    finally:
        for path in bound:
            subprocess.run(["umount", path], check=True)


def require_two_ranges(user: User) -> None:
    """The tests use ids of the user's second subordinate range (70000 and up): scripts/bootstrap
    gives aufs-test two ranges of 65536."""
    for path in ("/etc/subuid", "/etc/subgid"):
        with open(path) as f:
            total = sum(int(line.split(":")[2]) for line in f if line.startswith(user.name + ":"))
        assert total >= 70002, f"{path} gives {user.name} {total} ids; run scripts/bootstrap (it adds a second range)"


def _subid_start(user: User) -> int:
    with open("/etc/subuid") as f:
        for line in f:
            name, start, _count = line.strip().split(":")
            if name == user.name:
                return int(start)
    pytest.skip(f"{user.name} has no subordinate ids (scripts/bootstrap gives it some)")


def test_userns_store_round_trip_with_real_owners(test_user: User, user_dir: pathlib.Path,
                                                  layers: tuple[pathlib.Path, pathlib.Path], ramdir: pathlib.Path) -> None:
    require_two_ranges(test_user)
    base_tar, top_tar = layers
    home = user_dir / "store"
    aufs_ = Cli(test_user, home)
    aufs_("--rootless", "userns", "create", "base")
    aufs_("apply", "base", str(base_tar))
    aufs_("create", "top", "--parent", "base")
    aufs_("apply", "top", str(top_tar))
    # nothing runs between commands while nothing is mounted
    assert holders(test_user) == []

    # on disk: ids shifted into the user's ranges for real, the rest recorded
    start = _subid_start(test_user)
    diff = home / "layers" / "base" / "diff"
    assert (os.stat(diff / "etc" / "passwd").st_uid, os.stat(diff / "etc" / "passwd").st_gid) == (test_user.uid, test_user.gid)
    assert os.stat(diff / "etc" / "shadow").st_gid == start + 41
    assert os.stat(diff / "home" / "user" / "notes").st_uid == start + 999
    assert os.stat(diff / "usr" / "bin" / "su").st_mode & 0o7777 == 0o4755
    assert os.lstat(diff / "home" / "user" / "link").st_uid == start + 999
    assert (os.stat(diff / "dev" / "initctl").st_mode & 0o170000) == 0o010000  # a real fifo
    assert os.stat(diff / "home" / "far" / "notes").st_uid == test_user.uid  # 3000000: recorded
    assert os.getxattr(diff / "home" / "far" / "notes", "user.containers.override_stat") == b"3000000:3000000:0600:file"
    assert os.getxattr(diff / "dev" / "sda", "user.containers.override_stat") == b"0:6:0660:block-8-0"
    top = home / "layers" / "top" / "diff"
    assert os.getxattr(top / "gone", "user.overlay.opaque") == b"y"
    assert os.stat(top / "etc" / "shadow").st_rdev == 0 and (os.stat(top / "etc" / "shadow").st_mode & 0o170000) == 0o020000

    # what went in comes out, entry by entry, as a root store gives it
    for layer, tar_path in (("base", base_tar), ("top", top_tar)):
        out = user_dir / f"{layer}-out.tar"
        aufs_("diff", layer, "-o", str(out))
        import aufs
        root_store = aufs.Driver(ramdir / f"root-{layer}")
        root_store.create(layer)
        root_store.apply_diff(layer, tar_path.read_bytes())
        want = io.BytesIO()
        root_store.diff(layer, want)
        assert members(out.read_bytes()) == members(want.getvalue())
    assert aufs_.out("changes", "top").split() == ["C", "/etc", "D", "/etc/shadow", "C", "/gone", "D", "/gone/file",
                                                  "A", "/gone/new"]

    # mount: the view in the namespace shows the image's owners; writes go to the top layer
    path = aufs_.out("mount", "top").strip()
    status = json.loads(aufs_.out("--json", "status"))
    assert status["rootless_kind"] == "userns" and status["backend"] == "overlay" and status["mounted"] == 1
    pid = status["userns_holder"]
    assert pid > 0 and len(holders(test_user)) == 1
    shown = aufs_("unshare", "--", "sh", "-c",
                  f'cd "{path}" && stat -c "%n %u:%g %a %F" etc/passwd usr/bin/su home/user/notes home/high '
                  f'home/far/notes dev/initctl && ls gone && echo written > new && rm home/user/notes && '
                  f'[ ! -e etc/shadow ]').stdout.decode().split("\n")
    assert shown[:6] == ["etc/passwd 0:0 644 regular file", "usr/bin/su 0:0 4755 regular file",
                         "home/user/notes 1000:1000 600 regular file", "home/high 70000:70001 750 directory",
                         # beyond the mapped ids: the kernel shows the namespace's overflow id
                         "home/far/notes 0:0 600 regular file", "dev/initctl 0:0 600 fifo"], shown
    assert shown[6:] == ["new", ""]  # the opaque directory hides gone/file
    # the host reaches the namespace's mounts through the holder
    assert (pathlib.Path(f"/proc/{pid}/root{path}") / "new").read_bytes() == b"written\n"
    no_mounts_under(user_dir)  # none in the host's (here: the test's) mount namespace
    aufs_("umount", "top")
    assert aufs_.out("changes", "top").split() == [
        "C", "/etc", "D", "/etc/shadow", "C", "/gone", "D", "/gone/file", "A", "/gone/new",
        "C", "/home/user", "D", "/home/user/notes", "A", "/new"]
    out = user_dir / "top-after.tar"
    aufs_("diff", "top", "-o", str(out))
    names = [m[0] for m in members(out.read_bytes())]
    assert "new" in names and "home/user/.wh.notes" in names and "gone/.wh..wh..opq" in names
    assert holders(test_user) == []

    # check, with a mount held by `aufs mount` and without
    aufs_("mount", "base")
    assert aufs_.out("check", "--repair").strip() == f"{home}: consistent"
    assert aufs_("unshare", "--", "sh", "-c", f'test -d "{home}/mnt/base/etc"').returncode == 0  # left alone
    aufs_("umount", "base")
    assert aufs_.out("check").strip() == f"{home}: consistent"

    # removal: nothing left, no process, no mount
    aufs_("rm", "top", "base")
    assert aufs_.out("ls").strip() == "(no layers)"
    assert holders(test_user) == []
    no_mounts_under(user_dir)


def _chain(user: User, home: pathlib.Path, base_tar: pathlib.Path, children: int) -> Cli:
    """A userns store at ``home`` with ``base`` (from ``base_tar``) and ``children`` layers on
    it, ``c0`` ...; the store's CLI."""
    aufs_ = Cli(user, home)
    aufs_("--rootless", "userns", "create", "base")
    aufs_("apply", "base", str(base_tar))
    for i in range(children):
        aufs_("create", f"c{i}", "--parent", "base")
    return aufs_


def test_userns_mounts_outlive_the_command_and_ctrl_c_leaves_nothing(test_user: User, user_dir: pathlib.Path,
                                                                      layers: tuple[pathlib.Path, pathlib.Path]) -> None:
    home = user_dir / "store"
    aufs_ = _chain(test_user, home, layers[0], 3)
    for i in range(3):
        aufs_("mount", f"c{i}")
    assert len(holders(test_user)) == 1  # one namespace for the store
    aufs_("unshare", "--", "sh", "-c", f'test -f "{home}/mnt/c2/etc/passwd"')
    # a Python program of the user: get/put in a loop, interrupted
    from .conftest import user_popen
    from .test_rootless_interrupts import MOUNT_LOOP
    loop = user_popen(test_user, MOUNT_LOOP, str(home), "c0")
    assert loop.stdout.readline() == b"ready\n", loop.stderr.read().decode()[-2000:]
    import signal
    os.killpg(loop.pid, signal.SIGINT)
    loop.wait(timeout=60)
    assert b"KeyboardInterrupt" in loop.stderr.read()
    assert len(holders(test_user)) == 1  # the CLI's mounts are still held
    for i in range(3):
        aufs_("umount", f"c{i}")
    assert holders(test_user) == []
    aufs_("rm", "c0", "c1", "c2", "base")
    state = json.loads(aufs_.out("--json", "status"))
    assert state["layers"] == 0 and state["mounted"] == 0
    assert os.listdir(home / "tmp") == []
    no_mounts_under(user_dir)


def test_a_userns_store_refuses_to_be_misread(test_user: User, user_dir: pathlib.Path, ramdir: pathlib.Path) -> None:
    home = user_dir / "store"
    aufs_ = Cli(test_user, home)
    aufs_("--rootless", "userns", "create", "base")
    # another kind asked for
    proc = aufs_("--rootless", "override_stat", "ls", ok=False)
    assert proc.returncode == 1 and b"is a userns store, not an override_stat rootless store" in proc.stderr
    # root would read the shifted ids as they are on disk
    import aufs
    with pytest.raises(aufs.StoreFormatMismatch, match="userns store of uid"):
        aufs.Driver(home)
    # the id map changed since the store was made (as if /etc/subuid had been edited)
    meta_path = home / "aufs-store.json"
    meta = json.loads(meta_path.read_text())
    meta["idmap"]["uid"][1][1] += 1
    meta_path.write_text(json.dumps(meta))
    proc = aufs_("ls", ok=False)
    assert proc.returncode == 1 and b"its owners would be misread" in proc.stderr, proc.stderr
    assert holders(test_user) == []


def test_userns_needs_subordinate_ids_and_one_thread(test_user: User, user_dir: pathlib.Path, user_fuse: None,
                                                     layers: tuple[pathlib.Path, pathlib.Path],
                                                     no_subids: None) -> None:
    base_tar, _ = layers
    home = user_dir / "store"
    proc = Cli(test_user, home)("--rootless", "userns", "create", "base", ok=False)
    assert proc.returncode == 8
    assert proc.stderr.decode().strip() == (
        "aufs create: a userns store is not possible here: /etc/subuid gives user aufs-test no subordinate ids "
        "(add a line such as `aufs-test:100000:65536`, e.g. with `usermod --add-subuids/--add-subgids`)")
    assert not home.exists()  # nothing half-made
    # without a range the default store (owners recorded) works, and loses nothing
    aufs_ = Cli(test_user, home)
    aufs_("create", "base")
    aufs_("apply", "base", str(base_tar))
    out = user_dir / "out.tar"
    aufs_("diff", "base", "-o", str(out))
    assert sorted(m[:10] for m in members(out.read_bytes())) == sorted(m[:10] for m in members(base_tar.read_bytes()))
    assert json.loads(aufs_.out("--json", "status"))["rootless_kind"] == "override_stat"


def test_a_threaded_program_is_told_to_open_the_store_first(test_user: User, user_dir: pathlib.Path) -> None:
    home = user_dir / "store"
    Cli(test_user, home)("--rootless", "userns", "create", "base")
    proc = test_user.python(r'''
import sys, threading, aufs
stop = threading.Event()
t = threading.Thread(target=stop.wait); t.start()
try:
    aufs.Driver(sys.argv[1])
except aufs.BackendUnavailable as exc:
    print(exc)
finally:
    stop.set(); t.join()
d = aufs.Driver(sys.argv[1])  # single-threaded again: joins
print(d.layers())
''', str(home))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    lines = proc.stdout.decode().splitlines()
    assert "joins its user namespace only while it runs one thread (this one runs 2)" in lines[0]
    assert lines[1] == "['base']"
    assert holders(test_user) == []


def test_demo_in_a_userns_store(test_user: User, user_dir: pathlib.Path) -> None:
    proc = test_user.python(_AUFS, "demo", env={"TMPDIR": str(user_dir), "COLUMNS": "100",
                                                "AUFS_ROOTLESS": "userns"}, timeout=300)
    assert proc.returncode == 0, (proc.stdout.decode()[-2000:], proc.stderr.decode()[-2000:])
    text = proc.stdout.decode()
    assert "backend: overlay" in text and "nothing left behind" in text
    assert list(user_dir.iterdir()) == []
    assert holders(test_user) == []
    no_mounts_under(user_dir)


@pytest.mark.parametrize("kind", ["override_stat", "userns"])
def test_a_symlink_replaced_through_a_mount_is_the_users(kind: str, test_user: User, user_dir: pathlib.Path,
                                                         user_fuse: None,
                                                         layers: tuple[pathlib.Path, pathlib.Path]) -> None:
    """The mount's copy-up carries the directory's owner records along: the user's new symlink
    under a recorded name must export as theirs (root's in the image), not the old owner's."""
    base_tar, _ = layers
    aufs_ = Cli(test_user, user_dir / "store")
    aufs_("--rootless", kind, "create", "base")
    aufs_("apply", "base", str(base_tar))
    aufs_("create", "top", "--parent", "base")
    path = aufs_.out("mount", "top").strip()
    script = f'cd "{path}/home/far" && ln -sfn elsewhere link && readlink link'
    if kind == "userns":
        proc = aufs_("unshare", "--", "sh", "-c", script)
    else:
        proc = test_user.run(["sh", "-c", script])
    assert proc.returncode == 0 and proc.stdout == b"elsewhere\n", proc.stderr.decode()
    aufs_("umount", "top")
    out = user_dir / "top.tar"
    aufs_("diff", "top", "-o", str(out))
    links = {m[0]: (m[3], m[4], m[7]) for m in members(out.read_bytes()) if m[1] == tarfile.SYMTYPE}
    assert links == {"home/far/link": (0, 0, "elsewhere")}
    # the layer below still exports its own
    aufs_("diff", "base", "-o", str(out))
    links = {m[0]: (m[3], m[4], m[7]) for m in members(out.read_bytes()) if m[1] == tarfile.SYMTYPE}
    assert links == {"home/far/link": (3000001, 3000001, "notes"), "home/user/link": (1000, 1000, "notes")}
    aufs_("rm", "top", "base")
    assert holders(test_user) == []


@pytest.mark.parametrize("engine", ["docker", "containerd"])
def test_engines_are_not_served_a_userns_store(engine: str, test_user: User, user_dir: pathlib.Path) -> None:
    aufs_ = Cli(test_user, user_dir / "store")
    aufs_("--rootless", "userns", "create", "base")
    proc = aufs_("serve", engine, "--socket", str(user_dir / "engine.sock"), ok=False)
    if engine == "containerd" and b"needs grpcio" in proc.stderr:
        pytest.skip("grpcio is not installed")
    assert proc.returncode == 8, proc.stderr.decode()
    assert proc.stderr.decode().strip().endswith(
        f"cannot use the userns store {user_dir / 'store'}: its files belong to ids of the store's user "
        "namespace and its mounts live there; serve a root store")
    assert not (user_dir / "engine.sock").exists()
    assert holders(test_user) == []


def test_a_killed_holder_takes_its_mounts_and_nothing_else(test_user: User, user_dir: pathlib.Path) -> None:
    """The holder killed (OOM, a user's kill): the namespace ends with its mounts. The store
    says so, mounts again from scratch (the old references went with the mount) and cleans up."""
    home = user_dir / "store"
    aufs_ = Cli(test_user, home)
    aufs_("--rootless", "userns", "create", "base")
    aufs_("create", "top", "--parent", "base")
    aufs_("mount", "top")
    [holder] = holders(test_user)
    os.kill(int(holder.split()[0]), 9)
    status = json.loads(aufs_.out("--json", "status"))
    assert status["mounted"] == 0
    proc = aufs_("check", ok=False)
    assert proc.returncode == 11 and b"stale-references" in proc.stdout
    assert aufs_.out("check", "--repair").count("[repaired]") == 2
    path = aufs_.out("mount", "top").strip()
    assert aufs_("unshare", "--", "test", "-d", path + "/.").returncode == 0
    aufs_("umount", "top")
    assert json.loads(aufs_.out("--json", "status"))["mounted"] == 0
    aufs_("rm", "top", "base")
    assert holders(test_user) == []


_CHURN = r'''
import os, sys, time, aufs
home, layer, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for n in range(rounds):
    d = aufs.Driver(home)  # each round a fresh open: joins, or starts the namespace again
    with d.mount(layer) as root:
        with open(os.path.join(root, "f%d" % (n % 4)), "w") as f:
            f.write(str(os.getpid()))
        assert os.path.isdir(os.path.join(root, "etc"))
print("done", flush=True)
'''


def test_processes_come_and_go_while_the_namespace_starts_and_stops(test_user: User, user_dir: pathlib.Path,
                                                                     layers: tuple[pathlib.Path, pathlib.Path]) -> None:
    """Several processes open the store, mount and exit at once, many times: each finds the
    namespace or starts it, none loses a mount to another's stop, and nothing stays."""
    from .conftest import user_popen
    home = user_dir / "store"
    aufs_ = _chain(test_user, home, layers[0], 4)
    for wave in range(3):
        procs = [user_popen(test_user, _CHURN, str(home), f"c{i}", "8") for i in range(4)]
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0 and out == b"done\n", err.decode()[-3000:]
        assert holders(test_user) == [], wave
    state = json.loads(aufs_.out("--json", "status"))
    assert state["mounted"] == 0 and os.listdir(home / "tmp") == []
    assert aufs_.out("check").strip() == f"{home}: consistent"
    assert holders(test_user) == []
    no_mounts_under(user_dir)


def test_a_process_in_another_user_namespace_is_told_why_not(test_user: User, user_dir: pathlib.Path) -> None:
    home = user_dir / "store"
    Cli(test_user, home)("--rootless", "userns", "create", "base")
    proc = test_user.run(["unshare", "-Urm", *test_user._python, "-c", _AUFS, "--home", str(home), "ls"],
                         env={"PYTHONPATH": test_user._pythonpath, "PYTHONNOUSERSITE": "1"})
    assert proc.returncode == 8, proc.stderr.decode()
    assert proc.stderr.decode().strip() == (
        f"aufs ls: {home} is a userns store, and this process runs in a user namespace already: a process "
        "works in one userns store's namespace, entered from outside any; open this store from another process")
    assert holders(test_user) == []


def test_another_user_reaches_neither_the_store_nor_its_mounts(test_user: User, other_user: User,
                                                               user_dir: pathlib.Path,
                                                               layers: tuple[pathlib.Path, pathlib.Path]) -> None:
    """aufs-other, a second local user: the store is private (0700), and the holder's
    /proc/PID/root is the owner's only (another user may not look into its namespace)."""
    aufs_ = _chain(test_user, user_dir / "store", layers[0], 1)
    path = aufs_.out("mount", "c0").strip()
    pid = json.loads(aufs_.out("--json", "status"))["userns_holder"]
    assert pid > 0
    assert aufs_("unshare", "--", "test", "-f", path + "/etc/passwd").returncode == 0  # the owner can
    for argv in (["cat", f"/proc/{pid}/root{path}/etc/passwd"], ["ls", f"/proc/{pid}/root{path}"],
                 ["ls", str(user_dir / "store" / "layers")]):
        proc = other_user.run(argv)
        assert proc.returncode != 0 and b"Permission denied" in proc.stderr, (argv, proc.stderr)
    proc = other_user.python(_AUFS, "--home", str(user_dir / "store"), "ls")
    assert proc.returncode != 0 and b"ermission denied" in proc.stderr, proc.stderr
    aufs_("umount", "c0")
    assert holders(test_user) == []
