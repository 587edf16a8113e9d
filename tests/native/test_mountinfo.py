"""The C mountinfo parser against its pure-Python twin, recorded files and the real table."""
from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aufs import _syscalls, mounts

from .conftest import Mounter

# Bytes the kernel escapes, bytes that look like escapes, and non-UTF-8 bytes.
name_bytes = st.binary(min_size=1, max_size=40).map(
    lambda b: b.replace(b"\x00", b"0").replace(b"/", b"_")) | st.lists(
    st.sampled_from([b" ", b"\t", b"\n", b"\\", b"\\040", b"040", b"0", b"7", b"8", b"a",
                     b"\xff", b"\xc3\xa9", b"-", b":", b","]),
    min_size=1, max_size=12).map(b"".join)

paths = st.lists(name_bytes, min_size=0, max_size=4).map(lambda parts: b"/" + b"/".join(parts))
options = st.lists(st.sampled_from([b"rw", b"ro", b"relatime", b"nosuid", b"nodev",
                                    b"mode=755", b"size=1m", b"lowerdir=/a:/b"]),
                   min_size=1, max_size=6).map(b",".join)
optional = st.lists(st.sampled_from([b"shared:1", b"master:22", b"propagate_from:3",
                                     b"unbindable", b"shared:4294967295"]), max_size=3)
long_options = st.integers(min_value=15_000, max_value=40_000).map(
    lambda n: b"rw,lowerdir=" + b":".join(b"/layer/%05d" % i for i in range(n // 12)))


def esc(data: bytes) -> bytes:
    return mounts.escape_octal(data)


@st.composite
def mountinfo_lines(draw: st.DrawFn) -> tuple[bytes, dict]:
    record = {
        "mount_id": draw(st.integers(0, 2**31 - 1)),
        "parent_id": draw(st.integers(0, 2**31 - 1)),
        "major": draw(st.integers(0, 2**32 - 1)),
        "minor": draw(st.integers(0, 2**32 - 1)),
        "root": draw(paths),
        "mountpoint": draw(paths),
        "options": draw(options),
        "optional_fields": draw(optional),
        "fstype": draw(st.sampled_from([b"tmpfs", b"overlay", b"fuse.fuse-overlayfs", b"ext4"])),
        "source": draw(name_bytes | st.sampled_from([b"none", b"/dev/vda1"])),
        "super_options": draw(options | long_options),
    }
    line = b" ".join([
        b"%d %d %d:%d" % (record["mount_id"], record["parent_id"], record["major"],
                          record["minor"]),
        esc(record["root"]), esc(record["mountpoint"]), esc(record["options"]),
        *record["optional_fields"], b"-", record["fstype"], esc(record["source"]),
        esc(record["super_options"]),
    ])
    return line, record


def c_parse(data: bytes) -> list[mounts.MountInfo]:
    return [mounts._record(f) for f in _syscalls.iter_mountinfo(data)]


@given(st.lists(mountinfo_lines(), min_size=1, max_size=5))
def test_c_parser_agrees_with_python_twin_and_the_truth(lines: list[tuple[bytes, dict]]) -> None:
    data = b"\n".join(line for line, _ in lines) + b"\n"
    parsed = c_parse(data)
    assert parsed == mounts.parse_mountinfo(data)
    for info, (_, rec) in zip(parsed, lines):
        d = os.fsdecode
        assert (info.mount_id, info.parent_id, info.major, info.minor) == (
            rec["mount_id"], rec["parent_id"], rec["major"], rec["minor"])
        assert info.root == d(rec["root"]) and info.mountpoint == d(rec["mountpoint"])
        assert info.source == d(rec["source"]) and info.fstype == d(rec["fstype"])
        assert info.options == d(rec["options"])
        assert info.super_options == d(rec["super_options"])
        assert info.optional_fields == tuple(d(o) for o in rec["optional_fields"])


@given(st.binary(max_size=300))
def test_c_and_python_agree_on_arbitrary_bytes(data: bytes) -> None:
    """Whatever the input, both parsers accept it with the same result or both refuse it."""
    def outcome(parse: object) -> object:
        try:
            return parse(data)  # type: ignore[operator]
        except ValueError:
            return "refused"
    assert outcome(c_parse) == outcome(mounts.parse_mountinfo)


@given(st.lists(mountinfo_lines(), min_size=1, max_size=2), st.data())
def test_agree_on_mutated_lines(lines: list[tuple[bytes, dict]], data: st.DataObject) -> None:
    raw = bytearray(b"\n".join(line for line, _ in lines))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.sampled_from(b" -:\\0789\nx"))
    buf = bytes(raw)
    try:
        expected: object = mounts.parse_mountinfo(buf)
    except ValueError:
        expected = "refused"
    try:
        got: object = c_parse(buf)
    except ValueError:
        got = "refused"
    assert got == expected


@given(st.binary(max_size=200))
def test_unescape_round_trip_and_twin(data: bytes) -> None:
    assert _syscalls.unescape(esc(data)) == data
    assert mounts.unescape_octal(esc(data)) == data
    assert _syscalls.unescape(data) == mounts.unescape_octal(data)


def test_unescape_rules() -> None:
    for u in (_syscalls.unescape, mounts.unescape_octal):
        assert u(b"a\\040b") == b"a b"
        assert u(b"\\011\\012\\134") == b"\t\n\\"
        assert u(b"\\377\\000") == b"\xff\x00"
        assert u(b"\\400") == b"\\400"  # > 0o377: not an escape
        assert u(b"\\04") == b"\\04"  # too short
        assert u(b"\\0a0") == b"\\0a0"
        assert u(b"\\\\040") == b"\\ "


def test_real_line_with_optional_fields() -> None:
    line = (b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root "
            b"rw,errors=continue\n")
    (info,) = c_parse(line)
    assert info == mounts.parse_mountinfo(line)[0]
    assert info == mounts.MountInfo(36, 35, 98, 0, "/mnt1", "/mnt2", "rw,noatime",
                                    ("master:1", "shared:7"), "ext3", "/dev/root",
                                    "rw,errors=continue")
    assert info.dev == os.makedev(98, 0)


def test_last_line_without_newline_and_empty_input() -> None:
    assert len(c_parse(b"1 2 3:4 / / rw - t s o\n5 6 7:8 / /x rw - t s o")) == 2
    assert c_parse(b"") == []


@pytest.mark.parametrize("bad", [
    b"1 2 3:4 / / rw t s o",            # no separator
    b"1 2 3:4 / / rw - t s",            # no super options
    b"x 2 3:4 / / rw - t s o",          # not a number
    b"1 2 34 / / rw - t s o",           # no major:minor
    b"1 2 3:4:5 / / rw - t s o",
    b"2147483648 2 3:4 / / rw - t s o",  # mount id out of range
    b"",
])
def test_malformed_lines_are_refused_by_both(bad: bytes, tmp_path: pathlib.Path) -> None:
    data = b"1 0 0:1 / / rw - t s o\n" + bad + b"\n"
    with pytest.raises(ValueError):
        mounts.parse_mountinfo(data)
    recorded = tmp_path / "mountinfo"
    recorded.write_bytes(data)
    with pytest.raises(ValueError, match="line 2"):
        list(mounts.mount_table(recorded))


def test_recorded_file_and_submounts_by_component(tmp_path: pathlib.Path) -> None:
    base = "/aufs-test-nonexistent"
    lines = [
        "1 0 0:1 / / rw - ext4 /dev/vda rw",
        f"2 1 0:2 / {base}/foo rw - tmpfs tmpfs rw",
        f"3 2 0:3 / {base}/foo/bar rw - tmpfs tmpfs rw",
        f"4 1 0:4 / {base}/foobar rw - tmpfs tmpfs rw",
        f"5 3 0:5 / {base}/foo/bar/baz rw - tmpfs tmpfs rw",
        f"6 2 0:6 / {base}/foo rw - tmpfs tmpfs rw",
        f"7 1 0:7 / {base}/fo rw - tmpfs tmpfs rw",
        f"8 1 0:8 / {base}/foo\\040bar rw - tmpfs tmpfs rw",
    ]
    recorded = tmp_path / "mountinfo"
    recorded.write_text("\n".join(lines) + "\n")
    assert [m.mount_id for m in mounts.mount_table(recorded)] == list(range(1, 9))
    assert [m.mount_id for m in mounts.submounts(f"{base}/foo", recorded)] == [5, 3, 6, 2]
    assert [m.mount_id for m in mounts.submounts(f"{base}/foo/", recorded)] == [5, 3, 6, 2]
    assert [m.mount_id for m in mounts.submounts(f"{base}/foo bar", recorded)] == [8]
    assert mounts.submounts(f"{base}/fooba", recorded) == []
    assert [m.mount_id for m in mounts.submounts("/", recorded)][-1] == 1
    assert len(mounts.submounts("/", recorded)) == 8


def test_real_table_shows_odd_names_exactly(root: pathlib.Path, mounter: Mounter) -> None:
    names = ["a b", "c\nd", "e\\f", "g\\040h", "tab\t", "\u00e9"]
    for name in names:
        (root / name).mkdir()
        mounter.tmpfs(root / name)
    table = list(mounts.mount_table())
    points = {m.mountpoint for m in table}
    for name in names:
        assert str(root / name) in points
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    assert table == mounts.parse_mountinfo(data)
    assert [m.mountpoint for m in mounts.submounts(root)] == sorted(
        (str(root / n) for n in names), key=lambda p: -[m.mountpoint for m in table].index(p))


def test_overlay_line_over_15kb_parses(root: pathlib.Path, mounter: Mounter) -> None:
    layers = []
    for i in range(100):
        layer = root / (f"layer-{i:03d}-" + "x" * 120)
        layer.mkdir()
        layers.append(str(layer))
    (root / "mnt").mkdir()
    mounter.overlay(root / "mnt", layers)
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    (info,) = [m for m in mounts.mount_table() if m.mountpoint == str(root / "mnt")]
    assert len(info.super_options) > 15_000
    assert info.super_options.count("lowerdir+=") == 100
    assert [m for m in mounts.parse_mountinfo(data) if m.mountpoint == str(root / "mnt")] == [info]
