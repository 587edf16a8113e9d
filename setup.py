"""Build glue only: all metadata lives in pyproject.toml.

The one compiled piece is the cffi extension ``aufs._native`` (out-of-line API mode),
described by ``csrc/build_native.py``.
"""
from __future__ import annotations

import platform
import sys
import sysconfig
from typing import Any

from setuptools import setup


def _bdist_wheel_options() -> dict[str, Any]:
    """Tag CPython wheels ``cp39-abi3`` when cffi compiles against the limited API.

    cffi defines ``Py_LIMITED_API`` itself (hence ``_native.abi3.so``) except on debug and
    free-threaded builds; there the wheel must keep its per-version tag. PyPy ignores the
    option and gets its own ``pp39-pypy39_pp73`` tag: API mode means one binary per runtime.
    """
    limited = (
        platform.python_implementation() == "CPython"
        and not hasattr(sys, "gettotalrefcount")
        and not sysconfig.get_config_var("Py_GIL_DISABLED")
    )
    return {"py_limited_api": "cp39"} if limited else {}


setup(
    cffi_modules=["csrc/build_native.py:ffibuilder"],
    options={"bdist_wheel": _bdist_wheel_options()},
)
