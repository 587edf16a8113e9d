"""The test users scripts/bootstrap creates, and the helper that acts as them (tests/users.py)."""
from __future__ import annotations

import os
import shutil

import pytest

from .users import User


def _subids(path: str, name: str) -> list[tuple[int, int]]:
    with open(path) as f:
        return [(int(s), int(c)) for n, s, c in (line.strip().split(":") for line in f if line.count(":") == 2)
                if n == name]


def test_test_user_is_unprivileged_with_subordinate_ids(test_user: User) -> None:
    assert test_user.uid != 0
    out = test_user.run(["id", "-u"], check=True).stdout
    assert int(out) == test_user.uid
    for path in ("/etc/subuid", "/etc/subgid"):
        ranges = _subids(path, test_user.name)
        assert ranges and all(count >= 65536 for _, count in ranges), (path, ranges)
    # what /root holds is not theirs to read
    assert test_user.run(["ls", "/root"]).returncode != 0


def test_test_user_can_map_its_subordinate_ids(test_user: User) -> None:
    if shutil.which("newuidmap") is None:
        pytest.skip("newuidmap missing: install uidmap (scripts/bootstrap does)")
    proc = test_user.run(["unshare", "--user", "--map-root-user", "--map-auto", "cat", "/proc/self/uid_map"])
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [line.split() for line in proc.stdout.decode().splitlines()]
    assert ["0", str(test_user.uid), "1"] in lines and len(lines) >= 2, lines


def test_python_as_the_users(test_user: User, other_user: User) -> None:
    code = "import os, aufs, sys; print(os.geteuid(), aufs.__version__, sys.argv[1])"
    for user in (test_user, other_user):
        proc = user.python(code, "arg")
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        uid, _, arg = proc.stdout.decode().split()
        assert int(uid) == user.uid and arg == "arg"
    assert test_user.uid != other_user.uid


def test_other_user_cannot_touch_a_private_file(other_user: User, ramdir) -> None:
    secret = ramdir / "secret"
    secret.write_bytes(b"root only")
    os.chmod(secret, 0o600)
    os.chmod(ramdir, 0o755)
    assert other_user.run(["cat", str(secret)]).returncode != 0
    assert other_user.run(["test", "-r", str(secret)]).returncode != 0
