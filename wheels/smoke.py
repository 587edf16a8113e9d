"""Smoke test of an installed aufs wheel, run by the interpreter of a fresh virtual environment.

Owns the post-install promise of a wheel: it imports from the environment (not from a source
tree), its compiled module is the one the wheel tag announces, ``aufs.mounted('/')`` is True,
and - with ``--real-mounts``, which ``wheels/build.sh`` passes when it runs this script as root
under ``unshare -m --propagation private`` - one real tmpfs mount and one self-bind mount are
seen as mount points while a plain directory is not. (The flag is explicit because a private
namespace cannot be detected reliably: ``/proc/1/ns/mnt`` is unreadable from inside one here.)

Run with ``python -I`` so neither the working directory nor ``PYTHON*`` variables can put a
source checkout on ``sys.path``. Exit status 0 on success; an assertion names what failed.
Standard library plus the installed package only; runs on Python 3.9 (CPython and PyPy).
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys
import tempfile

import aufs

_MS_BIND = 4096  # <linux/mount.h>; the self-bind is the case os.path.ismount gets wrong


def check_installed() -> str:
    """Assert aufs and its native module come from this environment; return the .so name."""
    package_dir = os.path.dirname(os.path.realpath(aufs.__file__))
    prefix = os.path.realpath(sys.prefix)
    assert package_dir.startswith(prefix + os.sep), f"aufs imported from {package_dir}, not {prefix}"
    # find_spec locates the extension without importing it: only aufs._syscalls imports it
    spec = importlib.util.find_spec("aufs._native")
    assert spec is not None and spec.origin is not None, "aufs._native is missing"
    native = os.path.basename(spec.origin)
    if platform.python_implementation() == "CPython":
        assert native == "_native.abi3.so", f"CPython wheel should carry _native.abi3.so, has {native}"
    else:
        assert native.startswith("_native.pypy"), f"PyPy wheel should carry _native.pypy*.so, has {native}"
    return native


def check_real_mounts() -> None:
    """Mount a tmpfs and a self-bind in a throwaway directory and ask aufs.mounted about them."""
    scratch = tempfile.mkdtemp(prefix="aufs-smoke-")
    target = os.path.join(scratch, "tmpfs")
    os.mkdir(target)
    try:
        assert not aufs.mounted(target), "a plain directory reported as a mount point"
        aufs.mount("tmpfs", target, "tmpfs")
        try:
            assert aufs.mounted(target), "a fresh tmpfs mount not reported as a mount point"
            plain = os.path.join(target, "plain dir")
            os.mkdir(plain)
            assert not aufs.mounted(plain), "a directory inside the tmpfs reported as a mount point"
            bound = os.path.join(target, "self bind")
            os.mkdir(bound)
            aufs.mount(bound, bound, None, _MS_BIND)
            try:
                assert aufs.mounted(bound), "a directory bind-mounted onto itself not reported"
            finally:
                assert aufs.unmount(bound), "unmount of the self-bind said it was not mounted"
            assert not aufs.mounted(bound), "the self-bind still reported after unmount"
        finally:
            aufs.unmount(target)
        assert not aufs.mounted(target), "the tmpfs still reported after unmount"
    finally:
        os.rmdir(target)
        os.rmdir(scratch)


def main(argv: list[str]) -> int:
    native = check_installed()
    assert aufs.mounted("/") is True, "aufs.mounted('/') is not True"
    where = f"{platform.python_implementation()} {platform.python_version()}"
    if "--real-mounts" in argv:
        check_real_mounts()
        print(f"smoke: OK {where}: aufs {aufs.__version__} ({native}), mounted('/'), tmpfs + self-bind")
    else:
        print(f"smoke: OK {where}: aufs {aufs.__version__} ({native}), mounted('/'); "
              "real mounts not requested (--real-mounts: root in a private mount namespace)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
