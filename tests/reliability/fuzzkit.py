"""Fuzzing of ``apply_diff`` with mutated layer tars: seeds, mutators, and a sandboxed runner.

Seeds are the Go ``archive/tar`` test corpus (../shared/corpus/go-archive-tar, when present) and
archives built here, hostile ones included. A mutation is a list of operations, each a tuple of
small integers, so hypothesis can generate and shrink them and a seeded random generator can
produce them in bulk for the long runs: byte flips, truncations, block deletions and
duplications, and structure-aware edits of tar header fields (size, type, name, linkname,
mode, ids, device numbers, prefix) with or without a valid checksum, inserted pax records
(path, linkpath, size, sparse maps, xattrs, malformed lengths), duplicated entries, gzip.

Each case is extracted in a forked child (a crash there cannot take the runner down; a hang is
killed after a timeout) into ``layer/`` of a sandbox that also holds a sentinel tree beside it
and the child's working directory. A case passes when the child exits normally with success,
ArchiveError, UnsafeArchive or NoSpace, and nothing outside ``layer/`` changed.
"""
from __future__ import annotations

import bz2
import gzip
import io
import os
import pathlib
import random
import shutil
import tarfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .trees import (
    Tree,
    build_tar,
    first_diff,
    fork_with_pipe,
    read_to_end,
    sample_layers,
    snapshot,
    wait_or_kill,
)

# beside the project (../shared/corpus), or where AUFS_GO_TAR_CORPUS says (as tests/archive)
CORPUS = pathlib.Path(os.environ.get(
    "AUFS_GO_TAR_CORPUS", pathlib.Path(__file__).resolve().parents[3] / "shared" / "corpus" / "go-archive-tar"))

Op = tuple[int, int, int]  # (operation, position, value): all interpreted modulo what they index

HOSTILE_NAMES = [
    b"../escape", b"../../../../../../tmp/escape", b"/abs/file", b"/", b"a/../../b", b"./", b"", b".",
    b"..", b"sentinel-link/inside", b"evil/x", b"evil/../../x", b".wh..wh..opq", b".wh.etc", b".wh...",
    b".wh..wh.plnk/x", b".wh..wh.plnk/../../x", b"dir/.wh..wh..opq", b"d\x00hidden", b"x" * 100,
    b"a/" * 49 + b"b", b"etc/passwd", b"app/main.py", b"big", b"dir/", b"\xff\xfe", b"./././../x",
]
HOSTILE_LINKS = [
    b"../../../x", b"/etc/passwd", b"../sentinel/file", b"../../sentinel/file", b"", b"/", b".", b"..",
    b"evil", b"app/main.py", b"etc", b".wh..wh.plnk/1", b"x" * 100, b"loop", b"big", b"sentinel-link",
]
TYPES = b"0123456789gxKLSDVAMN\x00 Z"
SIZES = [b"0", b"1", b"777", b"7777777", b"77777777777", b"100000000000", b"-1", b"9", b" ", b"\x80" + b"\x00" * 10 + b"\x10",
         b"\xff" * 11, b"00000001000", b"00000001001"]
PAX_RECORDS = [
    b"path=../../escape", b"path=/abs", b"path=evil/x", b"linkpath=../../sentinel/file", b"linkpath=/etc/passwd",
    b"size=99999999999999", b"size=-5", b"size=abc", b"size=0", b"uid=99999999999999999999", b"mtime=1e400",
    b"mtime=-99999999999.5", b"GNU.sparse.map=0,10,99999999999,5", b"GNU.sparse.size=1099511627776",
    b"GNU.sparse.major=1", b"GNU.sparse.minor=0", b"GNU.sparse.realsize=1099511627776",
    b"GNU.sparse.numblocks=999999", b"SCHILY.xattr.trusted.overlay.opaque=y",
    b"SCHILY.xattr.security.capability=\x01\x02", b"SCHILY.xattr.user.x=" + b"v" * 3000,
    b"LIBARCHIVE.xattr.trusted.overlay.redirect=../../x", b"hdrcharset=BINARY", b"path=\xff\xfe",
]

N_OPS = 12


def corpus_seeds() -> list[bytes]:
    """The Go archive/tar corpus (empty if the corpus is not checked out beside the project)."""
    seeds = []
    if CORPUS.is_dir():
        for path in sorted(CORPUS.iterdir()):
            if path.name.endswith(".tar"):
                seeds.append(path.read_bytes())
            elif path.name.endswith(".tar.bz2"):
                seeds.append(bz2.decompress(path.read_bytes()))
    return seeds


def generated_seeds() -> list[bytes]:
    """Archives built here: ordinary layers, and hostile ones that exercise every defence."""
    seeds = sample_layers()
    seeds.append(build_tar([("symlink", "evil", "../sentinel"), ("file", "evil/x", b"owned")]))
    seeds.append(build_tar([("symlink", "evil", "/"), ("file", "evil/tmp/owned", b"owned")]))
    seeds.append(build_tar([("hardlink", "h", "../sentinel/file"), ("file", "h", b"overwrite")]))
    seeds.append(build_tar([("file", "a", b"1"), ("dir", "a"), ("file", "a/b", b"2"), ("file", "a", b"3")]))
    seeds.append(build_tar([("dir", "d"), ("symlink", "d/l", ".."), ("file", "d/l/x", b"y")]))
    seeds.append(build_tar([("file", ".wh..wh..opq", b""), ("file", ".wh.sentinel", b""), ("file", ".wh...", b"")]))
    seeds.append(build_tar([("file", ".wh..wh.plnk/7.7", b"real"), ("hardlink", "name", ".wh..wh.plnk/7.7")]))
    seeds.append(build_tar([("fifo", "f"), ("chardev", "c", 0, 0), ("chardev", "null", 1, 3), ("symlink", "loop", "loop")]))
    seeds.append(build_tar([("dir", "x" * 99), ("file", "x" * 99 + "/" + "y" * 150, b"long")], fmt=tarfile.GNU_FORMAT))
    seeds.append(build_tar([("file", "u", b"ustar")], fmt=tarfile.USTAR_FORMAT))
    seeds.append(gzip.compress(sample_layers()[1], mtime=0))
    seeds.append(_owners_seed())
    return seeds


def _owners_seed() -> bytes:
    """Owners a user namespace maps and does not, devices, fifos, links of others, xattrs:
    the cases a userns store's extraction sets or records."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, uid, extra in (("d", tarfile.DIRTYPE, 70000, {}), ("d/f", tarfile.REGTYPE, 1000, {}),
                                       ("d/far", tarfile.REGTYPE, 3000000, {}),
                                       ("d/l", tarfile.SYMTYPE, 3000001, {"linkname": "f"}),
                                       ("d/m", tarfile.SYMTYPE, 7, {"linkname": "far"}),
                                       ("p", tarfile.FIFOTYPE, 3000000, {}), ("q", tarfile.FIFOTYPE, 5, {}),
                                       ("c", tarfile.CHRTYPE, 0, {"devmajor": 1, "devminor": 3}),
                                       ("b", tarfile.BLKTYPE, 6, {"devmajor": 8, "devminor": 1}),
                                       ("w", tarfile.CHRTYPE, 0, {}),
                                       ("x", tarfile.REGTYPE, 0, {"pax_headers": {
                                           "SCHILY.xattr.trusted.t": "1", "SCHILY.xattr.user.u": "2",
                                           "SCHILY.xattr.security.capability": "\x01\x00\x00\x02" + "\x00" * 16}})):
            info = tarfile.TarInfo(name)
            info.type, info.uid, info.gid, info.mode = kind, uid, uid, 0o4755 if kind == tarfile.REGTYPE else 0o755
            for key, value in extra.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


# ----------------------------------------------------------------------------- mutation


def _checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % (sum(block) & 0o777777)


def _is_header(block: bytes) -> bool:
    if len(block) < 512 or block == bytes(512):
        return False
    try:
        stored = int(block[148:156].split(b"\x00")[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 256 + sum(block[156:512])


def _headers(data: bytes) -> list[int]:
    return [off for off in range(0, len(data) - 511, 512) if _is_header(data[off:off + 512])]


def _field(block: bytearray, start: int, length: int, value: bytes) -> None:
    block[start:start + length] = value[:length].ljust(length, b"\x00")


def _pax_entry(records: Sequence[bytes], broken: int) -> bytes:
    body = b""
    for rec in records:
        line = b" " + rec + b"\n"
        n = len(line)
        n += len(str(n + len(str(n))))
        if broken == 1:
            n += 7  # a length that lies
        body += str(n).encode() + line
    if broken == 2:
        body += b"99999 path=x"  # no newline, length far past the end
    header = bytearray(512)
    _field(header, 0, 100, b"PaxHeaders/x")
    _field(header, 100, 8, b"0000644")
    _field(header, 124, 12, b"%011o" % len(body))
    header[156:157] = b"x"
    _field(header, 257, 8, b"ustar\x0000")
    _checksum(header)
    return bytes(header) + body + bytes(-len(body) % 512)


def mutate(data: bytes, ops: Sequence[Op]) -> bytes:
    """Apply the operations in order (each reinterprets its integers against the current data)."""
    out = bytearray(data)
    for kind, pos, value in ops:
        kind %= N_OPS
        headers = _headers(bytes(out))
        if kind == 0:  # flip bits of one byte
            if out:
                out[pos % len(out)] ^= (value % 255) + 1
        elif kind == 1:  # truncate
            out = out[: pos % (len(out) + 1)]
        elif kind == 2:  # truncate at a block boundary, plus or minus a little
            if out:
                cut = (pos % (len(out) // 512 + 1)) * 512 + (value % 9) - 4
                out = out[: max(0, min(len(out), cut))]
        elif kind in (3, 4, 5, 6) and headers:
            off = headers[pos % len(headers)]
            block = out[off:off + 512]
            if kind == 3:
                _field(block, 124, 12, SIZES[value % len(SIZES)])
            elif kind == 4:
                block[156] = TYPES[value % len(TYPES)]
            elif kind == 5:
                _field(block, 0, 100, HOSTILE_NAMES[value % len(HOSTILE_NAMES)])
            else:
                choice = value % 6
                if choice == 0:
                    _field(block, 157, 100, HOSTILE_LINKS[(value // 6) % len(HOSTILE_LINKS)])
                elif choice == 1:
                    _field(block, 100, 8, b"%07o" % ((value * 2654435761) % 0o10000000))
                elif choice == 2:
                    _field(block, 108, 8, b"%07o" % (value % 0o10000000))
                elif choice == 3:
                    _field(block, 329, 16, b"%07o\x00%07o" % (value % 4096, (value // 7) % 4096))
                elif choice == 4:
                    _field(block, 345, 155, HOSTILE_NAMES[(value // 6) % len(HOSTILE_NAMES)])
                else:
                    _field(block, 257, 8, b"ustar  \x00" if value % 2 else b"garbage!")
            if value % 10:  # mostly keep the checksum valid, so the mutation reaches the writer
                _checksum(block)
            out[off:off + 512] = block
        elif kind == 7 and headers:  # insert a pax header before an entry
            off = headers[pos % len(headers)]
            count = 1 + value % 3
            records = [PAX_RECORDS[(value // (i + 1) + i * 7) % len(PAX_RECORDS)] for i in range(count)]
            out[off:off] = _pax_entry(records, (value // 97) % 3)
        elif kind == 8 and headers:  # duplicate an entry (header and data) elsewhere
            start = headers[pos % len(headers)]
            later = [h for h in headers if h > start] + [len(out)]
            chunk = out[start:later[0]]
            dest = headers[value % len(headers)]
            out[dest:dest] = chunk
        elif kind == 9 and len(out) >= 512:  # delete or duplicate a block
            block_at = (pos % (len(out) // 512)) * 512
            if value % 2:
                del out[block_at:block_at + 512]
            else:
                out[block_at:block_at] = out[block_at:block_at + 512]
        elif kind == 10:  # zero blocks (an early end) or garbage after the end
            if value % 2 and out:
                at = (pos % (len(out) // 512 + 1)) * 512
                out[at:at] = bytes(1024)
            else:
                out += bytes((value * i) % 256 for i in range(value % 2000))
        elif kind == 11:  # gzip the archive so far (and maybe corrupt the stream)
            packed = bytearray(gzip.compress(bytes(out), compresslevel=1, mtime=0))
            if value % 3 == 0 and len(packed) > 20:
                packed[10 + pos % (len(packed) - 10)] ^= 0x5A
            out = packed
    return bytes(out)


def random_ops(rng: random.Random) -> list[Op]:
    return [(rng.randrange(N_OPS), rng.randrange(1 << 20), rng.randrange(1 << 20))
            for _ in range(rng.choice((1, 1, 2, 3, 5)))]


# ----------------------------------------------------------------------------- the sandbox

ALLOWED = ("ok", "ArchiveError", "UnsafeArchive", "NoSpace")


@dataclass
class Sandbox:
    """``root/`` with ``sentinel/`` (what must never change), ``cwd/``, ``layer/`` (the target)."""

    root: pathlib.Path
    outside: Tree

    @property
    def layer(self) -> pathlib.Path:
        return self.root / "layer"


def make_sandbox(root: pathlib.Path) -> Sandbox:
    root.mkdir(parents=True, exist_ok=True)
    sentinel = root / "sentinel"
    sentinel.mkdir()
    (sentinel / "file").write_bytes(b"sentinel")
    (sentinel / "dir").mkdir()
    (sentinel / "dir" / "deep").write_bytes(b"deep")
    os.symlink("../layer", sentinel / "into-layer")
    (root / "cwd").mkdir()
    os.symlink("sentinel", root / "sentinel-link")
    (root / "layer").mkdir()
    # loaded once here, so each forked child starts extracting at once
    from aufs import _libarchive

    _libarchive.load()
    return Sandbox(root, _outside(root))


def _outside(root: pathlib.Path) -> Tree:
    """Everything in the sandbox but the layer (with times: any write shows)."""
    return snapshot(root, times=True, skip=["layer"])


USERNS_MAP = "0 0 65536\n"
"""The map of :func:`run_case`'s user namespace: ids from 65536 on (and every device) are
what a userns store records instead of setting."""


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0002)
    return True


def _map_child(pid: int) -> None:
    """Write the child's id maps once it is in its new user namespace (root may, from outside)."""
    own = os.stat("/proc/self/ns/user").st_ino
    if not _wait_for(lambda: os.stat(f"/proc/{pid}/ns/user").st_ino != own):
        return
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(USERNS_MAP)


def _extract_in_child(sandbox: Sandbox, data: bytes, fmt_name: str, result_w: int, userns: bool = False) -> None:
    code = "ok"
    try:
        from aufs import _syscalls, apply
        from aufs.errors import ArchiveError, NoSpace, UnsafeArchive
        from aufs.whiteouts import WhiteoutFormat

        if userns:  # a userns store's extraction: real owners where mapped, records elsewhere
            _syscalls.unshare(_syscalls.NS_USER)
            if not _wait_for(lambda: open("/proc/self/uid_map").read().strip() != ""):
                raise RuntimeError("the parent never mapped the user namespace")
        os.chdir(sandbox.root / "cwd")
        try:
            apply.apply_tar(str(sandbox.layer), data, WhiteoutFormat(fmt_name),
                            rootless="userns" if userns else False)
        except UnsafeArchive:
            code = "UnsafeArchive"
        except ArchiveError:
            code = "ArchiveError"
        except NoSpace:
            code = "NoSpace"
    except BaseException:  # noqa: BLE001 - reported to the parent
        code = "other: " + traceback.format_exc()[-3000:]
    finally:
        os.write(result_w, code.encode())
        os._exit(0)


def run_case(sandbox: Sandbox, data: bytes, fmt_name: str, *, prefill: bool = False,
             timeout: float = 20.0, userns: bool = False) -> tuple[str, str | None]:
    """Extract ``data`` into a fresh ``layer/``: (outcome, None if all is well else what went wrong).

    ``userns``: as a userns store extracts (``rootless="userns"``), in a user namespace that
    maps ids 0 to 65535 only."""
    layer = sandbox.layer
    if layer.exists():
        shutil.rmtree(layer)
    layer.mkdir()
    if prefill:  # onto existing content (another code path: opaque directories must track)
        (layer / "etc").mkdir()
        (layer / "etc" / "passwd").write_bytes(b"old")
        (layer / "app").mkdir()
    pid, read_fd = fork_with_pipe(lambda write_fd: _extract_in_child(sandbox, data, fmt_name, write_fd, userns))
    if userns:
        _map_child(pid)
    status = wait_or_kill(pid, timeout, poll=0.0005)
    if status is None:
        os.close(read_fd)
        return "hang", f"hang: no result after {timeout}s"
    result = read_to_end(read_fd)
    problems = []
    if os.WIFSIGNALED(status):
        problems.append(f"crash: killed by signal {os.WTERMSIG(status)}")
    text = result.decode(errors="replace")
    if text not in ALLOWED:
        problems.append(f"unexpected outcome: {text or '(nothing reported)'}")
    outside = _outside(sandbox.root)
    if outside != sandbox.outside:
        problems.append(f"changed outside the layer: {first_diff(sandbox.outside, outside)}")
    leftovers = [n for n in os.listdir(layer) if n.startswith(".wh..wh.aufs-apply-")] if layer.is_dir() else []
    if text == "ok" and leftovers:
        problems.append(f"staging directory left in the layer: {leftovers}")
    return (text if text in ALLOWED else "other"), ("; ".join(problems) or None)


def fuzz(sandbox: Sandbox, seeds: list[bytes], cases: int, rng: random.Random,
         log: list[str] | None = None, userns: bool = False) -> dict[str, int]:
    """Run ``cases`` random mutations; counts per outcome, and ``failed`` for the findings."""
    counts: dict[str, int] = {}
    for index in range(cases):
        seed_index = rng.randrange(len(seeds))
        ops = random_ops(rng)
        data = mutate(seeds[seed_index], ops)
        fmt_name = rng.choice(("overlay", "aufs"))
        outcome, problem = run_case(sandbox, data, fmt_name, prefill=rng.random() < 0.3, userns=userns)
        counts[outcome] = counts.get(outcome, 0) + 1
        if problem:
            counts["failed"] = counts.get("failed", 0) + 1
        if problem and log is not None:
            log.append(f"case {index}: seed {seed_index}, ops {ops}, {fmt_name}: {problem}")
    return counts


__all__ = [
    "ALLOWED",
    "N_OPS",
    "Sandbox",
    "corpus_seeds",
    "fuzz",
    "generated_seeds",
    "io",
    "make_sandbox",
    "mutate",
    "random_ops",
    "run_case",
]
