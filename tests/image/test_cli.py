"""The ``aufs`` command, run in-process through ``main(argv)``: outputs, --json, exit codes."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from aufs.cli import default_home, main

from .helpers import layer_tar, write_layout

TARS = [layer_tar([("etc", None), ("etc/motd", b"hi"), ("old", b"o")]), layer_tar([(".wh.old", b""), ("new", b"n" * 3000)])]


def aufs_cli(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--home", str(home), *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def home(ramdir: Path):  # type: ignore[no-untyped-def]
    path = ramdir / "home"
    yield path
    main(["--home", str(path), "cleanup"], stdout=io.StringIO(), stderr=io.StringIO())


def test_import_ls_changes_rm(home: Path, ramdir: Path) -> None:
    write_layout(ramdir / "img", TARS)
    code, out, err = aufs_cli(home, "import", str(ramdir / "img"))
    assert code == 0, err
    top = out.strip()
    code, out, _ = aufs_cli(home, "--json", "import", str(ramdir / "img"))
    data = json.loads(out)
    assert data["top"] == top and len(data["layers"]) == 2
    base = data["layers"][0]

    code, out, _ = aufs_cli(home, "ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(base) and lines[1].startswith(f"└── {top}")
    assert "2.9 KiB" in lines[1]
    code, out, _ = aufs_cli(home, "ls", "--json")  # --json after the subcommand works too
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows[top]["parent"] == base and rows[top]["diff_size"] == 3000 and rows[top]["mounted"] is False

    code, out, _ = aufs_cli(home, "changes", top)
    assert out.splitlines() == ["A /new", "D /old"]
    code, out, _ = aufs_cli(home, "--json", "changes", top)
    assert json.loads(out) == [{"kind": "ADD", "path": "/new"}, {"kind": "DELETE", "path": "/old"}]

    code, _, err = aufs_cli(home, "rm", base)
    assert code == 5 and err.startswith("aufs rm: ") and len(err.strip().splitlines()) == 1
    assert aufs_cli(home, "rm", top, base)[0] == 0
    assert json.loads(aufs_cli(home, "--json", "ls")[1]) == []


def test_create_apply_mount_umount_diff(home: Path, ramdir: Path) -> None:
    (ramdir / "layer.tar").write_bytes(TARS[0])
    assert aufs_cli(home, "create", "base")[0] == 0
    code, out, err = aufs_cli(home, "--json", "apply", "base", str(ramdir / "layer.tar"))
    assert code == 0, err
    assert json.loads(out)["diff_size"] == 3
    assert aufs_cli(home, "create", "app", "--parent", "base")[0] == 0

    # `aufs mount` in its own process: the mount must outlive it
    proc = subprocess.run(
        [sys.executable, "-m", "aufs", "--home", str(home), "mount", "app"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert (path / "etc" / "motd").read_bytes() == b"hi"
    (path / "written").write_text("w")
    rows = {r["id"]: r for r in json.loads(aufs_cli(home, "--json", "ls")[1])}
    assert rows["app"]["mounted"] is True
    code, out, _ = aufs_cli(home, "--json", "umount", "app")
    assert code == 0 and json.loads(out) == {"id": "app", "mounted": False}
    assert not os.path.ismount(path)

    code, out, _ = aufs_cli(home, "diff", "app", "-o", str(ramdir / "app.tar"))
    assert code == 0
    with tarfile.open(ramdir / "app.tar") as tar:
        assert tar.getnames() == ["written"]

    code, out, _ = aufs_cli(home, "--json", "status")
    status = json.loads(out)
    assert status["backend"] in ("overlay", "aufs", "fuse-overlayfs")


def test_export(home: Path, ramdir: Path) -> None:
    write_layout(ramdir / "img", TARS)
    top = aufs_cli(home, "import", str(ramdir / "img"))[1].strip()
    code, out, err = aufs_cli(home, "export", top, str(ramdir / "out"), "--gzip")
    assert code == 0, err
    assert out.startswith("sha256:")
    assert json.loads((ramdir / "out" / "index.json").read_text())["manifests"][0]["digest"] == out.strip()


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["mount", "nope"], 3, "aufs mount: "),
        (["create", "bad/id"], 2, "invalid layer id"),
        (["create", "x", "--parent", "nope"], 3, "nope"),
        (["import", "/nonexistent/image"], 10, "no such file or directory: /nonexistent/image"),
        (["apply", "x", "/nonexistent/layer.tar"], 10, "no such file or directory: /nonexistent/layer.tar"),
        (["bogus-command"], 2, "invalid choice"),
        (["ls", "--bogus"], 2, "unrecognized arguments"),
        (["--backend", "nope", "ls"], 2, "invalid choice"),
    ],
)
def test_errors_are_one_line_with_meaningful_codes(home: Path, argv: list[str], code: int, message: str) -> None:
    got, _out, err = aufs_cli(home, *argv)
    assert got == code, err
    assert message in err
    assert "Traceback" not in err


def test_digest_mismatch_exit_code(home: Path, ramdir: Path) -> None:
    info = write_layout(ramdir / "img", TARS)
    blob = ramdir / "img" / "blobs" / "sha256" / info["layers"][1][7:]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # the gzip length trailer
    blob.write_bytes(bytes(data))
    code, _, err = aufs_cli(home, "import", str(ramdir / "img"))
    assert code == 6 and "sha256" in err
    assert json.loads(aufs_cli(home, "--json", "ls")[1]) == []


def test_layer_exists_code_and_debug_traceback(home: Path) -> None:
    assert aufs_cli(home, "create", "x")[0] == 0
    code, _, err = aufs_cli(home, "create", "x")
    assert code == 4 and "Traceback" not in err
    code, _, err = aufs_cli(home, "--debug", "create", "x")
    assert code == 4 and "Traceback" in err


def test_diff_refuses_a_terminal(home: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    aufs_cli(home, "create", "x")
    code = main(["--home", str(home), "diff", "x"], stdout=Tty(), stderr=io.StringIO())
    assert code == 2


def test_default_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUFS_HOME", "/somewhere")
    assert default_home() == Path("/somewhere")
    monkeypatch.delenv("AUFS_HOME")
    assert default_home() == (Path("/var/lib/aufs") if os.geteuid() == 0 else Path.home() / ".local/share/aufs")


def test_help_and_version() -> None:
    out = io.StringIO()
    assert main(["--version"], stdout=out, stderr=io.StringIO()) == 0


def test_check_reports_then_repairs_an_orphan(home: Path) -> None:
    assert aufs_cli(home, "create", "base")[0] == 0
    code, out, _ = aufs_cli(home, "--json", "check")
    assert code == 0 and json.loads(out)["ok"] is True
    (home / "layers" / "not a layer id").mkdir()  # debris no layer id can name
    code, out, _ = aufs_cli(home, "--json", "check")
    report = json.loads(out)
    assert code == 11 and report["ok"] is False
    assert [f["kind"] for f in report["findings"]] == ["orphan-directory"]
    code, out, _ = aufs_cli(home, "check", "--repair")
    assert code == 0 and "repaired" in out
    assert not (home / "layers" / "not a layer id").exists()
    assert aufs_cli(home, "check")[0] == 0
