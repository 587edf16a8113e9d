"""Issue 9, item 6: names that are not UTF-8, and libarchive's warnings decided one by one.

Go's archive/tar (so Docker, umoci, skopeo, buildah) writes a name's raw bytes into a pax
``path``/``linkpath`` record without ``hdrcharset=BINARY``. libarchive warns ("Pathname can't
be converted from UTF-8 to current locale") and aufs used to refuse the whole layer. The image
here is packed by umoci itself from a rootfs holding such names, imported through the CLI under
each locale a user may run in, and the names must come out byte-exact, on disk and again in
``aufs diff`` (where they are raw bytes with ``hdrcharset=BINARY``, which GNU tar, bsdtar and
Go read back as the same bytes).

The Go corpus (``../shared/corpus/go-archive-tar``): ``pax-multi-hdrs.tar`` (a malformed
record libarchive ignores with a warning; Go and GNU tar read it) is extracted as GNU tar
extracts it; ``pax-nul-xattrs.tar`` (an xattr name with a NUL, which libarchive drops with a
warning: data lost) stays refused with the layer unchanged.
"""
from __future__ import annotations

import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

import aufs
from aufs import ArchiveError

from .apply_helpers import snapshot

CORPUS = pathlib.Path(__file__).resolve().parents[3] / "shared" / "corpus" / "go-archive-tar"
ROOT = pathlib.Path(__file__).resolve().parents[2]

NAMES = {
    b"latin1-\xe9": ("file", b"x"),
    b"dir-\xff": ("dir", b""),
    b"link-\xe8": ("symlink", b"latin1-\xe9"),
    b"hard-\xe7": ("hardlink", b"latin1-\xe9"),
    "utf8-é".encode(): ("file", b"u"),
}


def run(*argv: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def umoci_image(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed (scripts/bootstrap installs it)")
    work = tmp_path_factory.mktemp("umoci")
    layout = work / "img"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:t")
    bundle = work / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:t", str(bundle))
    rootfs = os.fsencode(bundle / "rootfs")
    for name, (kind, data) in NAMES.items():
        path = os.path.join(rootfs, name)
        if kind == "file":
            with open(path, "wb") as f:
                f.write(data)
        elif kind == "dir":
            os.mkdir(path)
        elif kind == "symlink":
            os.symlink(data, path)
        else:
            os.link(os.path.join(rootfs, data), path)
    run("umoci", "repack", "--image", f"{layout}:t", str(bundle))
    return layout


def layer_tars(layout: pathlib.Path) -> list[bytes]:
    import gzip

    out = []
    for blob in (layout / "blobs" / "sha256").iterdir():
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":
            out.append(gzip.decompress(data))
    return out


def test_umoci_writes_raw_bytes_without_hdrcharset(umoci_image: pathlib.Path) -> None:
    """The situation of the issue: Go's pax records hold the raw bytes, no hdrcharset."""
    (tar,) = [t for t in layer_tars(umoci_image) if b"latin1-\xe9" in t]
    assert b"path=latin1-\xe9\n" in tar
    assert b"hdrcharset" not in tar


@pytest.mark.parametrize("locale", ["C.UTF-8", "C", "POSIX"])
def test_import_keeps_raw_names_byte_exact(umoci_image: pathlib.Path, ramdir: pathlib.Path, locale: str) -> None:
    home = ramdir / "store"
    env = {**os.environ, "LC_ALL": locale, "LANG": locale, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "aufs", "--home", str(home), "import", str(umoci_image)],
                          env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    top = proc.stdout.decode().split()[-1]
    d = aufs.Driver(home)
    try:
        layer = os.fsencode(d.diff_dir(top))
        found = {n for n in os.listdir(layer)}
        assert set(NAMES) <= found, found
        assert open(os.path.join(layer, b"latin1-\xe9"), "rb").read() == b"x"
        assert os.readlink(os.path.join(layer, b"link-\xe8")) == b"latin1-\xe9"
        a, b = os.lstat(os.path.join(layer, b"latin1-\xe9")), os.lstat(os.path.join(layer, b"hard-\xe7"))
        assert a.st_ino == b.st_ino
        assert os.path.isdir(os.path.join(layer, b"dir-\xff"))

        # diff (through the CLI, in the same locale) writes the same bytes back
        out = ramdir / "diff.tar"
        subprocess.run([sys.executable, "-m", "aufs", "--home", str(home), "diff", top, "-o", str(out)],
                       env=env, check=True, capture_output=True)
        data = out.read_bytes()
        members = read_names(data)
        pair = {members[b"latin1-\xe9"], members[b"hard-\xe7"]}
        assert pair in ({(tarfile.REGTYPE, b""), (tarfile.LNKTYPE, b"latin1-\xe9")},
                        {(tarfile.REGTYPE, b""), (tarfile.LNKTYPE, b"hard-\xe7")})
        assert members[b"link-\xe8"] == (tarfile.SYMTYPE, b"latin1-\xe9")
        assert members[b"dir-\xff"][0] == tarfile.DIRTYPE
        assert "utf8-é".encode() in members
        # a valid UTF-8 name is written as UTF-8 (no hdrcharset) in every locale
        assert re.search(rb"\d+ path=utf8-\xc3\xa9\n", data)
        # GNU tar reads the raw bytes back
        listing = subprocess.run(["tar", "--quoting-style=literal", "-tf", str(out)], check=True, capture_output=True).stdout
        assert b"latin1-\xe9\n" in listing and b"dir-\xff/\n" in listing
    finally:
        d.cleanup()


def read_names(data: bytes) -> dict[bytes, tuple[bytes, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tar:
        return {m.name.encode("utf-8", "surrogateescape").rstrip(b"/"):
                (m.type, m.linkname.encode("utf-8", "surrogateescape")) for m in tar}


@pytest.fixture
def driver(ramdir: pathlib.Path):
    d = aufs.Driver(ramdir / "store")
    d.create("base")
    try:
        yield d
    finally:
        d.cleanup()


def corpus(name: str) -> pathlib.Path:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"the Go corpus is not at {CORPUS}")
    return path


def gnu_tar_tree(archive: pathlib.Path, where: pathlib.Path) -> dict[str, tuple]:
    where.mkdir()
    subprocess.run(["tar", "-x", "-f", str(archive), "-C", str(where)], capture_output=True)
    return snapshot(str(where), times=False)


def test_go_pax_multi_hdrs_is_extracted_as_gnu_tar_does(driver: aufs.Driver, ramdir: pathlib.Path) -> None:
    archive = corpus("pax-multi-hdrs.tar")
    driver.create("l", parent="base")
    driver.apply_diff("l", archive)
    got = snapshot(str(driver.diff_dir("l")), times=False)
    assert got == gnu_tar_tree(archive, ramdir / "gnu")
    assert "bar" in got


def test_go_pax_nul_xattrs_loses_data_and_stays_refused(driver: aufs.Driver) -> None:
    archive = corpus("pax-nul-xattrs.tar")
    driver.create("l", parent="base")
    before = snapshot(str(driver.diff_dir("l")))
    with pytest.raises(ArchiveError, match="bad-null.txt.*Invalid pax extended attributes"):
        driver.apply_diff("l", archive)
    assert snapshot(str(driver.diff_dir("l"))) == before


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = key + b"=" + value + b"\n"
    n = len(body) + 2
    while len(str(n).encode()) + 1 + len(body) != n:
        n += 1
    return str(n).encode() + b" " + body


def _go_style_entry(raw: bytes, data: bytes = b"x") -> bytes:
    """A pax `path` record holding raw bytes, no hdrcharset: what Go's archive/tar writes."""
    def header(name: str, kind: bytes, size: int) -> bytes:
        ti = tarfile.TarInfo(name)
        ti.type, ti.size, ti.mode, ti.mtime = kind, size, 0o644, 0
        return ti.tobuf(tarfile.USTAR_FORMAT)

    records = _pax_record(b"path", raw)
    return (header("PaxHeaders/x", tarfile.XHDTYPE, len(records)) + records + bytes(-len(records) % 512)
            + header("placeholder", tarfile.REGTYPE, len(data)) + data + bytes(-len(data) % 512))


@pytest.mark.parametrize("raw", [b"cesu-\xed\xa0\x80", b"overlong-slash-\xc0\xaf", b"above-max-\xf4\x90\x80\x80",
                                 b"cut-\xe2\x82", b"mixed-\xc3\xa9\xe9", "valid-é".encode()])
def test_every_kind_of_invalid_utf8_stays_byte_exact(ramdir: pathlib.Path, raw: bytes) -> None:
    """Overlong, surrogate, out-of-range and cut sequences are bytes like any other: never
    decoded (an overlong `/` stays one name), never replaced."""
    from aufs.apply import apply_tar
    from aufs.whiteouts import WhiteoutFormat

    apply_tar(ramdir, _go_style_entry(raw) + bytes(1024), WhiteoutFormat.OVERLAY)
    assert os.listdir(os.fsencode(ramdir)) == [raw]
