"""Issue 9, item 18 (the rest): errors of the field test get the right kind and exit code.

* EPERM/EACCES while extracting (an unprivileged user extracting a tar whose entries belong to
  root; a target the user may not write) is the host refusing, an ``OSError`` (CLI exit 10),
  not "bad layer tar" (``ArchiveError``, exit 7). A hard link to a directory stays an
  ``ArchiveError``: the archive asks for what no filesystem does;
* ``IsADirectoryError`` from apply names the path;
* a text-mode file or ``io.StringIO`` as a tar source or ``diff`` target is a ``TypeError``
  saying "binary file expected";
* ``PathTooLong`` is exit 10, like the other OS errors.
"""
from __future__ import annotations

import io
import json
import os
import pathlib

import pytest

import aufs
from aufs import ArchiveError, PathTooLong
from aufs.cli import exit_code_for

from ..users import User
from .apply_helpers import entry, make_tar


@pytest.fixture
def driver(ramdir: pathlib.Path):
    d = aufs.Driver(ramdir / "store")
    d.create("l")
    try:
        yield d
    finally:
        d.cleanup()


APPLY_AS_USER = """
import json, sys
from aufs.apply import apply_tar
from aufs.cli import exit_code_for
from aufs.whiteouts import WhiteoutFormat
try:
    apply_tar(sys.argv[1], sys.argv[2], WhiteoutFormat.OVERLAY)
    print(json.dumps({"ok": True}))
except Exception as exc:
    print(json.dumps({"kind": type(exc).__name__, "exit": exit_code_for(exc), "errno": getattr(exc, "errno", None),
                      "text": str(exc), "archive": isinstance(exc, __import__("aufs").ArchiveError)}))
"""


@pytest.mark.parametrize("case", ["root-owned-entry", "unwritable-target"])
def test_eperm_eacces_while_extracting_is_an_os_error(test_user: User, ramdir: pathlib.Path, case: str) -> None:
    target = ramdir / "target"
    target.mkdir()
    os.chown(target, test_user.uid, test_user.gid)
    if case == "root-owned-entry":  # the user may not give a file to root: EPERM
        tar = make_tar([entry("f", data=b"x", uid=0, gid=0), entry("g", data=b"y", uid=0, gid=0)])
        (target / "note").write_bytes(b"")  # not empty: nothing is special about it
        os.chown(target / "note", test_user.uid, test_user.gid)
    else:  # a directory the user may not write into: EACCES
        (target / "d").mkdir(mode=0o555)
        tar = make_tar([entry("d/f", data=b"x", uid=test_user.uid, gid=test_user.gid)])
    src = ramdir / "layer.tar"
    src.write_bytes(tar)
    os.chmod(ramdir, 0o755)
    proc = test_user.python(APPLY_AS_USER, str(target), str(src))
    assert proc.returncode == 0, proc.stderr.decode()
    got = json.loads(proc.stdout)
    assert got["errno"] in (1, 13), got  # EPERM, EACCES
    assert not got["archive"], got
    assert got["exit"] == 10, got


def test_a_hard_link_to_a_directory_stays_an_archive_error(ramdir: pathlib.Path) -> None:
    from aufs.apply import apply_tar
    from aufs.whiteouts import WhiteoutFormat

    with pytest.raises(ArchiveError, match="'h'"):
        apply_tar(ramdir, make_tar([entry("d", "dir"), entry("h", "hardlink", link="d")]), WhiteoutFormat.OVERLAY)


def test_is_a_directory_error_names_the_path(driver: aufs.Driver, ramdir: pathlib.Path) -> None:
    with pytest.raises(IsADirectoryError) as info:
        driver.apply_diff("l", str(ramdir))
    assert info.value.filename == str(ramdir)
    assert str(ramdir) in str(info.value)


@pytest.mark.parametrize("make", [lambda p: io.StringIO("x"), lambda p: open(p, "w+")], ids=["StringIO", "text-file"])
def test_text_mode_source_is_a_type_error(driver: aufs.Driver, ramdir: pathlib.Path, make) -> None:
    source = make(ramdir / "t.txt")
    try:
        with pytest.raises(TypeError, match="binary file expected"):
            driver.apply_diff("l", source)
    finally:
        source.close()


@pytest.mark.parametrize("make", [lambda p: io.StringIO(), lambda p: open(p, "w")], ids=["StringIO", "text-file"])
def test_text_mode_diff_target_is_a_type_error(driver: aufs.Driver, ramdir: pathlib.Path, make) -> None:
    target = make(ramdir / "t.txt")
    try:
        with pytest.raises(TypeError, match="binary file expected"):
            driver.diff("l", target)
    finally:
        target.close()


def test_path_too_long_is_exit_10() -> None:
    assert exit_code_for(PathTooLong("too long", path="/x")) == 10


@pytest.mark.parametrize("kind", ["fifo", "symlink", "char"])
def test_a_user_xattr_where_the_kernel_allows_none_stays_an_archive_error(ramdir: pathlib.Path, kind: str) -> None:
    """EPERM from the kernel here is the archive's fault: user.* xattrs live on files and dirs only."""
    from aufs.apply import apply_tar
    from aufs.whiteouts import WhiteoutFormat

    tar = make_tar([entry("x", kind, link="t", xattrs={"user.a": b"1"})])
    with pytest.raises(ArchiveError, match="'x'"):
        apply_tar(ramdir, tar, WhiteoutFormat.OVERLAY)
