"""import_image / export_image against a real store on tmpfs, with images built by hand."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import aufs
from aufs.image import chain_ids

from .helpers import layer_tar, sha, snapshot, tar_directory, write_layout

BASE = layer_tar([("etc", None), ("etc/motd", b"hello"), ("etc/old", b"old"), ("bin", None), ("bin/sh", b"#!")])
MIDDLE = layer_tar([("etc", None), ("etc/.wh.old", b""), ("etc/motd", b"updated"), ("var", None), ("var/x", b"x" * 5000)])
TOP = layer_tar([("var", None), ("var/.wh..wh..opq", b""), ("var/y", b"y"), ("usr", None), ("usr/link", ("sym", "/bin/sh"))])
TARS = [BASE, MIDDLE, TOP]
EXPECTED_IDS = chain_ids([sha(t) for t in TARS])


def _store_state(driver: aufs.Driver) -> list[str]:
    return sorted(driver.layers())


def test_import_returns_chain_ids_and_mounts_the_union(driver: aufs.Driver, ramdir: Path) -> None:
    write_layout(ramdir / "img", TARS)
    ids = aufs.import_image(driver, ramdir / "img")
    assert ids == EXPECTED_IDS
    assert [driver.parent(i) for i in ids] == [None, ids[0], ids[1]]
    with driver.mount(ids[-1]) as root:
        tree = {p: e[0] for p, e in snapshot(Path(root)).items()}
        assert (Path(root) / "etc" / "motd").read_bytes() == b"updated"
        assert os.readlink(Path(root) / "usr" / "link") == "/bin/sh"
    assert "/etc/old" not in tree  # whiteout
    assert "/var/x" not in tree and "/var/y" in tree  # opaque directory
    assert sorted(tree) == ["/bin", "/bin/sh", "/etc", "/etc/motd", "/usr", "/usr/link", "/var", "/var/y"]


@pytest.mark.parametrize("compress", ["gzip", "zstd", "none"])
def test_every_compression_gives_the_same_ids(driver: aufs.Driver, ramdir: Path, compress: str) -> None:
    write_layout(ramdir / "img", TARS, compress=compress)
    assert aufs.import_image(driver, ramdir / "img") == EXPECTED_IDS


def test_layout_tarball_and_reimport_create_nothing(driver: aufs.Driver, ramdir: Path) -> None:
    write_layout(ramdir / "img", TARS)
    tar_directory(ramdir / "img", ramdir / "img.tar")
    assert aufs.import_image(driver, ramdir / "img.tar") == EXPECTED_IDS
    before = _store_state(driver)
    calls = []
    assert aufs.import_image(driver, ramdir / "img", progress=lambda *a: calls.append(a)) == EXPECTED_IDS
    assert _store_state(driver) == before
    # every layer is reported complete even when nothing had to be applied
    finals = {layer_id for layer_id, done, total in calls if done == total}
    assert finals == set(EXPECTED_IDS)


def test_shared_base_layers_are_stored_once(driver: aufs.Driver, ramdir: Path) -> None:
    write_layout(ramdir / "a", TARS[:2])
    other_top = layer_tar([("srv", None), ("srv/b", b"b")])
    write_layout(ramdir / "b", [BASE, MIDDLE, other_top])
    a = aufs.import_image(driver, ramdir / "a")
    b = aufs.import_image(driver, ramdir / "b")
    assert b[:2] == a
    assert len(driver.layers()) == 3


def test_progress_reports_bytes_per_layer(driver: aufs.Driver, ramdir: Path) -> None:
    info = write_layout(ramdir / "img", TARS)
    sizes = {d[7:]: (ramdir / "img" / "blobs" / "sha256" / d[7:]).stat().st_size for d in info["layers"]}
    seen = {}
    ids = aufs.import_image(driver, ramdir / "img", progress=lambda i, done, total: seen.__setitem__(i, (done, total)))
    assert set(seen) == set(ids)
    assert sorted(total for _, total in seen.values()) == sorted(sizes.values())
    assert all(done == total for done, total in seen.values())


def _corrupt_blob(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_corrupt_blob_leaves_the_store_unchanged(driver: aufs.Driver, ramdir: Path, which: int) -> None:
    # the store already holds another image sharing the base layer
    write_layout(ramdir / "other", [BASE])
    aufs.import_image(driver, ramdir / "other")
    before = _store_state(driver)
    info = write_layout(ramdir / "img", TARS)
    _corrupt_blob(ramdir / "img" / "blobs" / "sha256" / info["layers"][which][7:])
    with pytest.raises(aufs.DigestMismatch, match="declares"):
        aufs.import_image(driver, ramdir / "img")
    assert _store_state(driver) == before
    assert not any((Path(driver.home) / "tmp").iterdir())


def test_wrong_diff_id_is_refused(driver: aufs.Driver, ramdir: Path) -> None:
    lying = [sha(BASE), sha(b"not the middle layer"), sha(TOP)]
    write_layout(ramdir / "img", TARS, diff_ids=lying)
    with pytest.raises(aufs.DigestMismatch, match="diffID"):
        aufs.import_image(driver, ramdir / "img")
    assert driver.layers() == []


def test_docker_save_uncompressed_layers(driver: aufs.Driver, ramdir: Path) -> None:
    root = ramdir / "save"
    root.mkdir()
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in TARS]}}).encode()
    config_name = sha(config)[7:] + ".json"
    (root / config_name).write_bytes(config)
    names = []
    for i, tar in enumerate(TARS):
        (root / f"l{i}").mkdir()
        (root / f"l{i}" / "layer.tar").write_bytes(tar)
        names.append(f"l{i}/layer.tar")
    (root / "manifest.json").write_text(json.dumps([{"Config": config_name, "RepoTags": ["x:1"], "Layers": names}]))
    tar_directory(root, ramdir / "save.tar")
    assert aufs.import_image(driver, ramdir / "save.tar") == EXPECTED_IDS
    # a tampered legacy layer is caught through its diffID
    (root / "l2" / "layer.tar").write_bytes(layer_tar([("evil", b"x")]))
    tar_directory(root, ramdir / "bad.tar")
    other = aufs.Driver(ramdir / "store2")
    try:
        with pytest.raises(aufs.DigestMismatch):
            aufs.import_image(other, ramdir / "bad.tar")
        assert other.layers() == []
    finally:
        other.cleanup()


def test_unsafe_layer_is_refused_and_removed(driver: aufs.Driver, ramdir: Path) -> None:
    evil = layer_tar([("../escape", b"x")])
    write_layout(ramdir / "img", [BASE, evil])
    with pytest.raises(aufs.ArchiveError):
        aufs.import_image(driver, ramdir / "img")
    assert driver.layers() == []
    assert not (ramdir / "escape").exists()


def test_export_round_trip(driver: aufs.Driver, ramdir: Path) -> None:
    write_layout(ramdir / "img", TARS)
    ids = aufs.import_image(driver, ramdir / "img")
    driver.create("rw", ids[-1])
    with driver.mount("rw") as root:
        (Path(root) / "new").write_text("new")
        os.unlink(Path(root) / "etc" / "motd")
        original = snapshot(Path(root))
    for compression in ("none", "gzip"):
        dest = ramdir / f"out-{compression}"
        digest = aufs.export_image(driver, "rw", dest, compression=compression)
        index = json.loads((dest / "index.json").read_text())
        assert index["manifests"][0]["digest"] == digest
        manifest = json.loads((dest / "blobs" / "sha256" / digest[7:]).read_bytes())
        assert len(manifest["layers"]) == 4
        other = aufs.Driver(ramdir / f"store-{compression}")
        try:
            again = aufs.import_image(other, dest)
            with other.mount(again[-1]) as root:
                assert snapshot(Path(root)) == original
        finally:
            other.cleanup()
    # same chain, same bytes: the uncompressed export is deterministic
    assert aufs.export_image(driver, "rw", ramdir / "again") == json.loads((ramdir / "out-none" / "index.json").read_text())["manifests"][0]["digest"]


def test_export_refuses_a_non_empty_destination(driver: aufs.Driver, ramdir: Path) -> None:
    driver.create("base")
    (ramdir / "full").mkdir()
    (ramdir / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        aufs.export_image(driver, "base", ramdir / "full")
    with pytest.raises(aufs.LayerNotFound):
        aufs.export_image(driver, "missing", ramdir / "new")
    assert not (ramdir / "new").exists()
    assert sorted(p.name for p in ramdir.iterdir()) == ["full", "store"]
    shutil.rmtree(ramdir / "full")


def test_a_crash_mid_import_leaves_no_layer_to_trust(driver: aufs.Driver, ramdir: Path) -> None:
    write_layout(ramdir / "img", TARS)
    repo = str(Path(__file__).resolve().parents[2])
    script = f"""
import os, sys
sys.path.insert(0, {repo!r})
import aufs
driver = aufs.Driver({str(driver.home)!r})
def progress(layer_id, done, total):
    if done == total:
        os._exit(9)  # die the moment the first blob has been read: later layers exist, empty
aufs.import_image(driver, {str(ramdir / "img")!r}, progress=progress, workers=1)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 9, proc.stderr
    assert driver.layers(), "the dead import should have created layers"
    assert list((Path(driver.home) / "image-imports").glob("*.json"))

    ids = aufs.import_image(driver, ramdir / "img")
    assert ids == EXPECTED_IDS
    with driver.mount(ids[-1]) as root:
        assert (Path(root) / "etc" / "motd").read_bytes() == b"updated"
        assert (Path(root) / "bin" / "sh").exists() and (Path(root) / "var" / "y").exists()
    assert not list((Path(driver.home) / "image-imports").glob("*"))


def test_concurrent_imports_of_one_image(driver: aufs.Driver, ramdir: Path) -> None:
    write_layout(ramdir / "img", TARS)
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(aufs.import_image(driver, ramdir / "img")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [EXPECTED_IDS] * 3
    with driver.mount(EXPECTED_IDS[-1]) as root:
        assert (Path(root) / "etc" / "motd").read_bytes() == b"updated"


def test_layers_are_processed_in_parallel(driver: aufs.Driver, ramdir: Path) -> None:
    """All three layers must be in flight at once: each one's first progress report waits at a
    barrier that only opens when the other two have started too (a serial import would break it)."""
    tars = [layer_tar([(f"f{i}", os.urandom(1 << 20))]) for i in range(3)]
    write_layout(ramdir / "img", tars)
    barrier = threading.Barrier(3, timeout=30)
    started: set = set()

    def progress(layer_id: str, done: int, total: int) -> None:
        if layer_id not in started:
            started.add(layer_id)
            barrier.wait()

    ids = aufs.import_image(driver, ramdir / "img", progress=progress, workers=3)
    assert started == set(ids)
