"""Content digests of image blobs: parsing, chain ids, and hashing on the way through.

Owns the ``sha256:<hex>`` digest syntax (the only algorithm aufs accepts; the OCI spec lets
registries use others but no real image does), the OCI chainID rule that gives imported
layers their ids, and :class:`HashingReader`, which hashes a stream while it is read so a blob
is verified without a second pass.
"""
from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from typing import BinaryIO, Callable

from ..errors import DigestMismatch, ImageError

__all__ = ["HashingReader", "chain_ids", "parse_digest", "sha256_digest"]

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})\Z")


def parse_digest(value: object, *, what: str) -> str:
    """Return the 64-char hex of a ``sha256:<hex>`` digest, or raise ImageError naming ``what``."""
    if not isinstance(value, str):
        raise ImageError(f"{what}: digest must be a string, got {type(value).__name__}")
    match = _DIGEST.match(value)
    if match is None:
        raise ImageError(f"{what}: unsupported or malformed digest {value[:80]!r} (want sha256:<64 hex>)")
    return match.group(1)


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Hex chainIDs (OCI image-spec config.md) of a layer stack given its ``sha256:`` diffIDs.

    chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)), both
    operands written with their ``sha256:`` prefix. The result is returned without the prefix so it
    is a valid layer id.
    """
    result: list[str] = []
    previous: str | None = None
    for index, diff_id in enumerate(diff_ids):
        parse_digest(diff_id, what=f"config rootfs.diff_ids[{index}]")
        chain = diff_id if previous is None else sha256_digest(f"{previous} {diff_id}".encode())
        result.append(chain[len("sha256:"):])
        previous = chain
    return result


class HashingReader(io.RawIOBase):
    """A readable stream that sha256-hashes every byte read from ``raw`` and counts them.

    ``on_read(total_bytes_so_far)`` is called after each read (progress reporting).
    :meth:`verify` drains the rest of the stream, then raises DigestMismatch unless the bytes
    seen hash to ``expected`` (a ``sha256:`` digest; None only counts and hashes).
    """

    def __init__(
        self,
        raw: BinaryIO,
        expected: str | None,
        *,
        what: str,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._hash = hashlib.sha256()
        self.expected = expected
        self.what = what
        self.bytes_read = 0
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        if not data:
            return 0
        n = len(data)
        view[:n] = data
        self._account(data)
        return n

    def read(self, size: int = -1) -> bytes:
        # Fast path: hand out the underlying chunk without an extra copy into a buffer.
        data = self._raw.read(size)
        if data:
            self._account(data)
        return data

    def _account(self, data: bytes) -> None:
        self._hash.update(data)
        self.bytes_read += len(data)
        if self._on_read is not None:
            self._on_read(self.bytes_read)

    def hexdigest(self) -> str:
        """Hex sha256 of what has been read so far."""
        return self._hash.hexdigest()

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read (and hash) whatever the consumer left unread."""
        while self.read(chunk):
            pass

    def verify(self) -> str:
        """Drain, then check the digest; return the ``sha256:`` digest actually seen."""
        self.drain()
        seen = "sha256:" + self._hash.hexdigest()
        if self.expected is not None and seen != self.expected:
            raise DigestMismatch(f"{self.what}: sha256 is {seen}, the image declares {self.expected}")
        return seen
