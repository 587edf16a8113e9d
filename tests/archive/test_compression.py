"""aufs.compression: detection, checked streaming decompression, hashing on the way."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os

import pytest
import zstandard

from aufs import ArchiveError
from aufs.compression import Compression, detect_compression, open_decompressed

DATA = os.urandom(200_000) + b"layer" * 300_000

COMPRESSORS = {
    Compression.NONE: lambda b: b,
    Compression.GZIP: lambda b: gzip.compress(b, 6),
    Compression.ZSTD: lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b),
    Compression.BZIP2: lambda b: bz2.compress(b, 1),
    Compression.XZ: lambda b: lzma.compress(b, preset=0),
}


class Trickle(io.RawIOBase):
    """A pipe-like source that returns at most a few bytes per read."""

    def __init__(self, data: bytes, step: int = 7777) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out


def read_all(reader) -> bytes:
    out = bytearray()
    buf = bytearray(100_003)
    while True:
        n = reader.readinto(buf)
        if not n:
            return bytes(out)
        out += buf[:n]


@pytest.mark.parametrize("kind", list(Compression))
def test_roundtrip_detection_and_hashes(kind):
    blob = COMPRESSORS[kind](DATA)
    assert detect_compression(blob[:6]) is kind
    hin, hout = hashlib.sha256(), hashlib.sha256()
    reader = open_decompressed(Trickle(blob), hash_compressed=hin, hash_uncompressed=hout)
    assert reader.compression is kind
    assert read_all(reader) == DATA
    assert hin.hexdigest() == hashlib.sha256(blob).hexdigest()
    assert hout.hexdigest() == hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD, Compression.BZIP2, Compression.XZ])
def test_multi_member_streams(kind):
    blob = COMPRESSORS[kind](DATA[:1000]) + COMPRESSORS[kind](DATA[1000:])
    assert read_all(open_decompressed(io.BytesIO(blob))) == DATA


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD, Compression.BZIP2, Compression.XZ])
def test_truncated_streams_are_refused(kind):
    blob = COMPRESSORS[kind](DATA)
    with pytest.raises(ArchiveError, match="truncated|corrupt"):
        read_all(open_decompressed(io.BytesIO(blob[:-9])))


def test_gzip_flipped_byte_in_deflate_data():
    blob = bytearray(gzip.compress(DATA))
    blob[len(blob) // 2] ^= 0x40
    with pytest.raises(ArchiveError) as info:
        read_all(open_decompressed(io.BytesIO(bytes(blob))))
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("offset", [-8, -7, -5, -4, -3, -1])  # CRC-32 then ISIZE
def test_gzip_flipped_byte_in_trailer(offset):
    blob = bytearray(gzip.compress(DATA))
    blob[offset] ^= 0x01
    with pytest.raises(ArchiveError):
        read_all(open_decompressed(io.BytesIO(bytes(blob))))


def test_zstd_checksum_mismatch():
    blob = bytearray(COMPRESSORS[Compression.ZSTD](DATA))
    blob[-1] ^= 1
    with pytest.raises(ArchiveError):
        read_all(open_decompressed(io.BytesIO(bytes(blob))))


def test_garbage_after_gzip_member_is_refused_but_zero_padding_is_fine():
    blob = gzip.compress(DATA)
    assert read_all(open_decompressed(io.BytesIO(blob + b"\0" * 512))) == DATA
    with pytest.raises(ArchiveError):
        read_all(open_decompressed(io.BytesIO(blob + b"\0\0garbage")))


def test_bomb_output_is_bounded_per_step():
    blob = gzip.compress(b"\0" * (64 << 20), 9)
    reader = open_decompressed(io.BytesIO(blob))
    sizes = [len(c) for c in reader.iter_chunks()]
    assert sum(sizes) == 64 << 20 and max(sizes) <= 1 << 20


def test_empty_and_short_inputs():
    reader = open_decompressed(io.BytesIO(b""))
    assert reader.empty and read_all(reader) == b""
    assert read_all(open_decompressed(io.BytesIO(b"ab"))) == b"ab"



@pytest.mark.parametrize("name, data", [
    ("lzma", lzma.compress(b"tar" * 1000, format=lzma.FORMAT_ALONE)),
    ("lz4", b"\x04\x22\x4d\x18\x64\x40\xa7" + b"\x00" * 16),   # an lz4 frame header
    ("compress", b"\x1f\x9d\x90" + b"x" * 16),                  # `compress` (.Z)
    ("lzip", b"LZIP\x01\x0c" + b"\x00" * 16),
])
def test_unsupported_compressions_are_named(driver, name: str, data: bytes) -> None:
    driver.create("l")
    with pytest.raises(ArchiveError, match="not supported") as info:
        driver.apply_diff("l", data)
    assert info.value.layer_id == "l" and name.split()[0][:3] in str(info.value).lower()
    assert os.listdir(driver.diff_dir("l")) == []


def test_a_tar_whose_first_name_starts_like_lzma_is_a_tar(driver) -> None:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("]abc")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert detect_compression(buf.getvalue()[:6]) is Compression.NONE
    driver.create("l")
    driver.apply_diff("l", buf.getvalue())
    assert os.listdir(driver.diff_dir("l")) == ["]abc"]
