"""Image metadata, sources and streams, without a store: what gets verified and what is refused."""
from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

import aufs
from aufs.image import chain_ids
from aufs.image.manifests import host_platform, resolve_image
from aufs.image.sources import open_source
from aufs.image.streams import open_layer_stream

from .helpers import OCI_INDEX, layer_tar, put_blob, sha, tar_directory, write_layout

TARS = [layer_tar([("a", b"one")]), layer_tar([(".wh.a", b""), ("b", b"two")])]


def test_chain_ids_follow_the_spec() -> None:
    d0, d1, d2 = (sha(bytes([i])) for i in range(3))
    c1 = hashlib.sha256(f"{d0} {d1}".encode()).hexdigest()
    c2 = hashlib.sha256(f"sha256:{c1} {d2}".encode()).hexdigest()
    assert chain_ids([d0, d1, d2]) == [d0[7:], c1, c2]
    assert chain_ids([]) == []
    with pytest.raises(aufs.ImageError):
        chain_ids(["md5:abc"])


def test_resolves_layout_directory_and_tarball(ramdir: Path) -> None:
    info = write_layout(ramdir / "oci", TARS)
    tar_directory(ramdir / "oci", ramdir / "oci.tar")
    for source in (ramdir / "oci", ramdir / "oci.tar"):
        with open_source(source) as src:
            image = resolve_image(src)
        assert image.format == "oci"
        assert image.manifest_digest == info["manifest"]
        assert [layer.digest for layer in image.layers] == info["layers"]
        assert [layer.diff_id for layer in image.layers] == [sha(t) for t in TARS]


def test_tarball_members_stream_in_place(ramdir: Path) -> None:
    write_layout(ramdir / "oci", TARS, compress="none")
    tar_directory(ramdir / "oci", ramdir / "oci.tar")
    with open_source(ramdir / "oci.tar") as src:
        image = resolve_image(src)
        for layer, tar in zip(image.layers, TARS):
            with src.open(layer.name) as f:
                assert f.read() == tar


def _index_with_platforms(layout: Path, platforms: list) -> dict:
    """An OCI layout whose index.json points at a nested index of one image per platform."""
    manifests = []
    digests = {}
    for os_name, arch in platforms:
        sub = layout / f"tmp-{arch}"
        info = write_layout(sub, [layer_tar([(f"{arch}.txt", arch.encode())])], arch=arch)
        for blob in (sub / "blobs" / "sha256").iterdir():
            put_blob(layout, blob.read_bytes())
        descriptor = dict(info["descriptor"])
        descriptor.pop("annotations", None)
        descriptor["platform"] = {"os": os_name, "architecture": arch}
        manifests.append(descriptor)
        digests[arch] = info["manifest"]
    nested = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    nested_digest, nested_size = put_blob(layout, nested)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_INDEX,
                "digest": nested_digest,
                "size": nested_size,
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return digests


def test_platform_choice_in_nested_index(ramdir: Path) -> None:
    digests = _index_with_platforms(ramdir / "multi", [("linux", "arm64"), ("linux", "amd64"), ("linux", "s390x")])
    with open_source(ramdir / "multi") as src:
        default = resolve_image(src)
        host_arch = host_platform()[1]
        assert default.manifest_digest == digests.get(host_arch, digests["amd64"])
        assert resolve_image(src, platform="linux/arm64").manifest_digest == digests["arm64"]
        assert resolve_image(src, platform="linux/s390x", ref="multi").manifest_digest == digests["s390x"]
        with pytest.raises(aufs.ImageError, match="no image for platform linux/riscv64.*available"):
            resolve_image(src, platform="linux/riscv64")
        with pytest.raises(ValueError):
            resolve_image(src, platform="arm64")
        with pytest.raises(aufs.ImageError, match="no image named"):
            resolve_image(src, ref="nope")


def test_several_images_need_a_ref(ramdir: Path) -> None:
    first = write_layout(ramdir / "a", TARS[:1], ref="one")
    info = write_layout(ramdir / "oci", TARS, ref="two", extra_index=[first["descriptor"]])
    for blob in (ramdir / "a" / "blobs" / "sha256").iterdir():
        put_blob(ramdir / "oci", blob.read_bytes())
    with open_source(ramdir / "oci") as src:
        with pytest.raises(aufs.ImageError, match="holds 2 images.*one, two"):
            resolve_image(src)
        assert resolve_image(src, ref="two").manifest_digest == info["manifest"]
        assert resolve_image(src, ref="one").manifest_digest == first["manifest"]


def _rewrite(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def test_tampered_metadata_is_a_digest_mismatch(ramdir: Path) -> None:
    info = write_layout(ramdir / "oci", TARS)
    config = ramdir / "oci" / "blobs" / "sha256" / info["config"][7:]
    _rewrite(config, config.read_bytes().replace(b'"amd64"', b'"arm64"'))
    with open_source(ramdir / "oci") as src, pytest.raises(aufs.DigestMismatch, match="config"):
        resolve_image(src)


@pytest.mark.parametrize(
    "index_text, message",
    [
        ("{not json", "index.json: not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"manifests": {}}', "expected a JSON array"),
        ('{{"manifests": [{{"mediaType": "{}", "digest": "sha256:xyz", "size": 1}}]}}'.format("application/vnd.oci.image.manifest.v1+json"), "malformed digest"),
        ('{"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:%s", "size": 1}]}' % ("0" * 64), "is missing"),
        ('{"manifests": []}', "lists no image manifest"),
    ],
)
def test_malformed_index_says_what_is_wrong(ramdir: Path, index_text: str, message: str) -> None:
    write_layout(ramdir / "oci", TARS)
    (ramdir / "oci" / "index.json").write_text(index_text)
    with open_source(ramdir / "oci") as src, pytest.raises(aufs.ImageError, match=message):
        resolve_image(src)


def test_layer_count_must_match_diff_ids(ramdir: Path) -> None:
    write_layout(ramdir / "oci", TARS, diff_ids=[sha(TARS[0])])
    with open_source(ramdir / "oci") as src, pytest.raises(aufs.ImageError, match="2 layers but its config lists 1"):
        resolve_image(src)


def _docker_save(root: Path, tars: list, layer_names: list, config_name: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]}}).encode()
    config_name = config_name or hashlib.sha256(config).hexdigest() + ".json"
    (root / config_name).write_bytes(config)
    for name, tar in zip(layer_names, tars):
        # the hostile names of the escape tests are never written: nothing may land outside root
        if ".." not in name and not (root / name).parent.is_symlink():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(tar)
    (root / "manifest.json").write_text(json.dumps([{"Config": config_name, "RepoTags": ["demo:1"], "Layers": layer_names}]))


def test_docker_save_legacy_layout(ramdir: Path) -> None:
    _docker_save(ramdir / "d", TARS, ["aaa/layer.tar", "bbb/layer.tar"])
    tar_directory(ramdir / "d", ramdir / "d.tar")
    with open_source(ramdir / "d.tar") as src:
        image = resolve_image(src, ref="demo:1")
    assert image.format == "docker-save"
    assert [layer.digest for layer in image.layers] == [None, None]
    assert [layer.diff_id for layer in image.layers] == [sha(t) for t in TARS]


def test_docker_save_names_cannot_escape(ramdir: Path) -> None:
    _docker_save(ramdir / "d", TARS, ["aaa/layer.tar", "../../etc/passwd"])
    with open_source(ramdir / "d") as src, pytest.raises(aufs.ImageError, match="outside the image"):
        resolve_image(src)
    # "outside" is a decoy beside the image, never a host path: an escape must not even read it
    decoy = ramdir / "outside"
    decoy.mkdir()
    (decoy / "passwd").write_bytes(TARS[1])
    os.symlink(decoy, ramdir / "d" / "evil")
    _docker_save(ramdir / "d", TARS, ["aaa/layer.tar", "evil/passwd"])
    with open_source(ramdir / "d") as src, pytest.raises(aufs.ImageError, match="outside the image"):
        resolve_image(src)
    assert (decoy / "passwd").read_bytes() == TARS[1]


def test_docker_save_config_checked_against_its_name(ramdir: Path) -> None:
    _docker_save(ramdir / "d", TARS, ["a/layer.tar", "b/layer.tar"], config_name="0" * 64 + ".json")
    with open_source(ramdir / "d") as src, pytest.raises(aufs.DigestMismatch):
        resolve_image(src)


def test_compressed_or_bogus_tarballs_are_refused(ramdir: Path) -> None:
    (ramdir / "x.tar.gz").write_bytes(gzip.compress(b"x" * 1000))
    with pytest.raises(aufs.ImageError, match="compressed"):
        open_source(ramdir / "x.tar.gz")
    (ramdir / "junk").write_bytes(os.urandom(4096))
    with pytest.raises(aufs.ImageError), open_source(ramdir / "junk") as src:
        resolve_image(src)
    with pytest.raises(aufs.ImageError, match="no such"):
        open_source(ramdir / "absent")
    (ramdir / "empty").mkdir()
    with open_source(ramdir / "empty") as src, pytest.raises(aufs.ImageError, match="neither"):
        resolve_image(src)


# ------------------------------------------------------------------ streams

PAYLOAD = layer_tar([("big", os.urandom(300_000) + b"\0" * 3_000_000), ("small", b"x")])


@functools.cache
def _compressed_forms() -> dict:
    two_members = gzip.compress(PAYLOAD[:100_000]) + gzip.compress(PAYLOAD[100_000:])
    zstd_frames = zstandard.ZstdCompressor().compress(PAYLOAD[:5000]) + zstandard.ZstdCompressor().compress(PAYLOAD[5000:])
    return {
        "plain": PAYLOAD,
        "gzip": gzip.compress(PAYLOAD),
        "gzip-multi-member": two_members,
        "zstd-multi-frame": zstd_frames,
        "bzip2": bz2.compress(PAYLOAD),
        "xz": lzma.compress(PAYLOAD),
    }


@pytest.mark.parametrize("form", sorted(_compressed_forms()))
def test_streams_decompress_and_hash(form: str) -> None:
    blob = _compressed_forms()[form]
    stream = open_layer_stream(io.BytesIO(blob), blob_digest=sha(blob), diff_id=sha(PAYLOAD), what="t")
    out = bytearray()
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        assert len(chunk) <= 65536  # bounded output, whatever the ratio
        out += chunk
    assert bytes(out) == PAYLOAD
    assert stream.verify() == sha(PAYLOAD)


def test_stream_verify_drains_what_the_consumer_left() -> None:
    blob = gzip.compress(PAYLOAD)
    stream = open_layer_stream(io.BytesIO(blob), blob_digest=sha(blob), diff_id=sha(PAYLOAD), what="t")
    with tarfile.open(fileobj=stream, mode="r|") as tar:  # stops at the end-of-archive marker
        next(iter(tar))
    assert stream.verify() == sha(PAYLOAD)


def test_wrong_diff_id_and_wrong_blob_digest() -> None:
    blob = gzip.compress(PAYLOAD)
    with pytest.raises(aufs.DigestMismatch, match="diffID"):
        open_layer_stream(io.BytesIO(blob), blob_digest=sha(blob), diff_id=sha(b"other"), what="t").verify()
    with pytest.raises(aufs.DigestMismatch, match="declares"):
        open_layer_stream(io.BytesIO(blob), blob_digest=sha(b"other"), diff_id=sha(PAYLOAD), what="t").verify()


def test_corrupt_gzip_crc_is_caught() -> None:
    blob = bytearray(gzip.compress(PAYLOAD))
    blob[-6] ^= 0xFF  # inside the CRC32 trailer
    with pytest.raises(aufs.ArchiveError, match="corrupt gzip"):
        open_layer_stream(io.BytesIO(bytes(blob)), blob_digest=None, diff_id=None, what="t").verify()
    # with a declared digest the verdict is the digest
    with pytest.raises(aufs.DigestMismatch):
        open_layer_stream(io.BytesIO(bytes(blob)), blob_digest=sha(gzip.compress(PAYLOAD)), diff_id=None, what="t").verify()


def test_truncated_gzip_is_caught() -> None:
    blob = gzip.compress(PAYLOAD)[:-20]
    with pytest.raises(aufs.ArchiveError, match="truncated"):
        open_layer_stream(io.BytesIO(blob), blob_digest=None, diff_id=None, what="t").verify()


def test_oversized_json_is_refused(ramdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aufs.image import sources

    write_layout(ramdir / "oci", TARS)
    monkeypatch.setattr(sources, "MAX_JSON_BYTES", 64)
    with open_source(ramdir / "oci") as src, pytest.raises(aufs.ImageError, match="too large"):
        resolve_image(src)


def test_tarball_links_cannot_reach_outside(ramdir: Path) -> None:
    """A docker-save tarball whose layer is a symlink member pointing out of the tarball."""
    _docker_save(ramdir / "d", TARS, ["aaa/layer.tar", "bbb/layer.tar"])
    (ramdir / "d" / "bbb" / "layer.tar").unlink()
    (ramdir / "decoy").write_bytes(TARS[1])  # beside the image: never a host path
    os.symlink("../../decoy", ramdir / "d" / "bbb" / "layer.tar")
    tar_directory(ramdir / "d", ramdir / "d.tar")
    with open_source(ramdir / "d.tar") as src, pytest.raises(aufs.ImageError, match="missing"):
        resolve_image(src)
