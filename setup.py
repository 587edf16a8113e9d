"""Build glue only: all metadata lives in pyproject.toml.

The one compiled piece is the cffi extension ``aufs._native`` (out-of-line API mode),
described by ``csrc/build_native.py``.
"""
from setuptools import setup

setup(cffi_modules=["csrc/build_native.py:ffibuilder"])
