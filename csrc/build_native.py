"""cffi build script for ``aufs._native`` (out-of-line API mode).

The C is split by concern: every ``csrc/*.c`` file is compiled into the one extension.
``csrc/aufs_api.h`` holds every declaration cffi exposes (constants, structs, prototypes) and is
both the cdef parsed here and the header the C includes (through ``csrc/aufs_native.h``), so the
declarations exist once. Nothing here includes ``Python.h``.
"""
from __future__ import annotations

import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "aufs_api.h").read_text())

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
