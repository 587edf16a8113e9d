"""``Driver.mounts``: a chain's mount described as data, performed elsewhere.

What a container engine does with the description (containerd mounts it with mount(2)) is
done here for real: the description is performed by ``aufs.mount_described`` and by a bare
``mount(2)`` of its option data, and the result must show what ``get`` shows.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aufs
from aufs import mounts
from aufs.plan import mount_data, parse_overlay_options
from aufs.store import Driver

from ..backends import backend_params
from .conftest import read, tree, write


def _chain(driver: Driver, depth: int, prefix: str = "l") -> str:
    parent = None
    for i in range(depth):
        layer = f"{prefix}{i}"
        driver.create(layer, parent=parent)
        write(os.path.join(driver.diff_dir(layer), f"f{i}"), str(i))
        write(os.path.join(driver.diff_dir(layer), "top"), layer)
        parent = layer
    assert parent is not None
    return parent


@pytest.fixture
def target(ramdir: Path) -> str:
    path = ramdir / "target"
    path.mkdir()
    return str(path)


def _unmount_all(path: str) -> None:
    while mounts.mounted(path):
        mounts.unmount(path, lazy=True)


def test_description_names_the_chain_top_most_first(driver: Driver) -> None:
    top = _chain(driver, 3)
    described = driver.mounts(top)
    assert len(described) == 1 and isinstance(described[0], aufs.Mount)
    m = described[0]
    if driver.backend == "overlay":
        assert (m.type, m.source) == ("overlay", "overlay")
        lowers, upper, work, rest = parse_overlay_options(m.options)
        assert lowers == [driver.diff_dir("l1"), driver.diff_dir("l0")]
        assert upper == driver.diff_dir(top)
        assert work is not None and os.path.dirname(work) == os.path.dirname(upper)
        assert set(rest) == {"index=off", "redirect_dir=off", "metacopy=off"}
    else:
        assert m.type == "fuse3.fuse-overlayfs"
        lowers, upper, _, _ = parse_overlay_options(m.options)
        # fuse-overlayfs gets short links: the same directories, by fixed-length names
        assert [os.path.realpath(p) for p in lowers] == [driver.diff_dir("l1"), driver.diff_dir("l0")]
        assert upper == driver.diff_dir(top)


@pytest.mark.parametrize("backend_name", backend_params(["overlay", "fuse-overlayfs"]), indirect=True)
def test_performed_description_shows_what_get_shows(driver: Driver, target: str) -> None:
    top = _chain(driver, 4)
    with driver.mount(top) as root:
        expected = tree(root)
    mounts.mount_described(driver.mounts(top), target)
    try:
        assert tree(target) == expected
        write(os.path.join(target, "new"), "written through the described mount")
    finally:
        _unmount_all(target)
    # the write landed in the layer, as a write through get() would
    assert read(os.path.join(driver.diff_dir(top), "new")) == "written through the described mount"


@pytest.mark.parametrize("backend_name", backend_params(["overlay"]), indirect=True)
def test_mount2_data_fits_one_page_for_deep_chains(driver: Driver, target: str) -> None:
    """containerd performs a description with mount(2): one page of data. Full diff-dir paths
    are used while they fit, the store's short links (fixed length, whatever the id) beyond."""
    prefix = "c" * 62  # image layer ids are 64-character chain ids
    top = _chain(driver, 50, prefix=prefix)
    (m,) = driver.mounts(top)
    data = mount_data(m.options)
    assert len(data.encode()) < os.sysconf("SC_PAGE_SIZE")
    lowers, _, _, _ = parse_overlay_options(m.options)
    assert len(lowers) == 49 and all(os.path.islink(p) for p in lowers)
    assert [os.path.realpath(p) for p in lowers] == [driver.diff_dir(f"{prefix}{i}") for i in range(48, -1, -1)]
    mounts.mount("overlay", target, "overlay", 0, data)  # exactly what a container engine does
    try:
        assert read(os.path.join(target, "top")) == top
        assert sorted(n for n in os.listdir(target) if n.startswith("f")) == sorted(f"f{i}" for i in range(50))
    finally:
        _unmount_all(target)
    shallow = driver.mounts(f"{prefix}2")[0]
    assert parse_overlay_options(shallow.options)[0] == [driver.diff_dir(f"{prefix}1"), driver.diff_dir(f"{prefix}0")]


@pytest.mark.parametrize("backend_name", backend_params(["overlay"]), indirect=True)
def test_readonly_description_shows_the_layer_itself_read_only(driver: Driver, target: str) -> None:
    top = _chain(driver, 2)
    mounts.mount_described(driver.mounts(top, readonly=True), target)
    try:
        assert read(os.path.join(target, "top")) == top
        assert sorted(os.listdir(target)) == ["f0", "f1", "top"]
        with pytest.raises(OSError) as info:
            write(os.path.join(target, "x"))
        assert info.value.errno == errno.EROFS
    finally:
        _unmount_all(target)
    single = driver.mounts("l0", readonly=True)  # one layer: overlay needs a second lower
    mounts.mount_described(single, target)
    try:
        assert sorted(os.listdir(target)) == ["f0", "top"]
    finally:
        _unmount_all(target)


@pytest.mark.parametrize("backend_name", backend_params(["overlay"]), indirect=True)
def test_root_opaque_layer_cuts_the_described_chain(driver: Driver) -> None:
    _chain(driver, 2)
    driver.create("opaque", parent="l1")
    os.setxattr(driver.diff_dir("opaque"), "trusted.overlay.opaque", b"y")
    driver.create("above", parent="opaque")
    lowers = parse_overlay_options(driver.mounts("above")[0].options)[0]
    assert lowers == [driver.diff_dir("opaque")]
    lowers = parse_overlay_options(driver.mounts("opaque")[0].options)[0]
    assert lowers == [driver.layout.empty_dir]  # nothing below an opaque root shows


@pytest.mark.parametrize("backend_name", backend_params(["overlay"]), indirect=True)
@pytest.mark.parametrize("odd", ["with,comma", "with:colon", "back\\slash"])
def test_paths_with_separators_are_escaped(ramdir: Path, backend_name: str, odd: str) -> None:
    d = Driver(ramdir / odd / "store", backend=backend_name)
    target = str(ramdir / "t")
    os.mkdir(target)
    try:
        top = _chain(d, 2)
        (m,) = d.mounts(top)
        lowers, upper, work, _ = parse_overlay_options(m.options)
        assert lowers == [d.diff_dir("l0")] and upper == d.diff_dir(top)
        # the kernel's own option parser reads the escapes (mount(2), as containerd mounts)
        mounts.mount("overlay", target, "overlay", 0, mount_data(m.options))
        try:
            assert sorted(os.listdir(target)) == ["f0", "f1", "top"]
        finally:
            _unmount_all(target)
    finally:
        d.cleanup()


def test_missing_layer(driver: Driver) -> None:
    with pytest.raises(aufs.LayerNotFound):
        driver.mounts("nope")
    with pytest.raises(aufs.InvalidLayerId):
        driver.mounts("../x")


# ---------------------------------------------------------------- persistent holders


@pytest.mark.parametrize("backend_name", backend_params(["overlay"]), indirect=True)
def test_persistent_holder_survives_its_process(home: Path, backend_name: str) -> None:
    """A server restarted under the same holder name can put what its earlier self got."""
    d = Driver(home, backend=backend_name)
    try:
        d.create("base")
        script = textwrap.dedent(f"""
            import aufs
            d = aufs.Driver({str(home)!r}, backend={backend_name!r}, holder="server")
            d.get("base")
            d.get("base")
        """)
        subprocess.run([sys.executable, "-c", script], check=True)
        assert d.is_mounted("base")  # the process is gone, its references are not
        assert d.check().clean
        again = Driver(home, backend=backend_name, holder="server")
        again.put("base")
        assert d.is_mounted("base")
        d.put("base")  # another holder's put changes nothing
        assert d.is_mounted("base")
        again.put("base")
        assert not d.is_mounted("base")
    finally:
        d.cleanup()


def test_holder_names_are_checked(home: Path) -> None:
    for bad in ("", "a/b", "@x", "x" * 65, ".hidden"):
        with pytest.raises(ValueError):
            Driver(home, holder=bad)
    assert not home.exists() or not os.listdir(home)


@pytest.mark.parametrize("backend_name", backend_params(["overlay"]), indirect=True)
def test_a_short_link_removed_behind_a_drivers_back_is_made_again(driver: Driver, home: Path) -> None:
    """A Driver remembers the short links it has seen; another process that removes the chain
    and builds it again (links gone) must not break its next mount."""
    prefix = "c" * 62
    top = _chain(driver, 50, prefix=prefix)
    with driver.mount(top):
        pass
    other = Driver(home, backend="overlay")
    for i in range(49, -1, -1):
        other.remove(f"{prefix}{i}")
    assert os.listdir(driver.layout.links_dir) == []
    assert _chain(other, 50, prefix=prefix) == top
    with driver.mount(top) as root:  # the remembered links are gone: looked up and made again
        assert read(os.path.join(root, "top")) == top
