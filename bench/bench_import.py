#!/usr/bin/env python3
"""Image import benchmark: ``aufs`` import + mount vs ``umoci unpack`` of the same image.

Both run in the same process run, on tmpfs (``/dev/shm``), alternating, several rounds; the
result is the ratio of medians. The image is a Debian root filesystem (``debootstrap
--variant=minbase bookworm``, cached under ``/var/tmp/aufs-bench``) packed by umoci as three
gzip layers: the system without /usr/share and /var, then /usr/share, then /var plus some
deletions (whiteouts). If debootstrap cannot run (no mirror), ``--rootfs`` or the fallback
builds the tree from /usr/lib and /usr/share of this machine instead, and says so.

Run as root in a private mount namespace (aufs mounts overlayfs)::

    unshare -m --propagation private python3 bench/bench_import.py [--rounds 5]

What is timed, per round:

* umoci: ``umoci unpack --image IMG:bench DEST`` (extracts the three layers in order into one
  tree, as every unpacker that builds one rootfs must);
* aufs: open a fresh store, ``aufs.import_image`` (verify, decompress, hash and apply the
  layers in parallel), then ``driver.get(top)`` (mount); the store is removed untimed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aufs

CACHE = Path("/var/tmp/aufs-bench")
MIRROR = "http://deb.debian.org/debian"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def debian_rootfs() -> tuple[Path, str]:
    """A minbase Debian tree (cached), or a tree from this machine's /usr when that fails."""
    rootfs = CACHE / "rootfs"
    if (rootfs / "usr" / "bin").is_dir() and (CACHE / "rootfs.done").exists():
        return rootfs, "Debian 12 `debootstrap --variant=minbase`"
    CACHE.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        _run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR)
        (CACHE / "rootfs.done").write_text("ok\n")
        return rootfs, "Debian 12 `debootstrap --variant=minbase`"
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"debootstrap failed ({exc}); building the tree from this machine's /usr instead", file=sys.stderr)
    shutil.rmtree(rootfs, ignore_errors=True)
    for part in ("usr/bin", "usr/lib/python3", "usr/share/doc", "usr/share/locale", "usr/share/perl", "var/lib/dpkg", "etc"):
        src = Path("/") / part
        if src.exists():
            (rootfs / part).parent.mkdir(parents=True, exist_ok=True)
            _run("cp", "-a", str(src), str(rootfs / part))
    return rootfs, "trees copied from this machine (/usr/bin, /usr/lib/python3, parts of /usr/share, /var/lib/dpkg, /etc)"


def build_image(rootfs: Path) -> Path:
    """Pack the tree with umoci as three gzip layers (cached)."""
    image = CACHE / "image"
    if (CACHE / "image.done").exists():
        return image
    shutil.rmtree(image, ignore_errors=True)
    bundle = CACHE / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    _run("umoci", "init", "--layout", str(image))
    _run("umoci", "new", "--image", f"{image}:bench")
    _run("umoci", "unpack", "--image", f"{image}:bench", str(bundle))
    root = bundle / "rootfs"
    later = {"usr/share", "var"}
    for entry in sorted(os.listdir(rootfs)):
        if entry in ("usr", "var"):
            continue
        _run("cp", "-a", str(rootfs / entry), str(root / entry))
    (root / "usr").mkdir(exist_ok=True)
    for entry in sorted(os.listdir(rootfs / "usr")):
        if f"usr/{entry}" not in later:
            _run("cp", "-a", str(rootfs / "usr" / entry), str(root / "usr" / entry))
    _run("umoci", "repack", "--refresh-bundle", "--image", f"{image}:bench", str(bundle))
    _run("cp", "-a", str(rootfs / "usr" / "share"), str(root / "usr" / "share"))
    _run("umoci", "repack", "--refresh-bundle", "--image", f"{image}:bench", str(bundle))
    _run("cp", "-a", str(rootfs / "var"), str(root / "var"))
    # some deletions, so the top layer carries whiteouts like real ones do
    for victim in ("usr/share/doc", "usr/share/locale", "usr/share/man"):
        shutil.rmtree(root / victim, ignore_errors=True)
    _run("umoci", "repack", "--refresh-bundle", "--image", f"{image}:bench", str(bundle))
    shutil.rmtree(bundle)
    (CACHE / "image.done").write_text("ok\n")
    return image


def image_facts(image: Path) -> tuple[int, int, int]:
    """(layers, compressed bytes, tar entries) of the image."""
    import json
    import tarfile

    index = json.loads((image / "index.json").read_text())
    blobs = image / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    size = sum(layer["size"] for layer in manifest["layers"])
    entries = 0
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"][7:], "r|gz") as tar:
            entries += sum(1 for _ in tar)
    return len(manifest["layers"]), size, entries


def time_umoci(image: Path, work: Path) -> float:
    dest = work / "umoci-bundle"
    start = time.perf_counter()
    _run("umoci", "unpack", "--image", f"{image}:bench", str(dest))
    elapsed = time.perf_counter() - start
    shutil.rmtree(dest)
    return elapsed


def time_aufs(image: Path, work: Path, workers: int = 0) -> float:
    home = work / "store"
    start = time.perf_counter()
    driver = aufs.Driver(home)
    ids = aufs.import_image(driver, image, workers=workers or None)
    root = driver.get(ids[-1])
    elapsed = time.perf_counter() - start
    assert os.path.isdir(os.path.join(root, "usr", "bin"))
    driver.put(ids[-1])
    driver.cleanup()
    shutil.rmtree(home)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rootfs", type=Path, help="use this tree instead of debootstrap")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (inside `unshare -m --propagation private`)", file=sys.stderr)
        return 2
    if args.rootfs:
        rootfs, origin = args.rootfs, f"the tree {args.rootfs}"
    else:
        rootfs, origin = debian_rootfs()
    image_on_disk = build_image(rootfs)
    work = Path(tempfile.mkdtemp(prefix="aufs-bench-", dir="/dev/shm"))
    try:
        image = work / "image"
        shutil.copytree(image_on_disk, image)  # read the image from tmpfs too
        layers, size, entries = image_facts(image)
        runs: dict = {"umoci unpack": [], "aufs import+mount": [], "aufs import+mount, 1 worker": []}
        timers: list[tuple[str, Callable[[], float]]] = [
            ("umoci unpack", lambda: time_umoci(image, work)),
            ("aufs import+mount", lambda: time_aufs(image, work)),
            ("aufs import+mount, 1 worker", lambda: time_aufs(image, work, workers=1)),
        ]
        time_aufs(image, work)  # warm-up: imports, page cache of the image
        for round_no in range(args.rounds):
            order = timers if round_no % 2 == 0 else list(reversed(timers))
            for name, timer in order:
                runs[name].append(timer())
        med = {name: statistics.median(values) for name, values in runs.items()}
        print(f"image: {origin}; {layers} gzip layers, {size / 1e6:.1f} MB compressed, {entries} tar entries")
        print(f"tmpfs, {args.rounds} rounds, medians (all runs in seconds):")
        for name, values in runs.items():
            print(f"  {name:30} {med[name]:6.2f} s   {' '.join(f'{v:.2f}' for v in values)}")
        print(f"ratio umoci unpack / aufs import+mount: {med['umoci unpack'] / med['aufs import+mount']:.2f}x")
        print(f"parallel speed-up (1 worker / default): {med['aufs import+mount, 1 worker'] / med['aufs import+mount']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
