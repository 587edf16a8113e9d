"""cffi build script for ``aufs._native`` (out-of-line API mode).

The C is split by concern: every ``csrc/*.c`` file is compiled into the one extension and every
``csrc/*.cdef`` file holds the declarations cffi exposes from it. ``csrc/aufs_native.h`` is the
shared header included by all of them. Nothing here includes ``Python.h``.
"""
from __future__ import annotations

import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef("\n".join(p.read_text() for p in sorted(HERE.glob("*.cdef"))))

_extra_cflags = os.environ.get("AUFS_NATIVE_CFLAGS", "").split()
_extra_ldflags = os.environ.get("AUFS_NATIVE_LDFLAGS", "").split()

ffibuilder.set_source(
    "aufs._native",
    '#include "aufs_native.h"\n',
    sources=[os.path.relpath(p, HERE.parent) for p in sorted(HERE.glob("*.c"))],
    include_dirs=[os.path.relpath(HERE, HERE.parent)],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-D_GNU_SOURCE", *_extra_cflags],
    extra_link_args=_extra_ldflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
