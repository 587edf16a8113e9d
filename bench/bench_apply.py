#!/usr/bin/env python3
"""Benchmark aufs.apply.apply_tar against GNU tar, bsdtar, Python's tarfile and cp -a.

One realistic layer is tarred once (default: /usr/share, tens of thousands of real files) and
extracted again and again onto a tmpfs, each tool into a fresh directory, interleaved, best of
``--repeat``. Everything is reported as a ratio against GNU ``tar -x`` measured in the same run
(timings on a shared machine drift; ratios within one run do not). Wall time and CPU time
(user+sys, of this process or of the child) are both shown; CPU time is the steadier one when
other work shares the cores.

    python3 bench/bench_apply.py [--tree /usr/share] [--work /dev/shm/aufs-bench] [--repeat 3]

Needs root (owners are restored), GNU tar, bsdtar, and a tmpfs for --work (/dev/shm is one).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aufs.apply import apply_tar
from aufs.whiteouts import WhiteoutFormat


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(func: Callable[[str], None], out: str) -> tuple[float, float]:
    if os.path.exists(out):
        shutil.rmtree(out)
    os.mkdir(out)
    c0, t0 = _cpu(), time.perf_counter()
    func(out)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    shutil.rmtree(out)
    return wall, cpu


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default="/usr/share")
    parser.add_argument("--work", default="/dev/shm/aufs-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-slow", action="store_true", help="leave out tarfile")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse layer.tar and layer.tar.gz already in --work (made from --tree)")
    args = parser.parse_args()

    work = args.work
    os.makedirs(work, exist_ok=True)
    tar_path = os.path.join(work, "layer.tar")
    gz_path = os.path.join(work, "layer.tar.gz")
    parent, base = os.path.split(os.path.abspath(args.tree))
    if not (args.reuse and os.path.exists(tar_path) and os.path.exists(gz_path)):
        _run("tar", "--xattrs", "--xattrs-include=*", "-cf", tar_path, "-C", parent, base)
        # gzip -6: the default of gzip and of Go's compress/gzip, which wrote most layers
        _run("sh", "-c", f"gzip -6 -c {tar_path} > {gz_path}")
    with tarfile.open(tar_path) as tf:
        entries = sum(1 for _ in tf)
    size = os.path.getsize(tar_path)
    ref_tree = os.path.join(work, "ref")
    if os.path.exists(ref_tree):
        shutil.rmtree(ref_tree)
    os.mkdir(ref_tree)
    _run("tar", "-xf", tar_path, "-C", ref_tree)

    aufs_fmt = WhiteoutFormat.AUFS
    # load libarchive once outside the timings (its import runs ldconfig to find the library)
    _timed(lambda out: apply_tar(out, b"", aufs_fmt), os.path.join(work, "warmup"))
    cases: dict[str, Callable[[str], None]] = {
        "GNU tar -x": lambda out: _run("tar", "-xf", tar_path, "-C", out),
        "apply_tar (plain)": lambda out: apply_tar(out, tar_path, aufs_fmt),
        "bsdtar -x": lambda out: _run("bsdtar", "-xpf", tar_path, "-C", out),
        "cp -a of the tree": lambda out: _run("cp", "-a", os.path.join(ref_tree, base), out),
        "GNU tar -xzf": lambda out: _run("tar", "-xzf", gz_path, "-C", out),
        "apply_tar (gzip)": lambda out: apply_tar(out, gz_path, aufs_fmt),
    }
    if not args.skip_slow:
        def tarfile_extract(out: str, flt: str) -> None:
            with tarfile.open(tar_path) as tf:
                tf.extractall(out, filter=flt)  # type: ignore[call-arg]

        cases["tarfile (fully_trusted)"] = lambda out: tarfile_extract(out, "fully_trusted")
        cases["tarfile (filter='tar')"] = lambda out: tarfile_extract(out, "tar")

    best: dict[str, tuple[float, float]] = {}
    out = os.path.join(work, "out")
    for _ in range(args.repeat):
        for name, func in cases.items():
            wall, cpu = _timed(func, out)
            prev = best.get(name)
            best[name] = (min(wall, prev[0]), min(cpu, prev[1])) if prev else (wall, cpu)

    ref_wall, ref_cpu = best["GNU tar -x"]
    gz_wall, _gz_cpu = best["GNU tar -xzf"]
    lines: list[str] = [
        (f"tree: {args.tree} ({entries} entries, {size / 1e6:.0f} MB tar, gzip -6 {os.path.getsize(gz_path) / 1e6:.0f} MB),"
        f" extracted onto tmpfs ({work}), best of {args.repeat}, Python {sys.version.split()[0]}"),
        "",
        "| tool | wall s | cpu s | wall / GNU tar -x | cpu / GNU tar -x |",
        "|---|---|---|---|---|",
    ]
    for name, (wall, cpu) in best.items():
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall / ref_wall:.2f} | {cpu / ref_cpu:.2f} |")
    pw, pc = best["apply_tar (plain)"]
    zw, _zc = best["apply_tar (gzip)"]
    lines += [
        "",
        f"apply_tar plain vs GNU tar -x: {pw / ref_wall:.2f}x wall, {pc / ref_cpu:.2f}x cpu (goal <= 1.2)",
        f"GNU tar -xzf vs apply_tar gzip: {gz_wall / zw:.2f}x wall (goal >= 2)",
    ]
    if "tarfile (fully_trusted)" in best:
        tw = best["tarfile (fully_trusted)"][0]
        lines.append(f"tarfile (fully_trusted) vs apply_tar plain: {tw / pw:.2f}x wall (goal >= 3)")
    print("\n".join(lines))
    shutil.rmtree(ref_tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
