"""Images made by umoci, skopeo and buildah, imported and exported by an ordinary user's
(rootless) store, of both kinds (owners recorded; owners real in a user namespace): the export equals a root store's export of the same image, digest for
digest (same chainIDs, owners, modes, device numbers, xattrs, content; issue 10)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import aufs

from ..rootless.conftest import user_dir, user_fuse, user_processes  # noqa: F401 (fixtures)
from ..rootless.test_userns_store import holders, no_holder_left  # noqa: F401 (fixture)
from ..users import User
from .conftest import _repack, _write
from .helpers import have, run

_AUFS = "import sys, aufs.cli; sys.exit(aufs.cli.main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def special_image(ram_root: Path) -> Path:
    """A one-layer umoci image with what a user cannot make: devices, a uid outside every
    subuid range (3000000), setuid/setgid files, a security.capability xattr, a fifo."""
    if not have("umoci"):
        pytest.skip("umoci is not installed (scripts/bootstrap installs it)")
    if os.geteuid() != 0:
        pytest.skip("building an image with devices and owners needs root")
    work = ram_root / "special-image"
    work.mkdir()
    layout, bundle = work / "oci", work / "bundle"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:t")
    run("umoci", "unpack", "--image", f"{layout}:t", str(bundle))
    root = bundle / "rootfs"
    _write(root / "etc" / "passwd", b"root:x:0:0::/root:/bin/sh\n")
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(root / "dev" / "sda", 0o660 | 0o060000, os.makedev(8, 0))
    os.chown(root / "dev" / "sda", 0, 6)
    os.mkfifo(root / "dev" / "initctl", 0o600)
    _write(root / "home" / "far" / "notes", b"far away", 0o600, (3000000, 3000000))
    os.chown(root / "home" / "far", 3000000, 3000000)
    _write(root / "usr" / "bin" / "su", b"su", 0o4755)
    _write(root / "usr" / "bin" / "wall", b"wall", 0o2755, (0, 5))
    _write(root / "usr" / "bin" / "ping", b"ping", 0o755)
    os.setxattr(root / "usr" / "bin" / "ping", "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    os.setxattr(root / "usr" / "bin" / "ping", "user.note", b"kept")
    _repack(layout, bundle)
    shutil.rmtree(bundle)
    return layout


def _give(src: Path, dest: Path, user: User) -> Path:
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True)
    else:
        shutil.copy(src, dest)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(dest)], check=True)
    return dest


def _export_as_root(ramdir: Path, image: Path, name: str) -> tuple[str, Path]:
    driver = aufs.Driver(ramdir / f"root-store-{name}")
    try:
        ids = aufs.import_image(driver, image)
        dest = ramdir / f"root-export-{name}"
        return aufs.export_image(driver, ids[-1], dest), dest
    finally:
        driver.cleanup()


def _config(layout: Path) -> dict:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    return {"manifest": manifest, "index": index,
            "config": json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())}


def _layers(layout: Path) -> list[list[tuple]]:
    import tarfile
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    out = []
    for layer in manifest["layers"]:
        with tarfile.open(layout / "blobs" / "sha256" / layer["digest"].split(":")[1]) as tar:
            out.append([(m.name, m.type, m.mode, m.uid, m.gid, m.size, m.mtime, m.linkname, m.devmajor, m.devminor,
                         tuple(sorted(m.pax_headers.items()))) for m in tar.getmembers()])
    return out


@pytest.mark.parametrize("kind", ["override_stat", "userns"])
@pytest.mark.parametrize("which", ["special", "umoci", "umoci-docker", "buildah"])
def test_rootless_import_export_equals_root(which: str, kind: str, request: pytest.FixtureRequest, test_user: User,
                                            user_fuse: None, user_dir: Path, ramdir: Path,  # noqa: F811
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # exports stamp new history entries with the time unless told which: the same for both
    epoch = {"SOURCE_DATE_EPOCH": "1600000000"}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch["SOURCE_DATE_EPOCH"])
    if which == "special":
        image = request.getfixturevalue("special_image")
    elif which == "buildah":
        image = request.getfixturevalue("buildah_image")["oci"]
    else:
        image = request.getfixturevalue("umoci_image")["docker" if which == "umoci-docker" else "oci"]
    mine = _give(image, user_dir / "image", test_user)
    home = str(user_dir / "store")
    proc = test_user.python(_AUFS, "--home", home, "--rootless", kind, "import", str(mine), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    top = proc.stdout.decode().split()[-1]
    proc = test_user.python(_AUFS, "--home", home, "export", top, str(user_dir / "export"), timeout=300,
                            env=epoch)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    got_digest = proc.stdout.decode().split()[-1]
    want_digest, want = _export_as_root(ramdir, image, which)
    got_layers, want_layers = _layers(user_dir / "export"), _layers(want)
    for i, (g, w) in enumerate(zip(got_layers, want_layers)):  # entry by entry, readable on failure
        assert g == w, (i, sorted(set(g) ^ set(w)), "got", [e for e in g if e not in w], "want", [e for e in w if e not in g])
    assert len(got_layers) == len(want_layers)
    assert _config(user_dir / "export") == _config(want)
    assert got_digest == want_digest
    # mount, write, changes, umount, rm: nothing left behind
    for argv in (["mount", top], ["changes", top], ["umount", top], ["rm", "--force", top]):
        proc = test_user.python(_AUFS, "--home", home, *argv)
        assert proc.returncode == 0, (argv, proc.stderr.decode()[-2000:])
    assert user_processes(test_user, "fuse-overlayfs") == []
    assert holders(test_user) == []
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if str(user_dir) in line]


def _tour(user: User, home: Path, umoci_image: dict[str, Path]) -> tuple[Path, Callable[..., str]]:
    """The image of the README's tours given to ``user``, and ``aufs ARGV`` as that user with
    ``home`` as HOME (the store in the default ~/.local/share/aufs): its output."""
    image = _give(umoci_image["docker"], home / "debian.tar", user)

    def aufs_(*argv: str) -> str:
        proc = user.python(_AUFS, *argv, env={"HOME": str(home)}, timeout=300)
        assert proc.returncode == 0, (argv, proc.stderr.decode()[-2000:])
        return proc.stdout.decode()
    return image, aufs_


def test_readme_tour_as_an_ordinary_user(test_user: User, user_fuse: None, user_dir: Path,  # noqa: F811
                                         umoci_image: dict[str, Path]) -> None:
    """The command-line tour of the README, as aufs-test, in the default home (~/.local/share/aufs)."""
    image, aufs_ = _tour(test_user, user_dir, umoci_image)
    top = aufs_("import", str(image)).split()[-1]
    assert top in aufs_("ls")
    assert (user_dir / ".local" / "share" / "aufs" / "aufs-store.json").exists()
    aufs_("create", "work", "--parent", top)
    path = aufs_("mount", "work").strip()
    proc = test_user.run(["sh", "-c", f'echo hi > "{path}/hello"'])
    assert proc.returncode == 0, proc.stderr.decode()
    aufs_("umount", "work")
    assert aufs_("changes", "work").split() == ["A", "/hello"]
    aufs_("diff", "work", "-o", str(user_dir / "work.tar"))
    aufs_("create", "other")
    aufs_("apply", "other", str(user_dir / "work.tar"))
    aufs_("export", "work", str(user_dir / "my-image"))
    run("skopeo", "inspect", f"oci:{user_dir / 'my-image'}:latest")
    assert "demo:1" in aufs_("images")
    aufs_("export", "demo:1", str(user_dir / "debian-again"))
    aufs_("rm", "work", "other")
    aufs_("rmi", "demo:1")
    status = aufs_("status")
    assert "fuse-overlayfs" in status and "rootless" in status
    aufs_("cleanup")
    aufs_("check", "--repair")
    assert user_processes(test_user, "fuse-overlayfs") == []
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if str(user_dir) in line]


def test_readme_userns_tour_as_an_ordinary_user(test_user: User, user_dir: Path,  # noqa: F811
                                                umoci_image: dict[str, Path]) -> None:
    """The README's userns block, as aufs-test, in the default home."""
    image, aufs_ = _tour(test_user, user_dir, umoci_image)
    top = aufs_("--rootless", "userns", "import", str(image)).split()[-1]
    path = aufs_("mount", top).strip()
    assert path == f"{user_dir}/.local/share/aufs/mnt/{top}"
    listing = aufs_("unshare", "--", "ls", "-ln", path)
    owners = {line.split()[-1]: tuple(line.split()[2:4]) for line in listing.splitlines()[1:]}
    assert owners["etc"] == ("0", "0") and owners["usr"] == ("0", "0"), listing  # as in the image
    assert not os.listdir(path)  # outside the namespace the mountpoint is an empty directory
    assert holders(test_user) != []
    aufs_("umount", top)
    aufs_("rm", top)
    assert holders(test_user) == []
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if str(user_dir) in line]
