"""The README's set-up works from a fresh clone in a clean environment (issue 9, item 20).

On a stock Debian 12 `python3` is `/usr/bin/python3`, which refuses `pip install` outside a
virtual environment (PEP 668). `make demo` must work there: this test clones the checkout into a
temporary directory and runs `make demo` under `env -i` with the system PATH only, so the
Makefile and scripts/bootstrap see what a new user's shell gives them (no pyenv, no PIP_*
variables, no PYTHONPATH) and the venv is made from `/usr/bin/python3` when it exists.

The clone carries the working tree's uncommitted changes to tracked files too, so the test
checks the code under test, not only the last commit.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.slow


def _clone_with_changes(dest: pathlib.Path) -> None:
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)], check=True)
    diff = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "HEAD", "--binary"], check=True, stdout=subprocess.PIPE
    ).stdout
    if diff:
        subprocess.run(["git", "-C", str(dest), "apply", "--whitespace=nowarn"], input=diff,
                       check=True)


def test_make_demo_from_fresh_clone_in_clean_environment(tmp_path: pathlib.Path) -> None:
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("git and make are needed to run the README's commands from a clone")
    if os.geteuid() != 0:
        pytest.skip("scripts/bootstrap installs Debian packages and mounts: needs root")
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout: nothing to clone")
    checkout = tmp_path / "aufs"
    _clone_with_changes(checkout)
    result = subprocess.run(
        ["env", "-i", f"PATH={CLEAN_PATH}", "make", "demo"],
        cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=1500, check=False,
    )
    log = result.stdout
    assert result.returncode == 0, f"make demo failed in a clean environment:\n{log[-8000:]}"
    venv_python = checkout / ".venv" / "bin" / "python"
    assert venv_python.exists(), log[-4000:]
    # the venv was made by the python a clean shell finds: Debian's own when it is there
    base = subprocess.run(
        ["env", "-i", f"PATH={CLEAN_PATH}", "sh", "-c", "command -v python3"],
        stdout=subprocess.PIPE, text=True, check=True,
    ).stdout.strip()
    home = (checkout / ".venv" / "pyvenv.cfg").read_text()
    assert os.path.dirname(base) in home, home
    # the README's way to use the command afterwards
    ls = subprocess.run(
        ["env", "-i", f"PATH={CLEAN_PATH}", str(checkout / ".venv" / "bin" / "aufs"), "--help"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
    )
    assert ls.returncode == 0 and "import" in ls.stdout, ls.stdout
    assert "importing again creates nothing" in log  # the demo ran to its end
