"""A layer blob as a stream of its uncompressed tar, with both digests computed on the way.

Owns :class:`LayerStream`, the glue between an image's blob and ``Driver.apply_diff``: the
blob is read through a :class:`~aufs.image.digests.HashingReader` (blob digest, progress,
cancellation) and decompressed by :func:`aufs.compression.open_decompressed` (format detected
from content; gzip CRC, zstd/xz checksums and truncation checked there), whose output is
hashed into the diffID. Memory stays bounded whatever the compression ratio.
"""
from __future__ import annotations

import hashlib
import io
from typing import Any, BinaryIO, Callable

from ..compression import open_decompressed
from ..errors import ArchiveError, DigestMismatch
from .digests import HashingReader

__all__ = ["LayerStream", "blame_blob", "open_layer_stream"]


class LayerStream(io.RawIOBase):
    """The uncompressed tar of one layer blob, hashed as it is read.

    ``compressed`` is the :class:`HashingReader` over the blob (its digest checks the blob);
    the uncompressed bytes hash to the diffID. Call :meth:`verify` once the consumer is done:
    it drains what the consumer left (tar padding after the end-of-archive marker) and raises
    DigestMismatch for a wrong blob digest or diffID.
    """

    def __init__(self, compressed: HashingReader, expected_diff_id: str | None, *, what: str) -> None:
        super().__init__()
        self.compressed = compressed
        self.expected_diff_id = expected_diff_id
        self.what = what
        self._diff_hash = hashlib.sha256()
        try:
            self._reader = open_decompressed(compressed, hash_uncompressed=self._diff_hash)  # type: ignore[arg-type]
        except ArchiveError as exc:
            raise ArchiveError(f"{what}: {exc}") from exc
        self.compression = self._reader.compression.value

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._reader.readinto(buffer)
        except ArchiveError as exc:
            raise ArchiveError(f"{self.what}: {exc}") from exc

    def _drain(self) -> None:
        buffer = bytearray(1 << 20)
        while self.readinto(buffer):
            pass

    def verify(self) -> str:
        """Drain everything, check the blob digest then the diffID; return the diffID seen."""
        try:
            self._drain()
        except ArchiveError as exc:
            # A corrupt blob is first of all a blob that does not match its digest: say so
            # when the declared digest is known, it is the more useful message.
            blame_blob(self.compressed, exc)
            raise
        self.compressed.verify()
        seen = "sha256:" + self._diff_hash.hexdigest()
        if self.expected_diff_id is not None and seen != self.expected_diff_id:
            raise DigestMismatch(
                f"{self.what}: the uncompressed layer has sha256 {seen}, "
                f"the image config declares diffID {self.expected_diff_id}"
            )
        return seen


def blame_blob(blob: HashingReader, exc: BaseException) -> None:
    """Raise DigestMismatch (from ``exc``) if the blob, read to its end, is not what it claims."""
    if blob.expected is None:
        return
    try:
        blob.drain()
    except Exception:  # noqa: BLE001 - the source itself failed: keep the original error
        return
    seen = "sha256:" + blob.hexdigest()
    if seen != blob.expected:
        raise DigestMismatch(f"{blob.what}: sha256 is {seen}, the image declares {blob.expected}") from exc


def open_layer_stream(
    blob: BinaryIO,
    *,
    blob_digest: str | None,
    diff_id: str | None,
    what: str,
    on_read: Callable[[int], None] | None = None,
) -> LayerStream:
    """Wrap a (compressed) layer blob: hashing, detection, decompression (see :class:`LayerStream`)."""
    compressed = HashingReader(blob, blob_digest, what=what, on_read=on_read)
    return LayerStream(compressed, diff_id, what=what)

