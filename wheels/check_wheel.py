"""Structural checks of one built aufs wheel against the sdist it was built from.

Owns the answer to "is this wheel shippable?" for the parts no other tool checks:

* the file name carries the expected interpreter/ABI tag (``cp39-abi3`` for CPython,
  ``pp39-pypy39_pp73`` for PyPy) and a manylinux platform tag, and the ``WHEEL`` file agrees;
* it holds exactly one compiled ``aufs/_native*.so`` (named ``_native.abi3.so`` when abi3),
  ``aufs/py.typed`` and every ``aufs/**.py`` module of the sdist (a missing subpackage shows
  up here), and no tests;
* auditwheel vendored no shared library (libc is the only native runtime dependency of the
  extension; libarchive is loaded by python-libarchive-c at run time);
* ``Requires-Python`` admits 3.9.

auditwheel (manylinux policy), abi3audit (limited-API symbols) and twine (metadata) are run
by ``wheels/build.sh`` beside this script. Standard library only; runs on Python 3.9.

Usage: ``check_wheel.py WHEEL --sdist SDIST --expect-tag cp39-abi3``; exit status 0 when
every check passes, 1 with one line per failure otherwise.
"""
from __future__ import annotations

import argparse
import email.parser
import re
import sys
import tarfile
import zipfile
from collections.abc import Sequence

# name-version(-build)?-python-abi-platform.whl (PEP 427)
_WHEEL_NAME = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-(?P<build>\d[^-]*))?"
    r"-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$"
)


def sdist_modules(sdist: str) -> set[str]:
    """Paths (``aufs/...py``, relative to the package root) of every module in the sdist."""
    modules: set[str] = set()
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            # sdist members are "<name>-<version>/aufs/..."
            _, _, rel = member.name.partition("/")
            if member.isfile() and rel.startswith("aufs/") and rel.endswith(".py"):
                modules.add(rel)
    return modules


def requires_python_admits_39(spec: str) -> bool:
    """True if the ``Requires-Python`` specifier set admits Python 3.9.0 and 3.9.16 (PyPy 7.3.11)."""
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # packaging is not stdlib; fall back to the one form we write
        match = re.fullmatch(r"\s*>=\s*3\.(\d+)\s*", spec)
        return match is not None and int(match.group(1)) <= 9
    specs = SpecifierSet(spec)
    return "3.9.0" in specs and "3.9.16" in specs


def check(wheel: str, sdist: str | None, expect_tag: str | None) -> list[str]:
    """Return one message per failed check (an empty list means the wheel is fine)."""
    failures: list[str] = []
    base = wheel.rsplit("/", 1)[-1]
    parsed = _WHEEL_NAME.match(base)
    if parsed is None:
        return [f"{base}: not a PEP 427 wheel file name"]
    tag = f"{parsed['python']}-{parsed['abi']}"
    if expect_tag is not None and tag != expect_tag:
        failures.append(f"{base}: tag {tag}, expected {expect_tag}")
    platforms = parsed["platform"].split(".")
    if not all(p.startswith("manylinux") for p in platforms):
        failures.append(f"{base}: platform tag {parsed['platform']} is not manylinux (not repaired?)")

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = f"{parsed['name']}-{parsed['version']}.dist-info"
        wheel_meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/WHEEL").decode())
        metadata = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())

    declared = set(wheel_meta.get_all("Tag") or [])
    expected_declared = {f"{tag}-{p}" for p in platforms}
    if declared != expected_declared:
        failures.append(f"{base}: WHEEL says Tag {sorted(declared)}, file name says {sorted(expected_declared)}")

    natives = [n for n in names if re.fullmatch(r"aufs/_native[^/]*\.so", n)]
    if len(natives) != 1:
        failures.append(f"{base}: expected exactly one aufs/_native*.so, found {natives}")
    elif parsed["abi"] == "abi3" and natives[0] != "aufs/_native.abi3.so":
        failures.append(f"{base}: abi3 wheel holds {natives[0]}, expected aufs/_native.abi3.so")
    if "aufs/py.typed" not in names:
        failures.append(f"{base}: aufs/py.typed missing (PEP 561 marker)")
    tests = [n for n in names if n.startswith("tests/") or "/tests/" in n or re.search(r"/test_[^/]*\.py$", n)]
    if tests:
        failures.append(f"{base}: ships tests: {tests[:5]}")
    vendored = [n for n in names if ".libs/" in n]
    if vendored:
        failures.append(f"{base}: auditwheel vendored shared libraries {vendored} (expected libc only)")
    if sdist is not None:
        missing = sorted(sdist_modules(sdist) - set(names))
        if missing:
            failures.append(f"{base}: modules in the sdist but not in the wheel: {missing}")

    requires_python = metadata.get("Requires-Python")
    if requires_python is None or not requires_python_admits_39(requires_python):
        failures.append(f"{base}: Requires-Python {requires_python!r} does not admit 3.9")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel")
    parser.add_argument("--sdist", help="the sdist the wheel was built from (module list)")
    parser.add_argument("--expect-tag", help="python-abi tag, e.g. cp39-abi3 or pp39-pypy39_pp73")
    args = parser.parse_args(argv)
    failures = check(args.wheel, args.sdist, args.expect_tag)
    for failure in failures:
        print(f"check_wheel: FAIL {failure}", file=sys.stderr)
    if not failures:
        print(f"check_wheel: OK {args.wheel.rsplit('/', 1)[-1]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
