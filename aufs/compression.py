"""Detect how a layer stream is compressed and decompress it on the fly, checking integrity.

This module owns:

* :func:`detect_compression`: plain, gzip, zstd, bzip2 or xz, from the first bytes (never from
  a file name or media type, which lie);
* :func:`open_decompressed`: a streaming reader of the uncompressed bytes of any binary file
  object (pipes too: the input is read in bounded chunks, never all at once), optionally feeding
  hash objects (``hashlib.sha256()``) with the compressed and the uncompressed bytes as they pass,
  which is how the image importer gets blob digests and diffIDs without a second read.

Every decompressor here checks what its format can check (gzip CRC-32 and length, xz and zstd
checksums, bzip2 block CRCs) and refuses truncated streams; failures raise
:class:`aufs.ArchiveError` from the codec's own exception. libarchive's built-in gzip reader checks
neither CRC nor length, which is why layers are decompressed here and libarchive only ever sees
a plain tar. gzip uses ISA-L (the ``isal`` package, CPython only, about four times faster than
zlib) when it is importable, else zlib; zstd uses the ``zstandard`` package.
"""
from __future__ import annotations

import bz2
import enum
import io
import lzma
import zlib as _stdlib_zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable, Protocol

from .errors import ArchiveError

_gzip_zlib: Any = _stdlib_zlib
try:  # ISA-L: CPython wheels only; the zlib module API, same checks, ~4x faster
    from isal import isal_zlib

    _gzip_zlib = isal_zlib
except ImportError:  # pragma: no cover - depends on the interpreter
    pass

__all__ = [
    "OUT_CHUNK",
    "READ_CHUNK",
    "Compression",
    "DecompressingReader",
    "Hasher",
    "detect_compression",
    "open_decompressed",
]

READ_CHUNK = 1 << 18
"""Bytes read from the source at a time."""

OUT_CHUNK = 1 << 20
"""Most uncompressed bytes produced per step (bounds memory against compression bombs)."""

# zstd cannot bound its output per call: feed it slices small enough that even a frame made of
# RLE blocks (the worst ratio the format allows, ~32768:1) stays a bounded allocation
_ZSTD_SLICE = 1 << 13


class Compression(enum.Enum):
    """The compression of a layer stream, as told by its magic number."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    BZIP2 = "bzip2"
    XZ = "xz"


class Hasher(Protocol):
    """What :func:`open_decompressed` needs of a hash object (``hashlib`` objects fit)."""

    def update(self, data: bytes, /) -> None: ...


MAGIC_LEN = 6
"""Bytes :func:`detect_compression` looks at."""


def detect_compression(head: bytes) -> Compression:
    """The compression whose magic number ``head`` (the first :data:`MAGIC_LEN` bytes) starts with."""
    if head[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd" or (len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50):
        return Compression.ZSTD  # a frame, or a skippable frame (0x184D2A5?)
    if head[:3] == b"BZh":
        return Compression.BZIP2
    if head[:6] == b"\xfd7zXZ\x00":
        return Compression.XZ
    for name, matches, tool in _UNSUPPORTED:
        if matches(head):
            raise ArchiveError(f"{name}-compressed input is not supported (aufs reads plain tar, gzip, "
                               f"zstd, bzip2 and xz): decompress it first, e.g. with `{tool}`")
    return Compression.NONE


# compressions seen in the wild that layer tars do not use: named, so the error says what it is
_UNSUPPORTED: tuple[tuple[str, Callable[[bytes], bool], str], ...] = (
    ("lz4", lambda h: h[:4] == b"\x04\x22\x4d\x18", "lz4 -d"),
    ("lzip", lambda h: h[:4] == b"LZIP", "lzip -d"),
    ("lzop", lambda h: h[:4] == b"\x89LZO", "lzop -d"),
    ("Unix compress (.Z)", lambda h: h[:2] == b"\x1f\x9d", "uncompress"),
    # .lzma: properties byte 0x5d, then the dictionary size, 2^n or 3 * 2^n (at most two
    # non-zero bytes: a tar whose first name starts with "]" has four)
    ("lzma", lambda h: len(h) >= 5 and h[:1] == b"\x5d" and _lzma_dictionary(int.from_bytes(h[1:5], "little")),
     "unlzma"),
)


def _lzma_dictionary(size: int) -> bool:
    if size < 4096:
        return False
    odd = size >> ((size & -size).bit_length() - 1)
    return odd in (1, 3)


class _Decoder:
    """One compressed format, member after member: ``push`` input, ``step`` out bounded output."""

    name = ""

    def __init__(self) -> None:
        self._buf = b""
        self._started = False  # the current member has had input but has not ended
        self._padding = False  # only NUL bytes may follow (trailing zero padding)

    def push(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    def has_input(self) -> bool:
        return bool(self._buf)

    def _skip_padding(self) -> bool:
        """True if the buffered input is trailing NUL padding (consumed), which gzip tolerates."""
        if not self._started and (self._padding or self._buf[:1] == b"\x00"):
            if self._buf.strip(b"\x00"):
                raise ArchiveError(f"corrupt {self.name} stream: garbage after the last member")
            self._padding = True
            self._buf = b""
            return True
        return False

    def step(self) -> bytes:
        raise NotImplementedError

    def finish(self) -> None:
        """The input ended: refuse a member that did not."""
        if self._started:
            raise ArchiveError(f"truncated {self.name} stream: it ends inside compressed data")


class _ZlibDecoder(_Decoder):
    name = "gzip"

    def __init__(self) -> None:
        super().__init__()
        self._d = _gzip_zlib.decompressobj(31)

    def step(self) -> bytes:
        if self._skip_padding():
            return b""
        self._started = True
        out: bytes = self._d.decompress(self._buf, OUT_CHUNK)
        if self._d.eof:
            self._buf = self._d.unused_data
            self._d = _gzip_zlib.decompressobj(31)
            self._started = False
        else:
            self._buf = self._d.unconsumed_tail
        return out


class _BufferingDecoder(_Decoder):
    """bz2 and lzma decompressors: they keep unconsumed input themselves."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        super().__init__()
        self._factory = factory
        self._d = factory()

    def has_input(self) -> bool:
        return bool(self._buf) or (self._started and not self._d.needs_input)

    def step(self) -> bytes:
        if self._skip_padding():
            return b""
        self._started = True
        data, self._buf = (self._buf, b"") if self._d.needs_input else (b"", self._buf)
        out: bytes = self._d.decompress(data, OUT_CHUNK)
        if self._d.eof:
            self._buf = self._d.unused_data + self._buf
            self._d = self._factory()
            self._started = False
        return out


class _ZstdDecoder(_Decoder):
    name = "zstd"

    def __init__(self) -> None:
        super().__init__()
        import zstandard  # imported on first use: most layers are gzip

        self._zstd = zstandard
        self._dctx = zstandard.ZstdDecompressor()
        self._d = self._dctx.decompressobj()

    def step(self) -> bytes:
        if self._skip_padding():
            return b""
        self._started = True
        piece, self._buf = self._buf[:_ZSTD_SLICE], self._buf[_ZSTD_SLICE:]
        out: bytes = self._d.decompress(piece)
        if self._d.eof:
            self._buf = self._d.unused_data + self._buf
            self._d = self._dctx.decompressobj()
            self._started = False
        return out


class _PlainDecoder(_Decoder):
    name = "plain"

    def step(self) -> bytes:
        out, self._buf = self._buf, b""
        return out


def _decoder_for(kind: Compression) -> _Decoder:
    if kind is Compression.GZIP:
        return _ZlibDecoder()
    if kind is Compression.ZSTD:
        return _ZstdDecoder()
    if kind is Compression.BZIP2:
        dec = _BufferingDecoder(bz2.BZ2Decompressor)
        dec.name = "bzip2"
        return dec
    if kind is Compression.XZ:
        dec = _BufferingDecoder(lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ))
        dec.name = "xz"
        return dec
    return _PlainDecoder()


def _codec_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [_gzip_zlib.error, OSError, EOFError, lzma.LZMAError, ValueError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


class DecompressingReader(io.RawIOBase):
    """The uncompressed bytes of a (possibly compressed) binary stream; see :func:`open_decompressed`.

    ``compression`` tells what was detected. Reading past the end of a truncated or corrupt
    stream raises :class:`aufs.ArchiveError`; the end of the data is only reported (``b""``)
    once every checksum has been verified.
    """

    def __init__(self, source: BinaryIO, *, hash_compressed: Hasher | None = None,
                 hash_uncompressed: Hasher | None = None, read_chunk: int = READ_CHUNK) -> None:
        super().__init__()
        self._source = source
        self._hash_in = hash_compressed
        self._hash_out = hash_uncompressed
        self._read_chunk = read_chunk
        head = b""
        while len(head) < MAGIC_LEN:
            more = self._read_source(MAGIC_LEN - len(head))
            if not more:
                break
            head += more
        self.empty = not head
        """True if the source had no bytes at all."""
        self.compression = detect_compression(head)
        self._decoder = _decoder_for(self.compression)
        self._decoder.push(head)
        self._source_done = False
        self._pending = memoryview(b"")
        self._chunks = self._generate()

    def _read_source(self, size: int) -> bytes:
        data = self._source.read(size)
        if data is None:  # a non-blocking source with nothing ready
            raise ArchiveError("the layer stream is non-blocking and had no data ready")
        if data and self._hash_in is not None:
            self._hash_in.update(data)
        return bytes(data)

    def _generate(self) -> Iterator[bytes]:
        decoder = self._decoder
        errors = _codec_errors()
        name = decoder.name
        while True:
            if not decoder.has_input():
                if self._source_done:
                    decoder.finish()
                    return
                data = self._read_source(self._read_chunk)
                if not data:
                    self._source_done = True
                    continue
                decoder.push(data)
            try:
                out = decoder.step()
            except ArchiveError:
                raise
            except errors as exc:
                raise ArchiveError(f"corrupt {name} stream: {exc}") from exc
            if out:
                if self._hash_out is not None:
                    self._hash_out.update(out)
                yield out

    def iter_chunks(self) -> Iterator[bytes]:
        """The rest of the uncompressed data as bytes chunks of at most :data:`OUT_CHUNK`."""
        if self._pending:
            pending, self._pending = bytes(self._pending), memoryview(b"")
            yield pending
        yield from self._chunks

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def open_decompressed(fileobj: BinaryIO, *, hash_compressed: Hasher | None = None,
                      hash_uncompressed: Hasher | None = None) -> DecompressingReader:
    """A readable of the uncompressed content of ``fileobj``, whatever its compression.

    ``fileobj`` is read sequentially in chunks of :data:`READ_CHUNK` (it may be a pipe).
    ``hash_compressed`` is fed every byte read from ``fileobj``, ``hash_uncompressed`` every byte
    produced; both are complete once the reader has returned ``b""``. Raises
    :class:`aufs.ArchiveError` (while reading) on corrupt or truncated input.
    """
    return DecompressingReader(fileobj, hash_compressed=hash_compressed,
                               hash_uncompressed=hash_uncompressed)
