"""Names at the edge of PATH_MAX in every position an archive can put one (issue 9, item 3).

The C writer keeps names in 4,096-byte buffers. A name of 4,095 bytes fits (with its NUL), one
of 4,096 or more must be refused as :class:`aufs.ArchiveError` before it reaches C (never an
``IndexError`` from cffi, never a copy past a buffer). Lengths 4,090-4,100 are tried as the
entry's path, its hard-link target, a symlink's target, a whiteout, an AUFS pseudo-link (whose
staged name is longer than the archive's) and the entry's parent. ``make fuzz-asan`` runs this
file against the extension built with ASan and UBSan, so an overflow aborts the run.
"""
from __future__ import annotations

import os
import pathlib

import pytest

import aufs
from aufs import ArchiveError
from aufs.apply import apply_tar
from aufs.whiteouts import WhiteoutFormat

from .apply_helpers import entry, make_tar, snapshot

LENGTHS = range(4090, 4101)
# the longest name a kernel path call accepts (PATH_MAX counts the NUL)
LONGEST = 4095
PLNK = ".wh..wh.plnk"


def long_name(length: int, *, last: str = "") -> str:
    """A relative path of exactly ``length`` bytes: 200-byte directories, then ``last`` (if
    given) as the final component, padded so the total is right."""
    parts: list[str] = []
    size = -1
    tail = len(last) + 1 if last else 0
    while size + 201 + tail < length:
        parts.append(f"{len(parts):03d}".ljust(200, "d"))
        size += 201
    rest = length - (size + 1) - tail
    if rest > 0:
        parts.append("x" * rest)
    elif rest < 0:
        raise AssertionError(length)
    if last:
        parts.append(last)
    name = "/".join(parts)
    assert len(name.encode()) == length, (len(name), length)
    return name


def case(position: str, length: int) -> list:
    """Entries that put a name of ``length`` bytes in ``position``."""
    if position == "path":
        return [entry(long_name(length), data=b"x")]
    if position == "parent":  # the parent is `length` bytes, the entry one more component
        return [entry(long_name(length) + "/f", data=b"x")]
    if position == "link":
        name = long_name(length)
        return [entry(name, data=b"x"), entry("h", "hardlink", link=name)]
    if position == "symlink":
        return [entry("s", "symlink", link=long_name(length))]
    if position == "whiteout":
        return [entry(long_name(length, last=".wh.gone"))]
    if position == "pseudo-link":
        # the archive: the hard link names the pseudo-link by a path of `length`
        # bytes; the writer stages it under a name 39 bytes longer
        rest = long_name(length - len(PLNK) - 1)
        return [entry(f"{PLNK}/{rest}", data=b"real"), entry("a/b/c", "hardlink", link=f"{PLNK}/{rest}")]
    raise AssertionError(position)


POSITIONS = ["path", "parent", "link", "symlink", "whiteout", "pseudo-link"]


def fits(position: str, length: int) -> bool:
    """Whether the case is a layer aufs must extract (GNU tar extracts it too)."""
    if position == "parent":
        return length + 2 <= LONGEST
    if position == "pseudo-link":
        # the link's target names the pseudo-link by a path of `length` bytes: the writer
        # stages it under a name of the same length, so the same limit holds
        return length <= LONGEST
    return length <= LONGEST


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("position", POSITIONS)
def test_name_length_at_path_max(ramdir: pathlib.Path, position: str, length: int) -> None:
    target = ramdir / "t"
    target.mkdir()
    tar = make_tar(case(position, length))
    if fits(position, length):
        apply_tar(target, tar, WhiteoutFormat.OVERLAY)
        return
    with pytest.raises(ArchiveError) as info:
        apply_tar(target, tar, WhiteoutFormat.OVERLAY)
    assert info.value.path, "the error names the entry"


def _diff_dir(driver: aufs.Driver, layer_id: str) -> str:
    return str(driver.diff_dir(layer_id)) if hasattr(driver, "diff_dir") else str(
        driver._layout.diff_dir(layer_id))  # before issue 13's Driver.diff_dir


def test_pseudo_link_of_the_report(ramdir: pathlib.Path) -> None:
    """The archive of the report: `.wh..wh.plnk/x`, then `a/b/c` hard-linked to the
    pseudo-link directory plus ~4,044 bytes, from a deep parent. It was staged under a name 39
    bytes longer than the C side checked and overflowed a stack buffer; now it extracts as GNU
    tar would, and one byte longer (4,096+ bytes in all) is an ArchiveError naming the entry,
    the layer left as it was."""
    driver = aufs.Driver(ramdir / "store")
    try:
        driver.create("base")
        driver.apply_diff("base", make_tar([entry("keep", data=b"kept")]))
        deep = "/".join(["p" * 200] * 5) + "/c"
        for length in range(4050, 4101):  # the link target's length (4,057 in the report)
            rest = long_name(length - len(PLNK) - 1)
            tar = make_tar([entry(f"{PLNK}/x", data=b"x"), entry(f"{PLNK}/{rest}", data=b"real"),
                            entry(deep, "hardlink", link=f"{PLNK}/{rest}")])
            before = snapshot(_diff_dir(driver, "base"))
            if length <= LONGEST:
                driver.apply_diff("base", tar)
                layer = pathlib.Path(_diff_dir(driver, "base"))
                assert (layer / deep).read_bytes() == b"real"
                assert not [n for n in os.listdir(layer) if n.startswith(".wh.")]
                continue
            with pytest.raises(ArchiveError) as info:
                driver.apply_diff("base", tar)
            # the pseudo-link's own entry is the first too long (named as far as it fits)
            assert f"{PLNK}/{rest}".startswith(info.value.path or "-"), info.value.path
            assert len(info.value.path or "") >= LONGEST
            assert snapshot(_diff_dir(driver, "base")) == before
    finally:
        driver.cleanup()


def test_names_past_4096_are_archive_errors_not_index_errors(ramdir: pathlib.Path) -> None:
    """Hard-link targets of 4,097+ bytes into the pseudo-link directory (the staged name
    would not even fit the C buffer) and plain names far past PATH_MAX."""
    for length in (4097, 4200, 8192, 70000):
        target = ramdir / f"t{length}"
        target.mkdir()
        for entries in ([entry(f"{PLNK}/x", data=b"x"), entry("y", "hardlink", link=f"{PLNK}/" + long_name(length))],
                        [entry(long_name(length), data=b"x")],
                        [entry("s", "symlink", link=long_name(length))]):
            with pytest.raises(ArchiveError):
                apply_tar(target, make_tar(entries), WhiteoutFormat.OVERLAY)
