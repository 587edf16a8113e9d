"""Where an image's files come from: an image directory or an image tarball.

Owns :func:`open_source`, which returns an :class:`ImageSource` giving read access to the files
of an OCI image layout or ``docker save`` output by their relative names ("index.json",
"blobs/sha256/<hex>", "<id>/layer.tar"), whether they sit in a directory or in an uncompressed
tarball. A tarball is never extracted: its member table is read once and each member is then
read in place, through its own positioned reads (``os.pread``), so several layers stream in
parallel from one file.

Names come from hostile manifests: a name with ``..``, an absolute name, or a directory entry
(symlink) leading outside the image is refused with ImageError.
"""
from __future__ import annotations

import io
import os
import posixpath
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, cast

from ..errors import ImageError

__all__ = ["MAX_JSON_BYTES", "DirectorySource", "ImageSource", "TarballSource", "open_source"]

#: JSON documents (index, manifests, configs) larger than this are refused as hostile.
MAX_JSON_BYTES = 32 << 20


def normalize_name(name: str, *, what: str) -> str:
    """A member name as a clean relative POSIX path, or ImageError if it would leave the image."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ImageError(f"{what}: bad file name {name!r}")
    if name.startswith("/"):
        raise ImageError(f"{what}: absolute file name {name!r} is not allowed in an image")
    clean = posixpath.normpath(name)
    if clean == ".." or clean.startswith("../") or clean == ".":
        raise ImageError(f"{what}: file name {name!r} points outside the image")
    return clean


class ImageSource:
    """Read access to the files of one image, by relative name."""

    description: str

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        """A new, independent reader of the file (safe to use from its own thread)."""
        raise NotImplementedError

    def read_json_bytes(self, name: str) -> bytes:
        """The whole (small) file; ImageError if missing or larger than MAX_JSON_BYTES."""
        if not self.exists(name):
            raise ImageError(f"{self.description}: {name} is missing")
        size = self.size(name)
        if size > MAX_JSON_BYTES:
            raise ImageError(f"{self.description}: {name} is {size} bytes, too large for a JSON document")
        with self.open(name) as f:
            return f.read()

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageSource:  # noqa: PYI034 - no typing_extensions dependency
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DirectorySource(ImageSource):
    """An image laid out in a directory (OCI image layout, or an extracted ``docker save``)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.description = str(root)

    def _path(self, name: str) -> Path:
        clean = normalize_name(name, what=self.description)
        path = self.root / clean
        real = Path(os.path.realpath(path))
        if real != self.root and self.root not in real.parents:
            raise ImageError(f"{self.description}: {name} leads outside the image directory")
        return real

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError as exc:
            raise ImageError(f"{self.description}: {name} is missing") from exc


class _MemberReader(io.RawIOBase):
    """Reads ``length`` bytes at ``offset`` of a shared fd with pread: no shared file position."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = offset
        self._end = offset + length

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        left = self._end - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._pos)
        if not data:
            raise ImageError("image tarball is truncated")
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class TarballSource(ImageSource):
    """An uncompressed tarball (``docker save`` output, or an OCI layout packed with tar)."""

    def __init__(self, path: Path) -> None:
        self.description = str(path)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        # name -> (offset of data, size); links are resolved to their target's entry
        self._members: dict[str, tuple[int, int]] = {}
        try:
            self._index(path)
        except BaseException:
            os.close(self._fd)
            raise

    def _index(self, path: Path) -> None:
        links: dict[str, str] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    try:
                        name = normalize_name(member.name, what=self.description)
                    except ImageError:
                        continue  # such a member can never be named by a valid manifest
                    if member.isfile():
                        self._members[name] = (member.offset_data, member.size)
                    elif member.issym():
                        links[name] = posixpath.join(posixpath.dirname(name), member.linkname)
                    elif member.islnk():
                        links[name] = member.linkname
        except tarfile.ReadError as exc:
            raise ImageError(f"{self.description}: not an image tarball (uncompressed tar): {exc}") from exc
        # Old `docker save` writes repeated layers as symlinks ("../<id>/layer.tar").
        for name, target in links.items():
            seen = 0
            while target in links and seen < 40:
                target, seen = links[target], seen + 1
            try:
                target = normalize_name(target, what=self.description)
            except ImageError:
                continue
            if target in self._members:
                self._members[name] = self._members[target]

    def exists(self, name: str) -> bool:
        return normalize_name(name, what=self.description) in self._members

    def _entry(self, name: str) -> tuple[int, int]:
        entry = self._members.get(normalize_name(name, what=self.description))
        if entry is None:
            raise ImageError(f"{self.description}: {name} is missing from the tarball")
        return entry

    def size(self, name: str) -> int:
        return self._entry(name)[1]

    def open(self, name: str) -> BinaryIO:
        offset, size = self._entry(name)
        return cast(BinaryIO, io.BufferedReader(_MemberReader(self._fd, offset, size), buffer_size=1 << 18))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# the first line of the `version` file of a containers/image `dir:` layout (skopeo copy ...
# dir:PATH): one image's manifest.json and its blobs named by bare hex digest
_DIR_TRANSPORT_MAGIC = b"Directory Transport Version:"


def _refuse_dir_transport(path: Path) -> None:
    """A skopeo ``dir:`` layout is no format aufs imports: say which format it is and what to do."""
    if (path / "index.json").exists():
        return  # an OCI layout, whatever else lies beside it
    try:
        with open(path / "version", "rb") as f:
            head = f.read(len(_DIR_TRANSPORT_MAGIC))
    except OSError:
        return
    if head == _DIR_TRANSPORT_MAGIC:
        raise ImageError(
            f"{path}: a skopeo/containers-image `dir:` layout is not a supported image format; "
            f"convert it to an OCI layout (`skopeo copy dir:{path} oci:NEW-DIR:TAG`) or a docker "
            "save tarball and import that",
            path=path,
        )


def open_source(source: str | os.PathLike[str]) -> ImageSource:
    """Open a path as an image source: a directory, or an uncompressed tarball."""
    path = Path(os.fspath(source))
    if path.is_dir():
        _refuse_dir_transport(path)
        return DirectorySource(path)
    if not path.exists():
        raise ImageError(f"{path}: no such image file or directory", path=path)
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ")):
        raise ImageError(
            f"{path}: the image tarball is compressed; decompress it first "
            "(e.g. `gunzip -k` or `zstd -d`): members are read in place, which needs a plain tar",
            path=path,
        )
    return TarballSource(path)


