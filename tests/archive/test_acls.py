"""Issue 9, item 9: POSIX ACLs, as bsdtar, star and GNU tar store them.

A tree with access and default ACLs is made here with setfacl (a file of mode 0573 whose
``group::`` is ``r--`` and ``mask::`` ``rwx``: the mode's group bits are the mask's), packed by
bsdtar (``SCHILY.acl.*`` text, header mode from ``group::``) and by GNU tar (the text and
``SCHILY.xattr.system.posix_acl_*``, header mode from the mask; and with ``--acls`` alone, text
naming users without ids). aufs must restore each as ``bsdtar -x -p --acls`` does (same mode,
same ACLs), and ``diff`` must write them so that GNU tar ``--acls`` and bsdtar ``--acls`` restore
them again. Ids are numeric, as for owners: a name without an id (GNU tar's text) is looked up
on this host, as both tools do.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

import aufs

TOOLS = ("setfacl", "bsdtar", "tar")

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (scripts/bootstrap installs acl and libarchive-tools)")

ACL_KEYS = ("system.posix_acl_access", "system.posix_acl_default")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def tree(ramdir: pathlib.Path) -> pathlib.Path:
    src = ramdir / "src"
    (src / "d").mkdir(parents=True)
    f = src / "f"
    f.write_bytes(b"hi")
    f.chmod(0o573)
    sh("setfacl", "-m", "u:1000:rw-,g:2000:r-x,g::r--,m::rwx", str(f))
    sh("setfacl", "-m", "u:1002:rwx", str(src / "d"))
    sh("setfacl", "-d", "-m", "u:1001:r-x,g:2001:rw-", str(src / "d"))
    (src / "d" / "sub").mkdir()  # inherits the default ACL (so extracting it in d changes nothing)
    (src / "d" / "sub" / "g").write_bytes(b"g")
    (src / "plain").write_bytes(b"p")  # no ACL: nothing may appear
    assert os.stat(f).st_mode & 0o7777 == 0o573
    return src


def acls(root: pathlib.Path) -> dict[str, tuple[int, dict[str, bytes]]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            got = {}
            for key in ACL_KEYS:
                try:
                    got[key] = os.getxattr(p, key, follow_symlinks=False)
                except OSError:
                    pass
            out[os.path.relpath(p, root)] = (os.lstat(p).st_mode & 0o7777, got)
    return out


ARCHIVERS = {
    "bsdtar": lambda src, out: sh("bsdtar", "--acls", "-cf", str(out), "-C", str(src), "."),
    "gnu-tar-xattrs": lambda src, out: sh("tar", "--acls", "--xattrs", "--format=posix", "-cf", str(out),
                                          "-C", str(src), "."),
    "gnu-tar-acls": lambda src, out: sh("tar", "--acls", "--format=posix", "-cf", str(out), "-C", str(src), "."),
}



@pytest.mark.parametrize("archiver", list(ARCHIVERS))
def test_acls_restored_as_bsdtar_does(tree: pathlib.Path, ramdir: pathlib.Path, driver: aufs.Driver,
                                      archiver: str) -> None:
    archive = ramdir / "in.tar"
    ARCHIVERS[archiver](tree, archive)
    ref = ramdir / "ref"
    ref.mkdir()
    sh("bsdtar", "-x", "-p", "--acls", "-f", str(archive), "-C", str(ref))
    expected = acls(ref)
    assert expected == acls(tree)  # the reference restores the tree as it was
    assert expected["f"][0] == 0o573 and expected["d"][1].keys() == set(ACL_KEYS)

    driver.create("l")
    driver.apply_diff("l", archive)
    assert acls(pathlib.Path(driver.diff_dir("l"))) == expected


@pytest.mark.parametrize("reader", ["bsdtar", "gnu-tar"])
def test_diff_writes_acls_that_tar_tools_restore(tree: pathlib.Path, ramdir: pathlib.Path, driver: aufs.Driver,
                                                 reader: str) -> None:
    archive = ramdir / "in.tar"
    ARCHIVERS["bsdtar"](tree, archive)
    driver.create("l")
    driver.apply_diff("l", archive)
    out = ramdir / "diff.tar"
    driver.diff("l", str(out))
    assert b"SCHILY.acl.access=" in out.read_bytes()
    back = ramdir / "back"
    back.mkdir()
    if reader == "bsdtar":
        sh("bsdtar", "-x", "-p", "--acls", "-f", str(out), "-C", str(back))
    else:
        sh("tar", "--acls", "-x", "-p", "-f", str(out), "-C", str(back))
    assert acls(back) == acls(tree)
    # and aufs reads its own output back the same
    driver.create("again")
    driver.apply_diff("again", out)
    assert acls(pathlib.Path(driver.diff_dir("again"))) == acls(tree)
