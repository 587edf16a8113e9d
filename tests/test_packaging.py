"""The package builds, installs and runs as a wheel, and its sources stay Python 3.9 code.

* ``requires-python`` admits 3.9 (Debian's PyPy 7.3.11 is Python 3.9).
* Every source file compiles under Python 3.9 grammar: Debian's ``pypy3`` (a real 3.9 parser)
  compiles them all, which catches ``match``, parenthesized context managers, ``except*`` and
  other 3.10+ syntax that CPython 3.11 accepts silently.
* ``wheels/build.sh --cpython-only`` (sdist -> abi3 wheel -> auditwheel repair -> checks ->
  fresh venv -> import, ``mounted('/')`` and real mounts) succeeds and produces a
  ``cp39-abi3-manylinux`` wheel holding ``aufs/_native.abi3.so``. About a minute with a warm
  tool cache; needs PyPI. The full build including the PyPy wheel is marked ``slow``.

Select these with ``-m packaging``.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "wheels" / "build.sh"

pytestmark = pytest.mark.packaging


def _python_sources() -> list[pathlib.Path]:
    """Every Python file that ships or runs at build time (setup, cffi build script, wheels/)."""
    files = sorted((ROOT / "aufs").rglob("*.py"))
    files += [ROOT / "setup.py", ROOT / "csrc" / "build_native.py"]
    files += sorted((ROOT / "wheels").glob("*.py"))
    return files


def _requires_python() -> str:
    if sys.version_info >= (3, 11):
        import tomllib as toml
    else:
        toml = pytest.importorskip("tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        value = toml.load(f)["project"]["requires-python"]
    assert isinstance(value, str)
    return value


def test_requires_python_admits_39_and_pypy() -> None:
    from packaging.specifiers import SpecifierSet

    specs = SpecifierSet(_requires_python())
    # 3.9.16 is the language version of Debian 12's PyPy 7.3.11
    for version in ("3.9.0", "3.9.16", "3.11.2", "3.12.0"):
        assert version in specs, f"requires-python {specs} rejects {version}"


def test_sources_compile_under_python39_grammar() -> None:
    pypy = shutil.which("pypy3")
    if pypy is None:
        pytest.skip("pypy3 (Python 3.9) not installed; scripts/bootstrap installs it")
    version = subprocess.run(
        [pypy, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert version == "3.9", f"pypy3 is Python {version}, this test needs a 3.9 parser"
    # compile() in memory: py_compile would write PyPy .pyc files into the source tree
    checker = (
        "import sys\n"
        "bad = []\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        compile(open(path, 'rb').read(), path, 'exec', dont_inherit=True)\n"
        "    except SyntaxError as e:\n"
        "        bad.append('%s:%s: %s' % (path, e.lineno, e.msg))\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    sources = [str(p) for p in _python_sources()]
    assert len(sources) > 5
    result = subprocess.run([pypy, "-c", checker, *sources], capture_output=True, text=True, check=False)
    assert result.returncode == 0, "not Python 3.9 syntax:\n" + result.stdout + result.stderr


def _generated(path: pathlib.Path) -> bool:
    """protoc's output (aufs/serve/_proto): committed as generated, never edited by hand."""
    return "DO NOT EDIT" in path.read_text()[:300]


def test_sources_postpone_annotations() -> None:
    """`X | Y` and `list[int]` in annotations only work on 3.9 with postponed evaluation."""
    missing = [
        str(p.relative_to(ROOT))
        for p in _python_sources()
        if p.read_text().strip() and not _generated(p) and "from __future__ import annotations" not in p.read_text()
    ]
    assert not missing, f"missing 'from __future__ import annotations': {missing}"


def _run_build(out: pathlib.Path, *args: str) -> str:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not installed")
    if os.geteuid() != 0:
        pytest.skip("the smoke test mounts for real: needs root")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--out", str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, check=False,
        env={**_clean_env(), "PYTHON": sys.executable},
    )
    assert result.returncode == 0, f"wheels/build.sh failed:\n{result.stdout[-6000:]}"
    return result.stdout


def _clean_env() -> dict[str, str]:
    """The environment without PYTHON* variables, so the build sees no test-run settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def _assert_cpython_wheel(out: pathlib.Path, log: str) -> None:
    wheels = sorted(out.glob("aufs-*.whl"))
    # any manylinux tag: with older glibc symbols auditwheel writes compound tags
    abi3 = [w for w in wheels if re.search(r"-cp39-abi3-manylinux[^-]*\.whl$", w.name)]
    assert len(abi3) == 1, f"expected one cp39-abi3 manylinux wheel, got {[w.name for w in wheels]}"
    with zipfile.ZipFile(abi3[0]) as zf:
        names = zf.namelist()
    assert "aufs/_native.abi3.so" in names
    assert "aufs/py.typed" in names
    assert not [n for n in names if n.startswith("tests/")]
    assert len(list(out.glob("aufs-*.tar.gz"))) == 1, "the sdist is not in the output"
    assert "abi3audit: only limited-API symbols" in log
    assert "smoke: OK CPython" in log and "tmpfs + self-bind" in log, log[-3000:]


def test_cpython_wheel_builds_installs_and_mounts(tmp_path: pathlib.Path) -> None:
    log = _run_build(tmp_path / "out", "--cpython-only")
    _assert_cpython_wheel(tmp_path / "out", log)


@pytest.mark.slow
def test_full_build_with_pypy_wheel(tmp_path: pathlib.Path) -> None:
    if shutil.which("pypy3") is None:
        pytest.skip("pypy3 not installed; scripts/bootstrap installs it")
    out = tmp_path / "out"
    log = _run_build(out)
    _assert_cpython_wheel(out, log)
    pypy = [w for w in out.glob("aufs-*.whl") if "-pp39-pypy39_pp73-manylinux" in w.name]
    assert len(pypy) == 1, f"expected one PyPy manylinux wheel in {list(out.iterdir())}"
    with zipfile.ZipFile(pypy[0]) as zf:
        assert any(re.fullmatch(r"aufs/_native\.pypy39-pp73-[^/]*\.so", n) for n in zf.namelist())
    assert "smoke: OK PyPy 3.9" in log, log[-3000:]
