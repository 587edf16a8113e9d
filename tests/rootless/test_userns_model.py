"""The union model (``tests/store/test_union_model.py``) in both kinds of rootless store, as
``aufs-test``: random layer stacks and operations through the kernel overlay mount in a userns
store's namespace (chown to ids of both subordinate ranges included) and through the
fuse-overlayfs mount of an override_stat store (every file shown as the user's); the view
must equal the model's (issue 10)."""
from __future__ import annotations

import pathlib

import pytest

from ..users import ROOT, User
from .test_userns_store import holders, no_holder_left, require_two_ranges  # noqa: F401 (fixture)

_RUN = r'''
import pathlib, sys
sys.path.insert(0, sys.argv[2])
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from tests.store.test_union_model import make_machine
machine = make_machine(pathlib.Path(sys.argv[1]), "auto", rootless=sys.argv[4])
run_state_machine_as_test(machine, settings=settings(stateful_step_count=30, max_examples=int(sys.argv[3]),
                                                     deadline=None, database=None,
                                                     suppress_health_check=list(HealthCheck)))
print("ok")
'''


@pytest.mark.parametrize("kind", ["userns", "override_stat"])
def test_rootless_union_view_matches_model(kind: str, test_user: User, user_dir: pathlib.Path,
                                           user_fuse: None) -> None:
    require_two_ranges(test_user)  # the model chowns to 70000
    proc = test_user.python(_RUN, str(user_dir / "store"), str(ROOT), "60", kind, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()[-6000:]
    assert proc.stdout.decode().split() == ["ok"]
    assert holders(test_user) == []
