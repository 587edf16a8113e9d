"""The AUFS backend: the ``br:``/``append:`` mount-data builder as a pure function, and a real
AUFS mount that runs only where the kernel has AUFS."""
from __future__ import annotations

from pathlib import Path
import os
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aufs
from aufs.backends.aufs import AUFS_MAX_BRANCHES, AufsBackend, branch_mount_data
from aufs.backends.base import kernel_filesystems
from aufs.store import Driver

from .conftest import read


def _branches_of(first: str, appends: list) -> tuple:
    """Parse the builder's output back into (upper, [lowers]) to check order and uniqueness."""
    assert first.startswith("br:")
    spec = first[3:].split(",")[0]
    branches = spec.split(":")
    upper = None
    if branches[0].endswith("=rw"):
        upper = branches.pop(0)[: -len("=rw")]
    lowers = [b[: -len("=ro+wh")] for b in branches]
    assert all(b.endswith("=ro+wh") for b in branches)
    for chunk in appends:
        for option in chunk.split(","):
            assert option.startswith("append:") and option.endswith("=ro+wh")
            lowers.append(option[len("append:") : -len("=ro+wh")])
    return upper, lowers


def test_small_chain_fits_in_one_mount() -> None:
    first, appends = branch_mount_data("/s/up", ["/s/l1", "/s/l2"], page_size=4096)
    assert first == "br:/s/up=rw:/s/l1=ro+wh:/s/l2=ro+wh,dio,xino=/dev/shm/aufs.xino"
    assert appends == []


def test_long_chain_is_batched_in_append_remounts() -> None:
    lowers = [f"/var/lib/store/layers/{'x' * 100}{i:03d}/diff" for i in range(126)]
    first, appends = branch_mount_data("/var/lib/store/layers/top/diff", lowers, page_size=4096)
    assert len(appends) >= 2
    assert all(len(chunk) < 4096 for chunk in [first] + appends)
    upper, got = _branches_of(first, appends)
    assert upper == "/var/lib/store/layers/top/diff" and got == lowers
    assert first.endswith(",xino=/dev/shm/aufs.xino")


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=300), min_size=0, max_size=AUFS_MAX_BRANCHES),
    page=st.sampled_from([1024, 4096, 16384, 65536]),
    readonly=st.booleans(),
)
def test_every_layer_exactly_once_in_order_no_chunk_over_the_page(lengths: list, page: int, readonly: bool) -> None:
    lowers = [f"/h/{i}/" + "d" * n for i, n in enumerate(lengths)]
    upper = None if readonly else "/h/upper"
    if readonly and not lowers:
        with pytest.raises(ValueError):
            branch_mount_data(upper, lowers, page_size=page)
        return
    if any(len("append:") + len(p) + len("=ro+wh") > page - 1 for p in lowers):
        with pytest.raises(aufs.MountDataTooLong):
            branch_mount_data(upper, lowers, page_size=page)
        return
    first, appends = branch_mount_data(upper, lowers, page_size=page)
    assert all(len(chunk.encode()) < page for chunk in [first] + appends)
    got_upper, got = _branches_of(first, appends)
    assert got_upper == upper and got == lowers


@pytest.mark.parametrize("bad", ["/a:b", "/a,b", "/a=b"])
def test_paths_that_break_the_syntax_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        branch_mount_data("/up", [bad], page_size=4096)


def test_depth_limit_is_127_branches() -> None:
    assert AUFS_MAX_BRANCHES == 127


@pytest.mark.skipif("aufs" not in kernel_filesystems(), reason="this kernel has no AUFS (/proc/filesystems lacks aufs)")
def test_real_aufs_mount(ramdir: pathlib.Path) -> None:
    d = Driver(ramdir / "store", backend="aufs")
    try:
        d.create("base")
        with d.mount("base") as root, open(f"{root}/f", "w") as f:
            f.write("x")
        parent = "base"
        for i in range(AUFS_MAX_BRANCHES - 1):
            d.create(f"l{i}", parent=parent)
            parent = f"l{i}"
        with pytest.raises(aufs.MaxDepthExceeded):
            d.create("too-deep", parent=parent)
        with d.mount(parent) as root:
            assert read(f"{root}/f") == "x"
            os.unlink(f"{root}/f")
        assert os.path.exists(Path(d.diff_dir(parent)) / ".wh.f")
    finally:
        d.cleanup()


def test_aufs_backend_reports_why_it_is_unavailable() -> None:
    reason = AufsBackend.unavailable_reason()
    if "aufs" not in kernel_filesystems():
        assert reason is not None and "AUFS" in reason
