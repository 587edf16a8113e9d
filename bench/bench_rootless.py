#!/usr/bin/env python3
"""Rootless import benchmark: an ordinary user's ``aufs`` import + mount against ``podman load``
and ``umoci unpack --rootless`` run by the same user, on the same image, on tmpfs.

The image is built as bench_import.py builds it (Debian 12 minbase, or this machine's trees when
debootstrap is missing, packed by umoci as three gzip layers; cached in
/var/tmp/aufs-bench-rootless); its
docker-archive form, made by skopeo, is what ``podman load`` reads). Every timed command runs as
the user ``aufs-test`` (``runuser``), as a whole process, so each side pays its own start-up:

* umoci: ``umoci unpack --rootless --image IMG:bench DEST``;
* podman: ``podman --root R --runroot RR load -i docker.tar`` (a fresh rootless storage each
  round; podman maps ids through /etc/subuid in its user namespace);
* aufs: a Python process that opens a fresh store, ``aufs.import_image`` and ``get``, then
  ``put``: an override_stat store (owners recorded, a fuse-overlayfs mount) and a userns store
  (owners real in the store's user namespace, a kernel overlayfs mount there).

Run as root (it sets up a 0666 /dev/fuse in a private mount namespace, as Debian ships it)::

    unshare -m --propagation private python3 bench/bench_rootless.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
from typing import Any
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_import  # noqa: E402
from bench_import import build_image, debian_rootfs, image_facts  # noqa: E402

# a cache of its own: bench_import's may be rebuilt by another run meanwhile
bench_import.CACHE = Path("/var/tmp/aufs-bench-rootless")

USER = "aufs-test"
ROOT = Path(__file__).resolve().parent.parent

_AUFS = r'''
import os, sys, aufs
d = aufs.Driver(sys.argv[1], rootless=sys.argv[3])
ids = aufs.import_image(d, sys.argv[2])
root = d.get(ids[-1])
assert os.path.isdir(os.path.join(root, "usr"))
d.put(ids[-1])
'''


def user_fuse(work: Path) -> None:
    """A 0666 /dev/fuse in this (private) mount namespace."""
    dev = work / "dev"
    dev.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(dev)], check=True)
    st = os.stat("/dev/fuse")
    os.mknod(dev / "fuse", 0o666 | 0o020000, st.st_rdev)
    os.chmod(dev / "fuse", 0o666)
    subprocess.run(["mount", "--bind", str(dev / "fuse"), "/dev/fuse"], check=True)


def as_user(argv: list[str], env: dict[str, str]) -> float:
    full = ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    start = time.perf_counter()
    proc = subprocess.run(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {proc.stderr.decode()[-1500:]}")
    return elapsed


def user_pids(uid: int) -> set[int]:
    out = subprocess.run(["ps", "-u", str(uid), "-o", "pid="], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def bench_user() -> tuple[pwd.struct_passwd, Any] | None:
    """The test user and an interpreter it may run with aufs importable (shown at a directory
    it may traverse if needed), or None after saying why not (not root, no such interpreter)."""
    if os.geteuid() != 0:
        print("run as root (inside `unshare -m --propagation private`)", file=sys.stderr)
        return None
    user = pwd.getpwnam(USER)
    from tests.users import User, _Interpreter
    interpreter = _Interpreter()
    interpreter.setup(User(USER, user.pw_uid, user.pw_gid, user.pw_dir or "/"))
    if not interpreter.argv:
        print(f"no Python interpreter {USER} may run with aufs importable", file=sys.stderr)
        return None
    return user, interpreter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    found = bench_user()
    if found is None:
        return 2
    user, interpreter = found
    rootfs, origin = debian_rootfs()
    image_on_disk = build_image(rootfs)
    before = user_pids(user.pw_uid)
    work = Path(tempfile.mkdtemp(prefix="aufs-bench-rootless-", dir="/dev/shm"))
    os.chmod(work, 0o755)
    try:
        user_fuse(work)
        image = work / "image"
        shutil.copytree(image_on_disk, image)
        docker = work / "docker.tar"
        subprocess.run(["skopeo", "copy", "-q", f"oci:{image}:bench", f"docker-archive:{docker}:bench:1"], check=True)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(image), str(docker)], check=True)
        play = work / "play"
        play.mkdir()
        os.chown(play, user.pw_uid, user.pw_gid)
        layers, size, entries = image_facts(image)
        runtime = work / "xdg"
        runtime.mkdir(mode=0o700)
        os.chown(runtime, user.pw_uid, user.pw_gid)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(play),
               "USER": USER, "LOGNAME": USER, "LANG": "C.UTF-8", "XDG_RUNTIME_DIR": str(runtime),
               "PYTHONPATH": interpreter.pythonpath, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        n = [0]

        def fresh(name: str) -> Path:
            n[0] += 1
            return play / f"{name}-{n[0]}"

        def umoci() -> float:
            return as_user(["umoci", "unpack", "--rootless", "--image", f"{image}:bench", str(fresh("umoci"))], env)

        short = Path(tempfile.mkdtemp(prefix="rlp", dir="/tmp"))  # podman wants runroot < 50 chars
        os.chown(short, user.pw_uid, user.pw_gid)

        def podman() -> float:
            dest = fresh("podman")
            return as_user(["podman", "--root", str(dest / "root"), "--runroot", f"{short}/{n[0]}",
                            "--storage-driver", "overlay", "load", "-q", "-i", str(docker)], env)

        def aufs_() -> float:
            return as_user([*interpreter.argv, "-c", _AUFS, str(fresh("aufs")), str(image), "override_stat"], env)

        def aufs_userns() -> float:
            return as_user([*interpreter.argv, "-c", _AUFS, str(fresh("aufs-userns")), str(image), "userns"], env)

        timers = [("umoci unpack --rootless", umoci), ("aufs import+mount (rootless)", aufs_),
                  ("aufs import+mount (userns)", aufs_userns)]
        podman_note = ""
        if shutil.which("podman"):
            try:
                podman()
                timers.append(("podman load (rootless)", podman))
            except RuntimeError as exc:
                podman_note = f"podman load could not run rootless here: {exc}"
        else:
            podman_note = "podman is not installed"
        aufs_()  # warm-up: imports, page cache
        runs: dict[str, list[float]] = {name: [] for name, _ in timers}
        for round_no in range(args.rounds):
            for name, timer in (timers if round_no % 2 == 0 else list(reversed(timers))):
                runs[name].append(timer())
        med = {name: statistics.median(v) for name, v in runs.items()}
        print(f"image: {origin}; {layers} gzip layers, {size / 1e6:.1f} MB compressed, {entries} tar entries")
        print(f"as user {USER}, tmpfs, {args.rounds} rounds, medians (all runs in seconds):")
        for name, values in runs.items():
            print(f"  {name:32} {med[name]:6.2f} s   {' '.join(f'{v:.2f}' for v in values)}")
        for kind in ("rootless", "userns"):
            mine = med[f"aufs import+mount ({kind})"]
            for name in med:
                if not name.startswith("aufs "):
                    print(f"ratio {name} / aufs ({kind}): {med[name] / mine:.2f}x")
        if podman_note:
            print(podman_note)
    finally:
        # rootless podman leaves its "podman pause" process (it holds the user namespace)
        started = user_pids(user.pw_uid) - before
        for pid in sorted(started):
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while started & user_pids(user.pw_uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["umount", "-l", "/dev/fuse"], check=False)
        subprocess.run(["umount", "-l", str(work / "dev")], check=False)
        for leftover in sorted(Path("/proc/self").joinpath("mountinfo").read_text().splitlines()):
            if str(work) in leftover:
                subprocess.run(["umount", "-l", leftover.split()[4]], check=False)
        shutil.rmtree(work, ignore_errors=True)
        for stale in Path("/tmp").glob("rlp*"):
            if stale.is_dir() and stale.stat().st_uid == user.pw_uid:
                shutil.rmtree(stale, ignore_errors=True)
        interpreter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
