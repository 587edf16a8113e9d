#!/usr/bin/env python3
"""dockerd on ``aufs serve docker`` vs dockerd's built-in overlay2: ``docker load`` and ``docker run``.

One run, the dockerds side by side (rounds interleaved in rotating order), the same dockerd binary (Debian's docker.io 20.10) and the same image for both, data
on tmpfs (``/dev/shm``). The image is the tree of ``bench_import.py`` (a Debian minbase, or the
fallback tree from this machine's /usr; its three umoci layers, cached under
``/var/tmp/aufs-bench``) plus a fourth layer holding a static busybox as ``/bin/true``, copied
by skopeo into a docker-archive. Run as root in a private mount namespace::

    unshare -m --propagation private python3 bench/bench_docker.py [--loads 3] [--runs 10]

What is timed (wall clock of the docker client), per storage driver, with one dockerd each:

* ``docker load -i IMAGE.tar`` into an empty daemon, ``--loads`` times (``docker rmi`` and
  ``docker builder prune`` after each, untimed): the median;
* ``docker run --rm --network none IMAGE true``, ``--runs`` times after one untimed warm-up:
  the median (create the container's layers, mount, start, stop, unmount, remove).

A third dockerd measures the floor of the protocol: its plugin (a ``DockerPluginServer`` in
this process) answers ``ApplyDiff`` by reading the layer stream and throwing it away, so its
``docker load`` is what dockerd's side of the pipeline (unpacking the archive, hashing, tar-split,
the HTTP stream) costs with no extraction at all.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_import import CACHE, build_image, debian_rootfs

import aufs
from aufs.serve.docker import DockerPluginServer, GraphDriverPlugin
from tests.serve.docker_engine import DOCKERD, PLUGIN_NAME, Engine, private_run_dirs

FLOOR = "aufs-floor"


class _DiscardingPlugin(GraphDriverPlugin):
    """Reads each layer stream to its end and keeps nothing: the protocol's floor."""

    def apply_diff(self, layer_id: str, body: Any) -> dict[str, Any]:
        size = 0
        while True:
            chunk = body.read(1 << 20)
            if not chunk:
                return {"Size": size}
            size += len(chunk)

TAG = "aufs-bench/debian:1"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = _sha(data)
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest, len(data)


def docker_archive() -> tuple[Path, str]:
    """The benchmark image as a docker-archive (cached), and what its tree is."""
    rootfs, what = debian_rootfs()
    archive = CACHE / "docker-bench.tar"
    if archive.exists():
        return archive, what
    image = build_image(rootfs)
    layout = CACHE / "docker-bench-oci"
    shutil.rmtree(layout, ignore_errors=True)
    subprocess.run(["cp", "-al", str(image), str(layout)], check=True)
    # a fourth layer: static busybox as /bin/true, so `docker run IMAGE true` has a program
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("bin")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        with open("/bin/busybox", "rb") as f:
            data = f.read()
        info = tarfile.TarInfo("bin/true")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    layer = buf.getvalue()
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    digest, size = _blob(layout, layer)
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size})
    config["rootfs"]["diff_ids"].append(digest)
    config.setdefault("config", {})["Cmd"] = ["/bin/true"]
    config["config"]["Env"] = ["PATH=/usr/bin:/bin"]
    digest, size = _blob(layout, json.dumps(config).encode())
    manifest["config"].update(digest=digest, size=size)
    digest, size = _blob(layout, json.dumps(manifest).encode())
    index["manifests"][0].update(digest=digest, size=size)
    (layout / "index.json").write_text(json.dumps(index))
    tmp = archive.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:bench", f"docker-archive:{tmp}:{TAG}"], check=True)
    tmp.rename(archive)
    shutil.rmtree(layout)
    return archive, what


def _load(engine: Engine, archive: Path) -> float:
    start = time.perf_counter()
    engine.docker("load", "-q", "-i", str(archive))
    elapsed = time.perf_counter() - start
    engine.docker("rmi", "-f", TAG)
    engine.docker("builder", "prune", "-f", check=False)
    return elapsed


def _run(engine: Engine) -> float:
    start = time.perf_counter()
    engine.docker("run", "--rm", "--network", "none", TAG, "true")
    return time.perf_counter() - start


def measure(engines: dict[str, Engine], archive: Path, loads: int, runs: int) -> dict[str, dict[str, list[float]]]:
    """Interleaved rounds in rotating order, so that load from other processes hits all alike."""
    times: dict[str, dict[str, list[float]]] = {name: {"load": [], "run": []} for name in engines}
    names = list(engines)
    for i in range(loads):
        for name in names[i % len(names):] + names[: i % len(names)]:
            times[name]["load"].append(_load(engines[name], archive))
    runners = [n for n in names if n != FLOOR]
    for name in runners:
        engines[name].docker("load", "-q", "-i", str(archive))
        _run(engines[name])  # warm-up
    for i in range(runs):
        for name in runners[i % len(runners):] + runners[: i % len(runners)]:
            times[name]["run"].append(_run(engines[name]))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    archive, what = docker_archive()
    version = subprocess.run([DOCKERD, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="aufs-bench-docker-") as tmp, \
            private_run_dirs(), contextlib.ExitStack() as stack:
        engines: dict[str, Engine] = {}
        for driver in (PLUGIN_NAME, "overlay2", FLOOR):
            engine = Engine(Path(tmp) / driver, storage_driver=driver, plugin=driver == PLUGIN_NAME)
            stack.callback(engine.close)
            if driver == FLOOR:
                floor = DockerPluginServer(aufs.Driver(engine.store_home), engine.plugin_socket, name=FLOOR)
                floor.plugin = _DiscardingPlugin(floor.plugin.driver, name=FLOOR)
                threading.Thread(target=floor.serve_forever, daemon=True).start()
                stack.callback(floor.close)
                stack.callback(floor.shutdown)
            engine.start()
            engines[driver] = engine
        results = measure(engines, archive, args.loads, args.runs)
    ours, ref = results[PLUGIN_NAME], results["overlay2"]
    print(f"image: {archive} ({archive.stat().st_size / 2**20:.0f} MiB, 4 layers; tree: {what})")
    print(f"dockerd: {version}; data on /dev/shm; medians of {args.loads} loads, {args.runs} runs, interleaved")
    print("| operation | aufs serve docker (s) | overlay2 (s) | overlay2 / aufs |")
    print("|---|---:|---:|---:|")
    for op in ("load", "run"):
        a, b = statistics.median(ours[op]), statistics.median(ref[op])
        print(f"| `docker {op}` | {a:.3f} | {b:.3f} | {b / a:.2f}× |")
    floor = statistics.median(results[FLOOR]["load"])
    print(f"floor: `docker load` through a plugin that discards every layer: {floor:.3f} s "
          f"(overlay2 / floor = {statistics.median(ref['load']) / floor:.2f}×)")
    for op in ("load", "run"):
        print(f"all {op} times (s): aufs " + " ".join(f"{t:.3f}" for t in ours[op])
              + " | overlay2 " + " ".join(f"{t:.3f}" for t in ref[op]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
