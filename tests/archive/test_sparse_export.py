"""Issue 9, item 4: a sparse bomb applies in a second and must not explode in ``diff``.

A 1 TiB file with a few bytes of data (made with truncate on tmpfs, packed by GNU tar
``--sparse``, or written through the mount by a "container") round-trips apply -> diff ->
apply: the diff is a GNU sparse 1.0 pax entry costing the file's data, not its size, and GNU
tar and bsdtar read it back to the same file. ``max_bytes`` counts a sparse entry's data.
Nothing here is timed; the output size is the bound (writing every zero would be 1 TiB).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

import aufs
from aufs import ArchiveError
from aufs.apply import apply_tar
from aufs.whiteouts import WhiteoutFormat

TIB = 1 << 40
DATA = {0: b"head", 0x8_0000_0000: b"hello", TIB - 3: b"end"}  # the first bytes, at 32 GiB, the last


def make_sparse(path: pathlib.Path, size: int = TIB, data: dict[int, bytes] = DATA) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, chunk in data.items():
            f.seek(off)
            f.write(chunk)


def check_file(path: pathlib.Path | str, size: int = TIB, data: dict[int, bytes] = DATA) -> None:
    st = os.stat(path)
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 << 20  # still sparse on disk
    with open(path, "rb") as f:
        for off, chunk in data.items():
            f.seek(off)
            assert f.read(len(chunk)) == chunk
        f.seek(1 << 20)
        assert f.read(4096) == bytes(4096)



def gnu_sparse_tar(ramdir: pathlib.Path) -> pathlib.Path:
    src = ramdir / "src"
    src.mkdir()
    make_sparse(src / "big")
    (src / "hole-only").touch()
    os.truncate(src / "hole-only", 100 << 20)
    (src / "small").write_bytes(b"s" * 10)
    out = ramdir / "gnu-sparse.tar"
    subprocess.run(["tar", "--sparse", "--format=posix", "-cf", str(out), "-C", str(src), "."], check=True)
    assert out.stat().st_size < 1 << 20
    return out


def test_sparse_bomb_round_trips_apply_diff_apply(driver: aufs.Driver, ramdir: pathlib.Path) -> None:
    driver.create("l")
    driver.apply_diff("l", gnu_sparse_tar(ramdir))
    check_file(os.path.join(driver.diff_dir("l"), "big"))

    out = ramdir / "diff.tar"
    written = driver.diff("l", str(out))
    assert written == out.stat().st_size < 1 << 20  # the data, not 1 TiB of zeros
    driver.create("again")
    driver.apply_diff("again", out)
    again = pathlib.Path(driver.diff_dir("again"))
    check_file(again / "big")
    assert os.stat(again / "hole-only").st_size == 100 << 20
    assert (again / "small").read_bytes() == b"s" * 10


@pytest.mark.parametrize("tool", ["tar", "bsdtar"])
def test_reference_tools_read_our_sparse_entries(driver: aufs.Driver, ramdir: pathlib.Path, tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/bootstrap installs it)")
    driver.create("l")
    with driver.mount("l") as root:  # a container writes the sparse file
        make_sparse(pathlib.Path(root) / "big")
    out = ramdir / "diff.tar"
    driver.diff("l", str(out))
    assert out.stat().st_size < 1 << 20
    dest = ramdir / "x"
    dest.mkdir()
    subprocess.run([tool, "-x", "-f", str(out), "-C", str(dest)], check=True)
    check_file(dest / "big")


def test_max_bytes_counts_a_sparse_entry_by_its_data(ramdir: pathlib.Path) -> None:
    archive = gnu_sparse_tar(ramdir)
    ok = ramdir / "ok"
    ok.mkdir()
    apply_tar(ok, archive, WhiteoutFormat.OVERLAY, max_bytes=1 << 20)  # far below 1 TiB
    check_file(ok / "big")
    tight = ramdir / "tight"
    tight.mkdir()
    with pytest.raises(ArchiveError, match="limit"):
        apply_tar(tight, archive, WhiteoutFormat.OVERLAY, max_bytes=12)  # the data is 22 bytes
