"""mounted(): every method gives the same, right answer on real mounts.

Each case is a real mount in the test's private namespace. The statx path, the openat2
fallback and the mount-table fallback are each forced in turn (``mounted_via``), and all
three must agree with the expected answer and with ``mounted()`` itself.
"""
from __future__ import annotations

import os
import pathlib
from typing import Callable

import pytest

from aufs import mounts

from .conftest import Mounter

METHODS = mounts.MOUNT_CHECK_METHODS

# Names os.path.ismount and naive mount-table parsers get wrong.
ODD_NAMES = ["with space", "new\nline", "tab\there", "back\\slash", "literal\\040escape",
             "trailing ", "\\134", "caf\u00e9"]


def check_all(path: str | bytes, expected: bool) -> None:
    answers = {m: mounts.mounted_via(path, m) for m in METHODS}
    answers["mounted"] = mounts.mounted(path)
    assert answers == {k: expected for k in answers}, (path, answers)


def build_cases(root: pathlib.Path, mounter: Mounter) -> list[tuple[str, str | bytes, bool]]:
    cases: list[tuple[str, str | bytes, bool]] = []

    self_bind = root / "self"
    self_bind.mkdir()
    mounter.bind(self_bind, self_bind)
    cases += [("dir bind-mounted onto itself", str(self_bind), True)]

    (root / "src" / "sub").mkdir(parents=True)
    (root / "dst").mkdir()
    mounter.bind(root / "src" / "sub", root / "dst")
    cases += [("bind of a subdir on the same fs", str(root / "dst"), True),
              ("source of that bind", str(root / "src" / "sub"), False),
              ("parent of the source", str(root / "src"), False)]

    (root / "file-src").write_text("a")
    (root / "file-dst").write_text("b")
    mounter.bind(root / "file-src", root / "file-dst")
    cases += [("bind-mounted file", str(root / "file-dst"), True),
              ("source file", str(root / "file-src"), False)]

    (root / "tmp").mkdir()
    mounter.tmpfs(root / "tmp")
    (root / "tmp" / "inside").mkdir()
    cases += [("tmpfs", str(root / "tmp"), True),
              ("dir inside tmpfs", str(root / "tmp" / "inside"), False),
              ("tmpfs, trailing slash", str(root / "tmp") + "/", True),
              ("tmpfs via '.'", str(root / "tmp" / "."), True),
              ("tmpfs via '..'", str(root / "tmp" / "inside" / ".."), True)]

    for name in ODD_NAMES:
        odd = root / name
        odd.mkdir()
        mounter.bind(odd, odd)
        (root / (name + "-not")).mkdir()
        cases += [(f"odd name {name!r}", str(odd), True),
                  (f"odd name {name!r}, unmounted", str(root / (name + "-not")), False)]

    raw = os.fsencode(str(root)) + b"/raw\xff\xfe name"
    os.mkdir(raw)
    mounter.bind(raw, raw)
    cases += [("undecodable bytes name", raw, True)]

    (root / "link").symlink_to(root / "tmp")
    (root / "dangling").symlink_to(root / "nowhere")
    cases += [("symlink to a mount point", str(root / "link"), False),
              ("symlink to a mount point, trailing slash", str(root / "link") + "/", True),
              ("dangling symlink", str(root / "dangling"), False),
              ("nonexistent", str(root / "nowhere"), False),
              ("under a regular file", str(root / "file-src" / "x"), False),
              ("the test dir (not a mount)", str(root), False),
              ("the session tmpfs", str(root.parent), True),
              ("/", "/", True),
              ("/proc", "/proc", True)]
    return cases


def test_every_method_agrees_on_every_case(root: pathlib.Path, mounter: Mounter) -> None:
    cases = build_cases(root, mounter)
    failures: dict[str, object] = {}
    for label, path, expected in cases:
        try:
            check_all(path, expected)
        except AssertionError as err:
            failures[label] = err
    assert not failures, failures


def test_relative_paths(root: pathlib.Path, mounter: Mounter) -> None:
    (root / "m").mkdir()
    mounter.bind(root / "m", root / "m")
    (root / "plain").mkdir()
    old = os.getcwd()
    os.chdir(root)
    try:
        check_all("m", True)
        check_all("plain", False)
        check_all(".", False)
        os.chdir(root / "m")
        check_all(".", True)
    finally:
        os.chdir(old)


def test_os_path_ismount_is_wrong_where_we_are_right(root: pathlib.Path, mounter: Mounter) -> None:
    # The reason this module exists: a self-bind keeps st_dev, so ismount misses it.
    (root / "self").mkdir()
    mounter.bind(root / "self", root / "self")
    assert not os.path.ismount(root / "self")
    assert mounts.mounted(root / "self")


def test_unmounted_again_is_false_everywhere(root: pathlib.Path, mounter: Mounter) -> None:
    (root / "t").mkdir()
    mounts.mount("tmpfs", root / "t", "tmpfs")
    check_all(str(root / "t"), True)
    assert mounts.unmount(root / "t")
    check_all(str(root / "t"), False)


def test_accepts_str_bytes_and_pathlike(root: pathlib.Path, mounter: Mounter) -> None:
    (root / "x").mkdir()
    mounter.bind(root / "x", root / "x")
    forms: list[Callable[[pathlib.Path], object]] = [str, os.fsencode, lambda p: p]
    for form in forms:
        assert mounts.mounted(form(root / "x"))  # type: ignore[arg-type]


def test_unknown_method_is_refused(root: pathlib.Path) -> None:
    with pytest.raises(ValueError):
        mounts.mounted_via(root, "nonsense")


def test_search_permission_error_is_raised_not_hidden(root: pathlib.Path) -> None:
    # As root, DAC does not stop us; a real error must still surface, e.g. ELOOP is absent
    # but EACCES is not: use a path through a file that is not a directory (ENOTDIR -> False)
    # and a name longer than NAME_MAX (ENAMETOOLONG -> False) as the documented "absent" cases.
    assert mounts.mounted(root / ("x" * 300)) is False
    assert mounts.mounted(b"") is False


def test_fallback_chain_answers_like_statx(root: pathlib.Path, mounter: Mounter) -> None:
    # What mounted() does when statx cannot answer: the real openat2 / mount-table calls.
    import errno

    for label, path, expected in build_cases(root, mounter):
        raw = os.fsencode(path)
        got = mounts._mounted_fallback(raw, -errno.EOPNOTSUPP)
        assert got is expected, label


def test_embedded_nul_is_refused(root: pathlib.Path) -> None:
    for method in METHODS:
        with pytest.raises(ValueError):
            mounts.mounted_via(str(root) + "\0/x", method)
    with pytest.raises(ValueError):
        mounts.mounted("/\0")
    with pytest.raises(ValueError):
        mounts.mount("tmpfs", str(root) + "\0", "tmpfs")


def test_reentrant_under_threads(root: pathlib.Path, mounter: Mounter) -> None:
    # cffi releases the GIL around every C call: parallel callers must not share state.
    import concurrent.futures

    cases = build_cases(root, mounter)
    with open("/proc/self/mountinfo", "rb") as f:
        table = mounts.parse_mountinfo(f.read())

    def work(_: int) -> None:
        for _ in range(20):
            for label, path, expected in cases:
                assert mounts.mounted(path) is expected, label
                assert mounts.mounted_via(path, "openat2") is expected, label
            assert list(mounts.mount_table()) == table

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(8)))


def test_mount_point_hidden_by_a_later_mount(root: pathlib.Path, mounter: Mounter) -> None:
    # a/b is a mount point, then a new tmpfs covers a: the path a/b now names a plain
    # directory of the new tmpfs, though the mount table still lists the hidden a/b mount.
    (root / "a").mkdir()
    mounter.tmpfs(root / "a")
    (root / "a" / "b").mkdir()
    mounter.tmpfs(root / "a" / "b")
    mounter.tmpfs(root / "a")
    (root / "a" / "b").mkdir()
    assert str(root / "a" / "b") in {m.mountpoint for m in mounts.mount_table()}
    check_all(str(root / "a" / "b"), False)
    check_all(str(root / "a"), True)
    # and stacked mounts on one point, and a bind of the covered mount's subtree elsewhere
    (root / "c").mkdir()
    mounter.tmpfs(root / "c")
    mounter.tmpfs(root / "c")
    mounter.tmpfs(root / "c")
    check_all(str(root / "c"), True)
