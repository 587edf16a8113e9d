"""Other local users for the tests: run a command or a Python snippet as one of them.

``scripts/bootstrap`` creates two users (issue 9): ``aufs-test``, unprivileged, with two
subordinate id ranges in /etc/subuid and /etc/subgid (rootless use through newuidmap), and
``aufs-other``, a second, unrelated local user. The fixtures :func:`test_user` and
:func:`other_user` give a :class:`User` that runs things as that user (``runuser``, in this
test session's mount namespace, so it sees the test's mounts), or skip the test with the reason
when the user does not exist (bootstrap not run, or not as root).

:meth:`User.python` needs an interpreter the user may execute, with aufs and its dependencies
importable. The test interpreter itself often is not (pyenv keeps it below /root, 0700): then
its installation is bind-mounted, read-only, at a directory everyone may traverse, for this
session only, and the user runs it from there with the same import path.
"""
from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

TEST_USER = "aufs-test"
OTHER_USER = "aufs-other"
ROOT = pathlib.Path(__file__).resolve().parent.parent
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class User:
    """A local user the tests act as."""

    name: str
    uid: int
    gid: int
    home: str
    _python: list[str] = field(default_factory=list, repr=False)
    _pythonpath: str = field(default="", repr=False)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A login-like environment for the user (nothing of the test run's own)."""
        env = {"PATH": _SAFE_PATH, "HOME": self.home, "USER": self.name, "LOGNAME": self.name,
               "LANG": "C.UTF-8"}
        env.update(extra or {})
        return env

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str = "/",
            input: bytes | None = None, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` as the user; stdout and stderr captured (bytes)."""
        full_env = self.env(env)
        command = ["runuser", "-u", self.name, "--", "env", "-i",
                   *(f"{k}={v}" for k, v in full_env.items()), *argv]
        return subprocess.run(command, cwd=cwd, input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, check=check)

    def python(self, code: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[bytes]:
        """Run the Python ``code`` as the user, with this checkout's aufs importable."""
        if not self._python:
            pytest.skip(f"no Python interpreter that user {self.name} may run with aufs importable")
        extra = {"PYTHONPATH": self._pythonpath, "PYTHONNOUSERSITE": "1",
                 "PYTHONDONTWRITEBYTECODE": "1"}
        extra.update(env or {})
        return self.run([*self._python, "-c", code, *args], env=extra, timeout=timeout, check=check)


def _lookup(name: str) -> pwd.struct_passwd:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip(f"acting as user {name} needs root and runuser (util-linux)")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"user {name} does not exist: run scripts/bootstrap as root (make setup)")


def _reachable(user: User, argv: list[str], pythonpath: str) -> bool:
    probe = "import aufs, aufs._native, cffi"
    proc = user.run([*argv, "-c", probe], env={"PYTHONPATH": pythonpath, "PYTHONNOUSERSITE": "1",
                                               "PYTHONDONTWRITEBYTECODE": "1"}, timeout=60)
    return proc.returncode == 0


def _import_path(prefix_from: str = "", prefix_to: str = "") -> str:
    """This process's import path (the checkout first), rewritten below a moved prefix."""
    parts = [str(ROOT)]
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        if prefix_from and (real == prefix_from or real.startswith(prefix_from + "/")):
            real = prefix_to + real[len(prefix_from):]
        parts.append(real)
    return ":".join(dict.fromkeys(parts))


class _Interpreter:
    """Finds (once per session) how other users can run this test interpreter."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.pythonpath = ""
        self._mount: str | None = None
        self._tried = False

    def setup(self, user: User) -> None:
        if self._tried:
            return
        self._tried = True
        executable = os.path.realpath(sys.executable)
        pythonpath = _import_path()
        if _reachable(user, [executable], pythonpath):
            self.argv, self.pythonpath = [executable], pythonpath
            return
        # the installation sits below a directory the user may not traverse: show it to them
        # at a traversable place, read-only, in this session's private mount namespace
        base = os.path.realpath(sys.base_prefix)
        base_exe = os.path.realpath(getattr(sys, "_base_executable", "") or executable)
        if not base_exe.startswith(base + "/"):
            return
        holder = tempfile.mkdtemp(prefix="aufs-test-python-")
        os.chmod(holder, 0o755)
        target = os.path.join(holder, "prefix")
        os.mkdir(target)
        bound = subprocess.run(["mount", "--bind", "-o", "ro", base, target], capture_output=True)
        if bound.returncode != 0:
            os.rmdir(target)
            os.rmdir(holder)
            return
        self._mount = target
        argv = [target + base_exe[len(base):]]
        pythonpath = _import_path(base, target)
        stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
        if stdlib.startswith(base + "/"):
            pythonpath += ":" + target + stdlib[len(base):]
        if _reachable(user, argv, pythonpath):
            self.argv, self.pythonpath = argv, pythonpath

    def close(self) -> None:
        if self._mount is not None:
            subprocess.run(["umount", "-l", self._mount], check=False)
            os.rmdir(self._mount)
            os.rmdir(os.path.dirname(self._mount))
            self._mount = None


@pytest.fixture(scope="session")
def _user_python() -> Iterator[_Interpreter]:
    interpreter = _Interpreter()
    try:
        yield interpreter
    finally:
        interpreter.close()


def _user(name: str, interpreter: _Interpreter) -> User:
    entry = _lookup(name)
    user = User(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/")
    interpreter.setup(user)
    user._python, user._pythonpath = list(interpreter.argv), interpreter.pythonpath
    return user


@pytest.fixture
def test_user(_user_python: _Interpreter) -> User:
    """``aufs-test``: unprivileged, with subordinate uid/gid ranges (skips if missing)."""
    return _user(TEST_USER, _user_python)


@pytest.fixture
def other_user(_user_python: _Interpreter) -> User:
    """``aufs-other``: a second local user with no privileges (skips if missing)."""
    return _user(OTHER_USER, _user_python)
