"""Property test: random layer stacks and random file operations through the mount, compared
with a small reference model of union semantics, on every backend.

The model is the merged view itself (path -> file content, mode and owner, or directory mode
and owner): union semantics say that whatever was done through the top of a stack, a fresh
mount of the same stack, or of a new empty layer on top of it, shows exactly that view.

:func:`make_machine` also runs in a userns store, as an ordinary user in the store's user
namespace (``tests/rootless/test_userns_model.py``), where owners are ids of that namespace.
"""
from __future__ import annotations

import os
import pathlib
import stat
import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aufs.store import Driver

from ..archive.apply_helpers import entry, make_tar

NAMES = ["a", "b", "d"]
PATHS = [n for n in NAMES] + [f"{p}/{n}" for p in NAMES for n in NAMES] + ["d/d/a", "d/a/b"]
FILE_MODES = [0o644, 0o600, 0o755, 0o4755]
OWNERS = [(0, 0), (1000, 1000), (70000, 5)]  # 70000: in the second subordinate range of aufs-test
DIR_MODES = [0o755, 0o700, 0o1777]
MAX_LAYERS = 6

Entry = tuple[str, int, bytes, int, int]  # ("file", mode, content, uid, gid) or ("dir", mode, b"", uid, gid)


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _view(root: str) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st_ = os.lstat(full)
            if stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st_.st_mode), b"", st_.st_uid, st_.st_gid)
            else:
                assert stat.S_ISREG(st_.st_mode), f"unexpected entry {rel} {oct(st_.st_mode)}"
                with open(full, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st_.st_mode), f.read(), st_.st_uid, st_.st_gid)
    return out


def make_machine(base_dir: pathlib.Path, backend: str, rootless: str | None = None) -> type:
    """The state machine, on a new store below ``base_dir`` per example; with ``rootless``
    (``"userns"`` or ``"override_stat"``, run by an ordinary user) one store of that kind at
    ``base_dir``, a new chain per example (a process works in one userns store's namespace)."""
    class UnionMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            if rootless is None:
                self.driver = Driver(base_dir / uuid.uuid4().hex[:8], backend=backend)
            else:
                self.driver = Driver(base_dir, backend=backend, rootless=rootless)
            self.prefix = uuid.uuid4().hex[:8]
            # an override_stat store's mount shows every file as its user's (aufs.rootless)
            self.shown_owner = (os.getuid(), os.getgid()) if rootless == "override_stat" else None
            self.model: dict[str, Entry] = {}
            self.depth = 1
            self.top = f"{self.prefix}-l0"
            self.driver.create(self.top)
            self.root = self.driver.get(self.top)

        def teardown(self) -> None:
            self.driver.cleanup()

        def _is_dir(self, path: str) -> bool:
            return path == "" or self.model.get(path, ("",))[0] == "dir"

        def _path(self, path: str) -> str:
            return os.path.join(self.root, path)

        @precondition(lambda self: self.depth < MAX_LAYERS)
        @rule()
        def push_layer(self) -> None:
            """A new empty layer on top: same view."""
            self.driver.put(self.top)
            new = f"{self.prefix}-l{self.depth}"
            self.driver.create(new, parent=self.top)
            self.top, self.depth = new, self.depth + 1
            self.root = self.driver.get(self.top)

        @precondition(lambda self: self.depth < MAX_LAYERS)
        @rule(path=st.sampled_from(PATHS), gone=st.sampled_from(["b", "d"]), deep=st.booleans(),
              content=st.binary(max_size=12))
        def push_opaque_layer(self, path: str, gone: str, deep: bool, content: bytes) -> None:
            """A new layer from a tar that marks ``path`` opaque and also whites out names in it
            (legal OCI, issue 9 item 11): the directory shows only the layer's own entries."""
            if not self._is_dir(_parent(path)) or self.model.get(path, ("dir",))[0] != "dir":
                return
            members = [entry(path, "dir"), entry(f"{path}/.wh..wh..opq"), entry(f"{path}/.wh.{gone}"),
                       entry(f"{path}/a", data=content)]
            if deep:
                members += [entry(f"{path}/d", "dir"), entry(f"{path}/d/.wh.a")]
            self.driver.put(self.top)
            new = f"{self.prefix}-l{self.depth}"
            self.driver.create(new, parent=self.top)
            self.driver.apply_diff(new, make_tar(members))
            self.top, self.depth = new, self.depth + 1
            self.root = self.driver.get(self.top)
            for p in [p for p in self.model if p.startswith(path + "/")]:
                del self.model[p]
            self.model[path] = ("dir", 0o755, b"", 0, 0)
            self.model[f"{path}/a"] = ("file", 0o644, content, 0, 0)
            if deep:
                self.model[f"{path}/d"] = ("dir", 0o755, b"", 0, 0)

        @rule()
        def remount(self) -> None:
            """Unmount and mount the same stack again: writes and whiteouts persisted."""
            self.driver.put(self.top)
            assert not self.driver.is_mounted(self.top)
            self.root = self.driver.get(self.top)

        @rule(path=st.sampled_from(PATHS), content=st.binary(max_size=12))
        def write(self, path: str, content: bytes) -> None:
            if not self._is_dir(_parent(path)) or self._is_dir(path):
                return
            _, mode, _, uid, gid = self.model.get(path, ("file", 0o644, b"", 0, 0))
            with open(self._path(path), "wb") as f:
                f.write(content)
            os.chmod(self._path(path), mode)
            self.model[path] = ("file", mode, content, uid, gid)

        @rule(path=st.sampled_from(PATHS))
        def unlink(self, path: str) -> None:
            if self.model.get(path, ("",))[0] != "file":
                return
            os.unlink(self._path(path))
            del self.model[path]

        @rule(path=st.sampled_from(PATHS))
        def rmdir(self, path: str) -> None:
            if not path or self.model.get(path, ("",))[0] != "dir":
                return
            if any(p.startswith(path + "/") for p in self.model):
                return
            os.rmdir(self._path(path))
            del self.model[path]

        @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(DIR_MODES))
        def mkdir(self, path: str, mode: int) -> None:
            if not self._is_dir(_parent(path)) or path in self.model:
                return
            os.mkdir(self._path(path))
            os.chmod(self._path(path), mode)
            self.model[path] = ("dir", mode, b"", 0, 0)

        @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
        def rename_file(self, src: str, dst: str) -> None:
            if src == dst or self.model.get(src, ("",))[0] != "file":
                return
            if not self._is_dir(_parent(dst)) or self._is_dir(dst):
                return
            os.rename(self._path(src), self._path(dst))
            self.model[dst] = self.model.pop(src)

        @rule(path=st.sampled_from(PATHS), file_mode=st.sampled_from(FILE_MODES), dir_mode=st.sampled_from(DIR_MODES))
        def chmod(self, path: str, file_mode: int, dir_mode: int) -> None:
            entry = self.model.get(path)
            if entry is None:
                return
            mode = dir_mode if entry[0] == "dir" else file_mode
            os.chmod(self._path(path), mode)
            self.model[path] = (entry[0], mode, *entry[2:])

        @precondition(lambda self: self.shown_owner is None)  # an ordinary user gives nothing away
        @rule(path=st.sampled_from(PATHS), owner=st.sampled_from(OWNERS))
        def chown(self, path: str, owner: tuple[int, int]) -> None:
            entry = self.model.get(path)
            if entry is None:
                return
            os.chown(self._path(path), *owner)
            mode = entry[1]
            if entry[0] == "file":
                mode &= ~0o4000  # a new owner takes no setuid bit along
            self.model[path] = (entry[0], mode, entry[2], *owner)

        @invariant()
        def view_matches_model(self) -> None:
            model = self.model
            if self.shown_owner is not None:
                model = {p: (*e[:3], *self.shown_owner) for p, e in model.items()}
            assert _view(self.root) == model

    return UnionMachine


def test_union_view_matches_model(ramdir: pathlib.Path, backend_name: str) -> None:
    machine = make_machine(ramdir, backend_name)
    run_state_machine_as_test(machine, settings=settings(stateful_step_count=30))
