"""Benchmark: containerd on the aufs proxy snapshotter against its built-in overlayfs snapshotter.

One containerd (private config, CRI off, everything on one tmpfs) with both snapshotters, one
image (tests/serve/images.py: static busybox in two layers), in the same run; the two
snapshotters' rounds are interleaved so noise from other processes hits them alike. Times:

* ``ctr images import --snapshotter S`` (ingest + unpack: Prepare, apply, Commit per layer);
  the image is removed with ``ctr images rm --sync`` (garbage collection) between rounds, so
  every round unpacks afresh;
* ``ctr run --rm --snapshotter S IMAGE NAME /bin/true`` (Prepare, Mounts, runc, Remove);
* per-RPC latency of Prepare, Mounts and Commit, from a Python gRPC client, three ways: through
  containerd's Snapshots service to overlayfs (the reference), through containerd to aufs, and
  straight to the aufs server's socket.

Each figure is the median of ``--repeat`` rounds. Prints a markdown table and the ratios
(goal: aufs within 1.1x of overlayfs for import and run). Root only; re-executes itself in a
private mount namespace; stops both daemons before it exits.

Usage: ``python3 bench/bench_containerd.py [--repeat 15] [--rpc-repeat 200]``
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_MARK = "AUFS_BENCH_CONTAINERD_PRIVATE_NS"
GOAL = 1.1


def _reexec_private() -> None:
    if os.environ.get(_MARK):
        return
    os.environ[_MARK] = "1"
    os.execvp("unshare", ["unshare", "-m", "--propagation", "private", sys.executable, *sys.argv])


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def rpc_latencies(socket: str, snapshotter: str, namespace: str | None, repeat: int) -> dict[str, float]:
    """Median milliseconds of Prepare, Mounts, Commit (each on a parent chain that grows)."""
    import grpc

    from aufs.serve._proto import snapshots_pb2 as pb
    from aufs.serve._proto import snapshots_pb2_grpc

    channel = grpc.insecure_channel("unix:" + socket)
    stub = snapshots_pb2_grpc.SnapshotsStub(channel)
    meta = (("containerd-namespace", namespace),) if namespace else ()
    times: dict[str, list[float]] = {"Prepare": [], "Mounts": [], "Commit": []}
    keep = {"containerd.io/gc.root": "bench"}  # else containerd's GC may collect them mid-run
    parent = ""
    names = []
    for i in range(repeat):
        key, name = f"bench-{i}-active", f"bench-{i}"
        prepare = pb.PrepareSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent, labels=keep)
        mounts = pb.MountsRequest(snapshotter=snapshotter, key=key)
        commit = pb.CommitSnapshotRequest(snapshotter=snapshotter, name=name, key=key, labels=keep)
        times["Prepare"].append(_timed(lambda: stub.Prepare(prepare, metadata=meta)))  # noqa: B023 - called at once
        times["Mounts"].append(_timed(lambda: stub.Mounts(mounts, metadata=meta)))  # noqa: B023
        times["Commit"].append(_timed(lambda: stub.Commit(commit, metadata=meta)))  # noqa: B023
        # a chain of 8 at most, then start again: the figures are per call, not per depth
        parent = name if i % 8 != 7 else ""
        names.append(name)
    for name in reversed(names):
        stub.Remove(pb.RemoveSnapshotRequest(snapshotter=snapshotter, key=name), metadata=meta)
    channel.close()
    return {k: _median_ms(v) for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--rpc-repeat", type=int, default=200)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_containerd: needs root (containerd, mounts)", file=sys.stderr)
        return 2
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            print(f"bench_containerd: {tool} is not installed", file=sys.stderr)
            return 2
    _reexec_private()

    from tests.serve import images
    from tests.serve.engines import PLUGIN, Containerd, SnapshotServer

    scratch = Path(tempfile.mkdtemp(prefix="aufs-bench-containerd-"))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(scratch)], check=True)
    (scratch / "containerd").mkdir()
    (scratch / "image").mkdir()
    server = SnapshotServer(scratch / "store", scratch / "aufs.sock", scratch / "aufs.log")
    containerd = Containerd(scratch / "containerd", scratch / "aufs.sock", namespace="bench")
    direct = SnapshotServer(scratch / "store-direct", scratch / "direct.sock", scratch / "direct.log")
    try:
        image = "docker.io/aufs/busybox:bench"
        archive = images.oci_archive(scratch / "image", image)
        server.start()
        containerd.start()
        results: dict[str, dict[str, list[float]]] = {s: {"import": [], "run": []} for s in ("overlayfs", PLUGIN)}
        for round_ in range(args.repeat + 1):  # round 0 warms caches up and is not counted
            for snap in ("overlayfs", PLUGIN) if round_ % 2 == 0 else (PLUGIN, "overlayfs"):
                import_argv = ("images", "import", "--snapshotter", snap, str(archive))
                run_argv = ("run", "--rm", "--snapshotter", snap, image, f"b{round_}", "/bin/true")
                took_import = _timed(lambda: containerd.ctr(*import_argv))  # noqa: B023 - called at once
                took_run = _timed(lambda: containerd.ctr(*run_argv))  # noqa: B023
                containerd.ctr("images", "rm", "--sync", image)
                if round_:
                    results[snap]["import"].append(took_import)
                    results[snap]["run"].append(took_run)
        rpc = {
            "containerd -> overlayfs": rpc_latencies(str(containerd.address), "overlayfs", "bench", args.rpc_repeat),
            "containerd -> aufs": rpc_latencies(str(containerd.address), PLUGIN, "bench", args.rpc_repeat),
        }
        # straight to a server of its own: containerd's GC removes what its metadata does not name
        direct.start()
        rpc["aufs socket, direct"] = rpc_latencies(str(direct.socket), "", None, args.rpc_repeat)
    finally:
        containerd.stop()
        server.stop()
        direct.stop()
        subprocess.run(["umount", "-l", str(scratch)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, kernel {platform.release()}, "
          f"Python {platform.python_version()}; {args.repeat} rounds, medians\n")
    print("| operation | overlayfs (built in) | aufs (proxy) | aufs / overlayfs |")
    print("|---|---:|---:|---:|")
    verdicts = []
    for op in ("import", "run"):
        ref = _median_ms(results["overlayfs"][op])
        ours = _median_ms(results[PLUGIN][op])
        ratio = ours / ref
        verdicts.append((op, ratio))
        label = "ctr images import" if op == "import" else "ctr run --rm IMAGE true"
        print(f"| `{label}` | {ref:.1f} ms | {ours:.1f} ms | {ratio:.2f}x |")
    print("\n| RPC (median, ms) | " + " | ".join(rpc) + " |")
    print("|---|" + "---:|" * len(rpc))
    for method in ("Prepare", "Mounts", "Commit"):
        print(f"| {method} | " + " | ".join(f"{rpc[w][method]:.2f}" for w in rpc) + " |")
    print()
    for op, ratio in verdicts:
        print(f"goal {op}: aufs within {GOAL}x of overlayfs: {'PASS' if ratio <= GOAL else 'FAIL'} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
