"""Images made by the real tools (umoci, skopeo, buildah), compared with umoci's own unpack
entry by entry; aufs's exports read back by umoci and skopeo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import aufs

from .conftest import umoci_unpack
from .helpers import diff_snapshots, layer_tar, run, snapshot, write_layout


def _mounted_snapshot(driver: aufs.Driver, layer_id: str) -> dict:
    with driver.mount(layer_id) as root:
        return snapshot(Path(root))


# umoci 0.4.7 writes "srv/data/a" into a later layer without "srv/" and "srv/data/" entries:
# the implied parents must show the lower /srv's 02750 1234:5678 and its xattr, as in umoci's
# one-tree unpack (apply_diff copies them up from the parent chain).
def _check(problems: list) -> None:
    assert not problems, "\n".join(problems[:30])


def _assert_same_tree(reference: Path, driver: aufs.Driver, layer_id: str) -> None:
    _check(diff_snapshots(snapshot(reference), _mounted_snapshot(driver, layer_id)))


def test_umoci_image_matches_umoci_unpack(driver: aufs.Driver, umoci_image: dict[str, Path]) -> None:
    ids = aufs.import_image(driver, umoci_image["oci"], ref="t")
    assert len(ids) == 3
    _assert_same_tree(umoci_image["rootfs"], driver, ids[-1])


def test_docker_save_form_same_ids_same_tree(driver: aufs.Driver, umoci_image: dict[str, Path]) -> None:
    ids = aufs.import_image(driver, umoci_image["docker"])
    before = sorted(driver.layers())
    assert aufs.import_image(driver, umoci_image["oci"]) == ids  # shared: nothing new
    assert aufs.import_image(driver, umoci_image["docker"], ref="demo:1") == ids
    assert sorted(driver.layers()) == before
    _assert_same_tree(umoci_image["rootfs"], driver, ids[-1])


def test_zstd_form_same_ids_same_tree(driver: aufs.Driver, umoci_image: dict[str, Path]) -> None:
    ids = aufs.import_image(driver, umoci_image["zstd"])
    assert ids == aufs.import_image(driver, umoci_image["oci"])
    _assert_same_tree(umoci_image["rootfs"], driver, ids[-1])


def test_oci_archive_tarball_same_ids(driver: aufs.Driver, ramdir: Path, umoci_image: dict[str, Path]) -> None:
    archive = ramdir / "image.oci.tar"
    run("skopeo", "copy", "-q", f"oci:{umoci_image['oci']}:t", f"oci-archive:{archive}:t")
    ids = aufs.import_image(driver, archive)
    assert ids == aufs.import_image(driver, umoci_image["docker"])
    assert len(driver.layers()) == 3


def test_skopeo_dir_layout_is_named_as_unsupported(driver: aufs.Driver, ramdir: Path,
                                                   umoci_image: dict[str, Path]) -> None:
    """Issue 9, item 18: a skopeo `dir:` layout is named as such, nothing is imported."""
    layout = ramdir / "skopeo-dir"
    run("skopeo", "copy", "-q", f"oci:{umoci_image['oci']}:t", f"dir:{layout}")
    with pytest.raises(aufs.ImageError, match="skopeo/containers-image `dir:` layout is not a supported"):
        aufs.import_image(driver, layout)
    assert driver.layers() == []


def test_fuse_overlayfs_backend_shows_the_same_tree(ramdir: Path, umoci_image: dict[str, Path]) -> None:
    try:
        store = aufs.Driver(ramdir / "fuse-store", backend="fuse-overlayfs")
    except aufs.BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        ids = aufs.import_image(store, umoci_image["oci"])
        _assert_same_tree(umoci_image["rootfs"], store, ids[-1])
    finally:
        store.cleanup()


def test_buildah_image_all_forms(driver: aufs.Driver, buildah_image: dict[str, Path]) -> None:
    ids = aufs.import_image(driver, buildah_image["oci"])
    assert len(ids) == 2
    for form in ("gzip", "docker"):
        assert aufs.import_image(driver, buildah_image[form]) == ids, form
    assert len(driver.layers()) == 2
    _assert_same_tree(buildah_image["rootfs"], driver, ids[-1])
    with driver.mount(ids[-1]) as root:
        assert sorted(p.name for p in (Path(root) / "d").iterdir()) == ["new"]  # opaque
        assert sorted(p.name for p in (Path(root) / "etc").iterdir()) == ["stays"]  # whiteout


def test_handmade_opaque_and_whiteouts_match_umoci(driver: aufs.Driver, ramdir: Path) -> None:
    tars = [
        layer_tar([("a", None), ("a/1", b"1"), ("a/sub", None), ("a/sub/2", b"2"), ("b", b"b"), ("c", None), ("c/3", b"3")]),
        layer_tar([("a", None), ("a/.wh..wh..opq", b""), ("a/new", b"n"), (".wh.b", b""), ("c", None), ("c/.wh.3", b"")]),
        layer_tar([("b", None), ("b/again", b"again"), ("h", b"h"), ("h2", ("link", "h"))]),
    ]
    write_layout(ramdir / "img", tars, ref="t")
    reference = umoci_unpack(ramdir / "img", "t", ramdir / "ref")
    ids = aufs.import_image(driver, ramdir / "img")
    _assert_same_tree(reference, driver, ids[-1])


def test_export_is_read_by_umoci_and_skopeo(driver: aufs.Driver, ramdir: Path, umoci_image: dict[str, Path]) -> None:
    ids = aufs.import_image(driver, umoci_image["oci"])
    problems = []
    for compression in ("none", "gzip"):
        dest = ramdir / f"export-{compression}"
        digest = aufs.export_image(driver, ids[-1], dest, compression=compression, ref="out")
        inspect = json.loads(run("skopeo", "inspect", f"oci:{dest}:out").stdout)
        assert inspect["Digest"] == digest
        assert len(inspect["Layers"]) == 3
        unpacked = umoci_unpack(dest, "out", ramdir / f"unpacked-{compression}")
        problems += diff_snapshots(snapshot(umoci_image["rootfs"]), snapshot(unpacked))
    # and skopeo can convert it to the docker-save form, which aufs imports back
    run("skopeo", "copy", "-q", f"oci:{ramdir / 'export-gzip'}:out", f"docker-archive:{ramdir / 'back.tar'}:back:1")
    other = aufs.Driver(ramdir / "store-back")
    try:
        back = aufs.import_image(other, ramdir / "back.tar")
        problems += diff_snapshots(snapshot(umoci_image["rootfs"]), _mounted_snapshot(other, back[-1]))
    finally:
        other.cleanup()
    _check(problems)
