"""apply_tar inputs and failures: paths, bytes, file objects and pipes, every compression,
corrupt and truncated streams, non-tar formats, running out of space, threads at once."""
from __future__ import annotations

import bz2
import ctypes
import ctypes.util
import gzip
import io
import lzma
import os
import threading
import zipfile

import pytest
import zstandard

from aufs import ArchiveError, NoSpace
from aufs.apply import apply_tar
from aufs.whiteouts import WhiteoutFormat

from .apply_helpers import entry, make_tar, snapshot

AUFS = WhiteoutFormat.AUFS
ENTRIES = [entry("etc", "dir", mtime=5), entry("etc/conf", data=b"k=v\n" * 5000, mode=0o600),
           entry("bin", "dir", mtime=7), entry("bin/tool", data=os.urandom(200_000), mode=0o755), entry("bin/alias", "hardlink", link="bin/tool")]
TAR = make_tar(ENTRIES)
COMPRESS = {
    "plain": lambda b: b,
    "gzip": gzip.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "bzip2": bz2.compress,
    "xz": lambda b: lzma.compress(b, preset=0),
}


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    out = tmp_path_factory.mktemp("expected")
    apply_tar(out, TAR, AUFS)
    return snapshot(str(out))


def _pipe_of(data: bytes):
    r, w = os.pipe()

    def write():
        with os.fdopen(w, "wb") as f:
            f.write(data)

    t = threading.Thread(target=write)
    t.start()
    return os.fdopen(r, "rb"), t


@pytest.mark.parametrize("how", ["path", "bytes", "fileobj", "pipe"])
@pytest.mark.parametrize("compression", sorted(COMPRESS))
def test_every_source_and_compression(ramdir, expected, how, compression):
    blob = COMPRESS[compression](TAR)
    out = ramdir / "out"
    out.mkdir()
    if how == "path":
        (ramdir / "layer").write_bytes(blob)
        apply_tar(out, str(ramdir / "layer"), AUFS)
    elif how == "bytes":
        apply_tar(out, blob, AUFS)
    elif how == "fileobj":
        apply_tar(out, io.BytesIO(blob), AUFS)
    else:
        f, t = _pipe_of(blob)
        with f:
            apply_tar(out, f, AUFS)
        t.join()
    assert snapshot(str(out)) == expected


def test_empty_input_is_an_empty_layer(ramdir):
    apply_tar(ramdir, b"", AUFS)
    (ramdir / "empty").write_bytes(b"")
    out = ramdir / "o"
    out.mkdir()
    apply_tar(out, ramdir / "empty", AUFS)
    assert os.listdir(out) == []


@pytest.mark.parametrize("damage", ["deflate", "crc", "isize", "truncated-gz", "truncated-tar",
                                    "garbage", "zip", "half-header"])
def test_corrupt_inputs_raise_archive_error(ramdir, damage):
    gz = bytearray(gzip.compress(TAR))
    if damage == "deflate":
        gz[len(gz) // 2] ^= 0x10
        blob = bytes(gz)
    elif damage == "crc":
        gz[-8] ^= 0x01
        blob = bytes(gz)
    elif damage == "isize":
        gz[-1] ^= 0x01
        blob = bytes(gz)
    elif damage == "truncated-gz":
        blob = bytes(gz[: len(gz) - 100])
    elif damage == "truncated-tar":
        blob = TAR[:70_000]
    elif damage == "garbage":
        blob = os.urandom(10_000)
    elif damage == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("etc/passwd", "x")
        blob = buf.getvalue()
    else:
        blob = TAR[:300]
    with pytest.raises(ArchiveError) as info:
        apply_tar(ramdir, blob, AUFS)
    if damage in ("deflate", "crc", "isize"):
        assert "gzip" in str(info.value) and info.value.__cause__ is not None


def test_corrupt_gzip_file_path_and_pipe(ramdir):
    gz = bytearray(gzip.compress(TAR))
    gz[-6] ^= 0x01
    (ramdir / "l.tgz").write_bytes(bytes(gz))
    (ramdir / "o1").mkdir()
    with pytest.raises(ArchiveError, match="gzip"):
        apply_tar(ramdir / "o1", ramdir / "l.tgz", AUFS)
    f, t = _pipe_of(bytes(gz))
    (ramdir / "o2").mkdir()
    with f, pytest.raises(ArchiveError, match="gzip"):
        apply_tar(ramdir / "o2", f, AUFS)
    t.join()


def test_trailing_data_after_tar_is_read_and_checked(ramdir):
    """The tar ends before the gzip stream: the CRC at the very end must still be checked."""
    gz = bytearray(gzip.compress(TAR + b"\0" * 100_000))
    gz[-5] ^= 0x01
    with pytest.raises(ArchiveError, match="gzip"):
        apply_tar(ramdir, bytes(gz), AUFS)


def test_not_a_layer_type_is_type_error(ramdir):
    with pytest.raises(TypeError):
        apply_tar(ramdir, 42, AUFS)  # type: ignore[arg-type]


@pytest.fixture
def small_fs(ramdir):
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    target = ramdir / "small"
    target.mkdir()
    assert libc.mount(b"tmpfs", bytes(target), b"tmpfs", 0, b"size=2m") == 0
    try:
        yield target
    finally:
        libc.umount2(bytes(target), 2)


def test_running_out_of_space_is_nospace(small_fs):
    big = make_tar([entry(f"f{i}", data=os.urandom(40_000)) for i in range(100)])
    with pytest.raises(NoSpace):
        apply_tar(small_fs, big, AUFS)


def test_declared_size_beyond_free_space_is_refused_before_writing(small_fs):
    class Endless(io.RawIOBase):
        """A 1 GiB tar entry whose data never needs to be produced."""

        def __init__(self):
            self.header = make_tar([entry("bomb", data=b"")])[:512]
            self.sent = 0

        def readable(self):
            return True

        def readinto(self, b):
            import tarfile
            if self.sent == 0:
                ti = tarfile.TarInfo("bomb")
                ti.size = 1 << 30
                hdr = ti.tobuf(tarfile.USTAR_FORMAT)
                b[: len(hdr)] = hdr
                self.sent = len(hdr)
                return len(hdr)
            n = len(b)
            b[:n] = b"\0" * n
            self.sent += n
            return n

    src = Endless()
    with pytest.raises(NoSpace):
        apply_tar(small_fs, src, AUFS)
    assert src.sent < (64 << 20)
    assert os.listdir(small_fs) == []


def test_threads_extract_concurrently(ramdir, expected):
    errors = []

    def work(i):
        out = ramdir / f"t{i}"
        out.mkdir()
        try:
            blob = COMPRESS[["plain", "gzip", "zstd"][i % 3]](TAR)
            apply_tar(out, blob, AUFS)
            assert snapshot(str(out)) == expected
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
