#!/usr/bin/env python3
"""Image export benchmark: what the image records and the ``created`` stamps cost.

``export_image`` stamps each new history entry with the layer's last change in the store,
found by an lstat walk of the layer's diff dir. This measures that walk against exports that
skip it (a fixed ``created=``), in one run, alternating, on tmpfs (``/dev/shm``), with a
two-layer image packed from this machine's ``/usr/lib/python3`` and ``/usr/lib/python3.11``
(GNU tar, uncompressed; a trimmed tree when they are missing) plus one small writable layer:

* reference: ``export_image(driver, "rw", dest, created=FIXED)``: no walk at all;
* imported image + new layer: the default, walks only the new layer;
* chain without an image record: the default, walks every layer of the chain.

It also times ``save_record`` (what an import adds: one small file, fsync'd and renamed).

Run as root in a private mount namespace::

    unshare -m --propagation private python3 bench/bench_export.py [--rounds 5]
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
from aufs.image import records
from aufs.image.exporter import write_oci_layout

FIXED = "2024-01-01T00:00:00Z"


def _timed(func: Callable[[Path], object], work: Path) -> float:
    dest = work / "export"
    start = time.perf_counter()
    func(dest)
    elapsed = time.perf_counter() - start
    shutil.rmtree(dest)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (inside `unshare -m --propagation private`)", file=sys.stderr)
        return 2
    trees = [t for t in ("usr/lib/python3", "usr/lib/python3.11", "usr/share/perl") if os.path.isdir("/" + t)]
    origin = ", ".join("/" + t for t in trees[:2])
    work = Path(tempfile.mkdtemp(prefix="aufs-bench-export-", dir="/dev/shm"))
    try:
        tars = [subprocess.run(["tar", "-C", "/", "-cf", "-", tree], check=True, capture_output=True).stdout
                for tree in trees[:2]]
        image_on_disk = work / "image"
        write_oci_layout(image_on_disk, tars, compression="none", ref="bench")
        del tars
        with_record = aufs.Driver(work / "with-record")
        ids = aufs.import_image(with_record, image_on_disk)
        without = aufs.Driver(work / "without-record")
        aufs.import_image(without, image_on_disk)
        aufs.remove_image(without, aufs.list_images(without)[0].id, keep_layers=True)
        for driver in (with_record, without):
            driver.create("rw", ids[-1])
            with driver.mount("rw") as root:
                for i in range(100):
                    Path(root, f"file-{i}").write_bytes(os.urandom(4096))
        entries = sum(len(files) + len(dirs) for layer_id in ids for _, dirs, files in os.walk(with_record.diff_dir(layer_id)))
        runs: dict[str, list[float]] = {"reference (created= fixed, no walk)": [],
                                        "imported image + new layer": [],
                                        "chain without an image record": []}
        timers: list[tuple[str, Callable[[], float]]] = [
            ("reference (created= fixed, no walk)",
             lambda: _timed(lambda d: aufs.export_image(with_record, "rw", d, created=FIXED), work)),
            ("imported image + new layer", lambda: _timed(lambda d: aufs.export_image(with_record, "rw", d), work)),
            ("chain without an image record", lambda: _timed(lambda d: aufs.export_image(without, "rw", d), work)),
        ]
        for _, timer in timers:
            timer()  # warm-up
        for round_no in range(args.rounds):
            for name, timer in (timers if round_no % 2 == 0 else list(reversed(timers))):
                runs[name].append(timer())
        med = {name: statistics.median(values) for name, values in runs.items()}
        record = aufs.list_images(with_record)[0]
        start = time.perf_counter()
        for _ in range(50):
            records.save_record(with_record, record)
        per_record = (time.perf_counter() - start) / 50
        print(f"image: {origin}; {len(ids)} layers, {entries} entries, plus a 100-file layer; tmpfs, uncompressed")
        print(f"{args.rounds} rounds, medians (all runs in seconds):")
        reference = med["reference (created= fixed, no walk)"]
        for name, values in runs.items():
            print(f"  {name:38} {med[name]:6.3f} s  {med[name] / reference:5.2f}x   "
                  f"{' '.join(f'{v:.3f}' for v in values)}")
        print(f"save_record (per import): {per_record * 1000:.2f} ms")
        with_record.cleanup()
        without.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
