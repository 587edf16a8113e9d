"""Go's archive/tar test corpus: every file applies or fails cleanly, never crashes, hangs or escapes.

Each archive is applied in a child process with a timeout, so a hang or a crash in C is caught
as such instead of taking the test session down.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import aufs

# ../shared/corpus beside the project root (where CI lays it too), unless told otherwise
CORPUS = pathlib.Path(os.environ.get(
    "AUFS_GO_TAR_CORPUS",
    pathlib.Path(__file__).resolve().parents[3] / "shared" / "corpus" / "go-archive-tar"))
FILES = sorted(p for p in CORPUS.glob("*") if p.suffix in (".tar", ".bz2", ".gz")) if CORPUS.is_dir() else []
TIMEOUT = 60

CHILD = r"""
import json, os, sys
from aufs import ArchiveError, UnsafeArchive, NoSpace
from aufs.apply import apply_tar
from aufs.whiteouts import WhiteoutFormat
src, dest, fmt = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    apply_tar(dest, src, WhiteoutFormat(fmt), max_bytes=1 << 30)
    result = "applied"
except UnsafeArchive as exc:
    result = "unsafe: " + str(exc)
except ArchiveError as exc:
    result = "error: " + str(exc)
print(json.dumps(result))
"""

# the child imports the same aufs as this process (under `make fuzz-asan`, the sanitized copy)
ROOT = str(pathlib.Path(aufs.__file__).resolve().parents[1])


@pytest.mark.skipif(not FILES, reason=f"no corpus at {CORPUS}")
@pytest.mark.parametrize("fmt", ["aufs", "overlay"])
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_corpus_file_applies_or_fails_cleanly(ramdir, path, fmt):
    dest = ramdir / "dest"
    dest.mkdir()
    (ramdir / "sentinel").write_bytes(b"untouched")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(dest), fmt],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == "applied" or result.startswith(("unsafe:", "error:")), result
    assert sorted(os.listdir(ramdir)) == ["dest", "sentinel"]
    assert (ramdir / "sentinel").read_bytes() == b"untouched"
    # whatever was extracted is real and bounded: sparse giants stay sparse
    used = sum(os.lstat(os.path.join(d, n)).st_blocks * 512
               for d, ds, fs in os.walk(dest) for n in ds + fs)
    assert used < (64 << 20)
