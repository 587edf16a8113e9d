"""Suite-wide fixtures and guards.

* The whole session runs in a private mount namespace. ``make test`` starts pytest under
  ``unshare -m --propagation private``; if pytest was started some other way, this module
  unshares the namespace itself before any test runs, so no test mount can reach the host.
* ``ramdir``: a fresh directory on a session-wide tmpfs (fast and not subject to the VM disk's
  noise), for tests that build stores or extract archives.
* At the end of the session no mount may remain under the test directories.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import pathlib
import tempfile
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from aufs.store import Driver

# CI explores a fixed sequence of examples (derandomize): a red CI then always means a
# regression, never the luck of the draw; `dev` and `thorough` explore anew on every run.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=60,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_CLONE_NEWNS = 0x00020000
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


def _in_private_namespace() -> bool:
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        return False


def _enter_private_namespace() -> None:
    """unshare(CLONE_NEWNS) + make every mount private, as `unshare -m --propagation private`."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS) failed: {os.strerror(err)}")
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"making / private failed: {os.strerror(err)}")


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() == 0 and not _in_private_namespace():
        _enter_private_namespace()


_SESSION_ROOT = pathlib.Path(tempfile.gettempdir()) / f"aufs-tests-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _mountpoints() -> list[str]:
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            field = line.split(b" ")[4]
            points.append(
                field.decode("utf-8", "surrogateescape")
                .replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
            )
    return points


@pytest.fixture(scope="session")
def ram_root() -> Iterator[pathlib.Path]:
    """A tmpfs mounted for the whole session (in the private namespace)."""
    _SESSION_ROOT.mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    mounted = libc.mount(b"tmpfs", os.fsencode(_SESSION_ROOT), b"tmpfs", 0, b"mode=0755,size=8g") == 0
    try:
        yield _SESSION_ROOT
    finally:
        if mounted:
            libc.umount2(os.fsencode(_SESSION_ROOT), 2)  # MNT_DETACH
        try:
            _SESSION_ROOT.rmdir()
        except OSError:
            pass


@pytest.fixture
def ramdir(ram_root: pathlib.Path) -> pathlib.Path:
    """A fresh empty directory on the session tmpfs."""
    path = ram_root / uuid.uuid4().hex[:12]
    path.mkdir()
    return path


@pytest.fixture
def home(ramdir: pathlib.Path) -> pathlib.Path:
    """Where a test's store lives (created by the Driver)."""
    return ramdir / "store"


@pytest.fixture
def driver(home: pathlib.Path, backend_name: str) -> Iterator[Driver]:
    """A store on ``backend_name`` (a fixture each suite parametrises over its backends)."""
    from .backends import open_driver

    yield from open_driver(home, backend_name)


@pytest.fixture(autouse=True)
def _no_leaked_mounts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test that leaves a mount behind under its own directories."""
    before = set(_mountpoints())
    yield
    leaked = [
        p
        for p in set(_mountpoints()) - before
        if p.startswith(str(_SESSION_ROOT) + "/") or p.startswith(tempfile.gettempdir() + "/pytest-of-")
    ]
    if leaked:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        for p in sorted(leaked, key=len, reverse=True):
            libc.umount2(os.fsencode(p), 2)
        pytest.fail(f"test left mounts behind: {sorted(leaked)}")


# Other local users (created by scripts/bootstrap): the `test_user` and `other_user` fixtures.
from .users import _user_python, other_user, test_user  # noqa: E402,F401
