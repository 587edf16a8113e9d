"""A rootless store says so in aufs-store.json and is never opened as something else (issue 10)."""
from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

import aufs

from ..users import User

_AUFS = "import sys, aufs.cli; sys.exit(aufs.cli.main(sys.argv[1:]))"


def _user_store(user: User, home: pathlib.Path) -> None:
    proc = user.python(_AUFS, "--home", str(home), "create", "base")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]


def test_the_description_records_the_rootless_format(test_user: User, user_fuse: None,
                                                     user_dir: pathlib.Path) -> None:
    home = user_dir / "store"
    _user_store(test_user, home)
    meta = json.loads((home / "aufs-store.json").read_text())
    assert meta["rootless"] == "override_stat" and meta["version"] == 2
    assert meta["owner"] == [test_user.uid, test_user.gid] and meta["format"] == "aufs"


def test_root_reads_a_rootless_store_as_rootless_and_never_with_kernel_overlay(
        test_user: User, user_fuse: None, user_dir: pathlib.Path) -> None:
    home = user_dir / "store"
    _user_store(test_user, home)
    with pytest.raises(aufs.StoreFormatMismatch, match="rootless"):
        aufs.Driver(home, backend="overlay")
    driver = aufs.Driver(home)
    try:
        assert driver.backend == "fuse-overlayfs" and driver.status()["rootless"] is True
    finally:
        driver.cleanup()


def test_an_ordinary_user_cannot_write_a_root_store(test_user: User, user_fuse: None,
                                                    user_dir: pathlib.Path) -> None:
    home = user_dir / "root-made"
    aufs.Driver(home, backend="fuse-overlayfs").create("base")
    # handed over to the user: still a store with real owners, which they could not keep
    subprocess.run(["chown", "-R", f"{test_user.uid}:{test_user.gid}", str(home)], check=True)
    proc = test_user.python(_AUFS, "--home", str(home), "create", "x")
    assert proc.returncode != 0
    err = proc.stderr.decode().strip()
    assert "keeps real file owners" in err and len(err.splitlines()) == 1, err


def test_a_newer_description_is_refused(ramdir: pathlib.Path) -> None:
    home = ramdir / "store"
    aufs.Driver(home, backend="fuse-overlayfs").create("base")
    meta = json.loads((home / "aufs-store.json").read_text())
    meta.update(version=3, rootless="something-new")
    (home / "aufs-store.json").write_text(json.dumps(meta))
    with pytest.raises(aufs.StoreFormatMismatch, match="would misread it"):
        aufs.Driver(home)
