"""Pure pieces of the store: id rules, temporary names and their owners, reference tables,
file locks between threads, and the hard-link clone."""
from __future__ import annotations

import os
import pathlib
import subprocess
import threading
import time

import pytest

from aufs import locks
from aufs.clone import clone_tree
from aufs.layout import Layout, is_valid_layer_id
from aufs.owners import ProcessToken, process_alive, process_start_time
from aufs.refcount import RefTable


def test_id_rules() -> None:
    assert is_valid_layer_id("a") and is_valid_layer_id("a" * 128) and is_valid_layer_id("0.-_")
    for bad in ("", "a" * 129, ".a", "-a", "_a", "a/b", "a b", "\u00e9", None, 5, b"ab"):
        assert not is_valid_layer_id(bad)


def test_temp_names_carry_their_owner_and_are_never_ids(tmp_path: pathlib.Path) -> None:
    layout = Layout(tmp_path)
    me = ProcessToken.current()
    path = pathlib.Path(layout.temp_path("create", me, "layer-1"))
    assert str(path.parent) == layout.tmp_dir != layout.layers_dir  # so layers() can never list it
    assert path.name.startswith(f"create.{me}.") and path.name.endswith(".layer-1")
    assert Layout.temp_owner(path.name) == me
    assert Layout.temp_owner("garbage") is None
    assert layout.short_link("x") == layout.short_link("x") != layout.short_link("y")
    assert len(os.path.basename(layout.short_link("a" * 128))) == 20


def test_process_tokens() -> None:
    me = ProcessToken.current()
    assert me.alive() and ProcessToken.parse(str(me)) == me
    assert ProcessToken.parse(f"{me}:nonce") == me
    assert not ProcessToken(me.pid, me.start + 1).alive()  # same pid, another process
    proc = subprocess.Popen(["sleep", "10"])
    child = ProcessToken(proc.pid, process_start_time(proc.pid) or 0)
    assert child.alive()
    proc.kill()
    time.sleep(0.05)
    assert not process_alive(child.pid, child.start)  # a zombie counts as dead
    proc.wait()


def test_ref_table_counts_per_holder_and_drops_dead_ones(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.refs"
    me = f"{ProcessToken.current()}:a"
    other = f"{ProcessToken.current()}:b"
    dead = f"{ProcessToken(os.getpid(), 0)}:c"
    table = RefTable.load(path)
    assert table.total == 0
    table.take(me)
    table.take(me)
    table.take(other)
    table.holders[dead] = 4
    table.save()
    again = RefTable.load(path)
    assert again.holders == {me: 2, other: 1}
    assert not again.give_back(f"{ProcessToken.current()}:stranger")
    assert again.give_back(me) and again.count(me) == 1
    assert again.give_back(me) and again.count(me) == 0 and again.total == 1
    again.give_back(other)
    again.save()
    assert not path.exists()
    path.write_text("not json")
    assert RefTable.load(path).total == 0


def test_lock_excludes_threads_of_one_process(tmp_path: pathlib.Path) -> None:
    lock = tmp_path / "l.lock"
    inside = []
    overlaps = []

    def worker() -> None:
        for _ in range(50):
            with locks.hold(lock):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                time.sleep(0.0001)
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


def test_lock_timeout_and_unlinked_lock_files(tmp_path: pathlib.Path) -> None:
    from aufs.errors import StoreLocked

    lock = tmp_path / "l.lock"
    with locks.hold(lock) as fd:
        with pytest.raises(StoreLocked), locks.hold(lock, timeout=0.05):
            pass
        locks.unlink_held(lock, fd)
        # a waiter never shares the lock with the unlinked file's holder: it gets a new file
        with locks.hold(lock, timeout=0.05):
            assert lock.exists()


def test_clone_tree_shares_inodes_and_copies_dir_attributes(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    os.symlink("f", src / "d" / "link")
    os.mkfifo(src / "fifo")
    os.chmod(src / "d", 0o2711)
    os.setxattr(src / "d", "user.k", b"v")
    os.utime(src / "d" / "e", ns=(1, 2_000_000_000))
    dst = tmp_path / "dst"
    clone_tree(str(src), str(dst))
    assert os.lstat(dst / "d" / "f").st_ino == os.lstat(src / "d" / "f").st_ino
    assert os.readlink(dst / "d" / "link") == "f"
    assert os.lstat(dst / "fifo").st_ino == os.lstat(src / "fifo").st_ino
    assert oct(os.lstat(dst / "d").st_mode & 0o7777) == oct(0o2711)
    assert os.getxattr(dst / "d", "user.k") == b"v"
    assert os.lstat(dst / "d" / "e").st_mtime_ns == 2_000_000_000
    empty = tmp_path / "empty"
    clone_tree(str(src), str(empty), empty=True)
    assert os.listdir(empty) == []
    assert os.lstat(empty).st_mode == os.lstat(src).st_mode
