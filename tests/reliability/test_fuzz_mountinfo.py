"""Fuzzing of the C mount-table parser for memory safety (run under ASan/UBSan by ``make fuzz-asan``).

Unlike the parser's correctness tests (tests/native/test_mountinfo.py), these call the C
functions directly with buffers of *exactly* the input's size and with output buffers from
zero bytes up, at every start position, so an out-of-bounds read or write lands in a
sanitizer's red zone instead of in Python's slack. Under ``make fuzz-asan`` the extension is
built with ``-fsanitize=address,undefined`` and Python allocates with plain malloc, so ASan
sees every buffer; in the ordinary suite the same tests check the results' bounds.

This module must not use relative imports: ``make fuzz-asan`` runs it against a sanitized copy
of the package with ``--import-mode=importlib``.
"""
from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aufs import _syscalls, mounts

ffi: Any = _syscalls.ffi
lib: Any = _syscalls.lib
NFIELDS = int(lib.AUFS_MI_NFIELDS)

VALID = [
    b"22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
    b"36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue",
    b"61 22 0:40 / /tmp/a\\040b\\011c\\012d\\134e rw - tmpfs tmpfs rw,size=1024k",
    b"7 1 0:5 / / rw - overlay overlay rw,lowerdir=/l/A:/l/B,upperdir=/u,workdir=/w",
    b"1 0 0:1 / / rw - rootfs rootfs ",
    b"4294967295 2147483648 4294967296:1 / / rw - x y z",
]


def _exact(data: bytes) -> Any:
    """A C buffer of exactly len(data) bytes (no terminator: reading past the end is a bug)."""
    buf = ffi.new(f"char[{len(data)}]")
    ffi.memmove(buf, data, len(data))
    return buf


def parse_at(data: bytes, pos: int, outlen: int) -> tuple[int, list[tuple[int, int]] | None]:
    """One call of aufs_mountinfo_next on exact buffers; (return value, field spans if parsed)."""
    src = _exact(data)
    out = ffi.new(f"char[{outlen}]")
    rec = ffi.new("struct aufs_mountinfo *")
    rc = int(lib.aufs_mountinfo_next(src, len(data), pos, rec, out, outlen))
    if rc <= 0:
        return rc, None
    return rc, [(int(rec.off[i]), int(rec.len[i])) for i in range(NFIELDS)]


def check_bounds(data: bytes, pos: int, outlen: int) -> int:
    rc, spans = parse_at(data, pos, outlen)
    if rc < 0:
        assert -rc in (22, 28), f"unexpected errno {-rc}"  # EINVAL, ENOSPC
    elif rc == 0:
        assert pos >= len(data)
    else:
        assert pos < rc <= len(data)
        assert spans is not None
        for off, length in spans:
            assert 0 <= off and off + length <= outlen
    return rc


def parse_all(data: bytes, outlen: int) -> None:
    """Walk the whole buffer as iter_mountinfo does, line by line, with a fixed output size."""
    pos = 0
    while True:
        rc = check_bounds(data, pos, outlen)
        if rc <= 0:
            return
        pos = rc


@pytest.mark.skipif(os.environ.get("AUFS_EXPECT_SANITIZERS") != "1", reason="only under make fuzz-asan")
def test_running_the_sanitized_build() -> None:
    with open("/proc/self/maps") as f:
        maps = f.read()
    assert "libasan" in maps, "libasan is not loaded: LD_PRELOAD it"
    native = [line.split()[-1] for line in maps.splitlines() if "aufs/_native" in line]
    here = os.path.realpath(os.getcwd()) + "/aufs/"
    assert native and all(p.startswith(here) for p in native), f"not the sanitized copy: {native}"


def test_every_prefix_and_every_start_of_valid_lines() -> None:
    for line in VALID:
        for data in (line, line + b"\n", line + b"\n" + line):
            for cut in range(len(data) + 1):
                prefix = data[:cut]
                for pos in range(cut + 1):
                    check_bounds(prefix, pos, len(prefix))
                check_bounds(prefix, 0, 0)
                check_bounds(prefix, 0, max(0, cut // 2))


@given(st.binary(max_size=400), st.integers(0, 420), st.integers(0, 420))
def test_arbitrary_bytes_any_position_any_output_size(data: bytes, pos: int, outlen: int) -> None:
    check_bounds(data, min(pos, len(data)), outlen)
    parse_all(data, len(data))


_pieces = st.sampled_from([b" ", b"-", b" - ", b"\n", b"\\", b"\\0", b"\\04", b"\\040", b"\\377", b"\\400",
                           b":", b"0", b"9", b"4294967296", b"2147483648", b"/", b"rw", b"shared:1", b"\x00",
                           b"\xff"])


@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 200), _pieces, st.booleans()), max_size=8),
       st.integers(0, 300))
def test_mutated_valid_lines(line: bytes, edits: list[tuple[int, bytes, bool]], outlen: int) -> None:
    data = bytearray(line)
    for where, piece, replace in edits:
        where = min(where, len(data))
        data[where:where + (len(piece) if replace else 0)] = piece
    raw = bytes(data)
    parse_all(raw, len(raw))
    parse_all(raw, min(outlen, len(raw)))
    # the typed wrapper must raise ValueError or parse, never anything else
    try:
        list(_syscalls.iter_mountinfo(raw))
    except ValueError:
        pass


@given(st.binary(max_size=200), st.integers(0, 210))
def test_unescape_with_any_output_size(data: bytes, outlen: int) -> None:
    src = _exact(data)
    out = ffi.new(f"char[{outlen}]")
    n = int(lib.aufs_unescape(src, len(data), out, outlen))
    expected = mounts.unescape_octal(data)
    if len(expected) <= outlen:
        assert n == len(expected) and ffi.buffer(out, n)[:] == expected
    else:
        assert n == -28  # -ENOSPC


def test_real_mount_table_parses_with_exact_buffers() -> None:
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    parse_all(data, len(data))
