"""Fixtures of the reliability tests: backends that can run here, stores on tmpfs."""
from __future__ import annotations

import pytest

from ..backends import backend_params


# overlay first: the fast one the long runs use; kernel AUFS is not exercised here
@pytest.fixture(params=backend_params(("overlay", "fuse-overlayfs")))
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)

