"""Driver.check(): every kind of inconsistency is reported, repaired by check(repair=True) (or
reported as unrepairable), and work in progress of live threads and processes never is."""
from __future__ import annotations

from pathlib import Path
import json
import os
import subprocess
import threading

import pytest

import aufs
from aufs import mounts
from aufs.check import KINDS, UNREPAIRABLE_KINDS, CheckReport
from aufs.owners import ProcessToken

from ..backends import PathLayout
from .trees import build_tar, mounts_below, store_state


def _dead() -> ProcessToken:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return ProcessToken(proc.pid, 1)


def _kinds(report: CheckReport) -> list[str]:
    return sorted(f.kind for f in report.findings)


def _repairs_to_clean(d: aufs.Driver, expected: list[str]) -> None:
    """check() finds exactly ``expected``; repair fixes all; a second check finds nothing."""
    found = d.check()
    assert _kinds(found) == sorted(expected), str(found)
    assert not found.ok and not any(f.repaired for f in found.findings)
    repaired = d.check(repair=True)
    assert _kinds(repaired) == sorted(expected), str(repaired)
    assert repaired.ok and all(f.repaired for f in repaired.findings)
    after = d.check()
    assert after.clean, str(after)


@pytest.fixture
def populated(driver: aufs.Driver) -> aufs.Driver:
    driver.create("base")
    driver.apply_diff("base", build_tar([("dir", "etc"), ("file", "etc/x", b"x")]))
    driver.create("app", parent="base")
    return driver


def test_a_sound_store_is_clean(populated: aufs.Driver) -> None:
    report = populated.check()
    assert report.clean and report.ok and "consistent" in str(report)
    with populated.mount("app"):
        assert populated.check().clean  # a live mount with its references is no finding
    assert json.dumps(report.as_dict())


def test_leftover_temporaries_with_a_mount_inside(populated: aufs.Driver) -> None:
    layout = PathLayout(populated.layout)
    dead = layout.temp_path("view", _dead(), "app")
    dead.mkdir()
    mounts.mount("tmpfs", dead, "tmpfs")
    (layout.tmp_dir / "not-ours").write_text("x")
    layout.meta_file.with_name(layout.meta_file.name + ".tmp").write_text("{")
    (layout.state_dir / "app.refs.tmp").write_text("{")
    live = layout.temp_path("create", ProcessToken.current(), "busy")
    live.mkdir()  # work in progress of a live process: never touched
    _repairs_to_clean(populated, ["leftover-temporary"] * 4)
    assert live.exists() and not dead.exists()
    live.rmdir()
    assert mounts_below(populated.home) == []


def test_orphan_directories(populated: aufs.Driver) -> None:
    layers = Path(populated.layout.layers_dir)
    (layers / "half-built").mkdir()
    (layers / "half-built" / "diff").mkdir()
    (layers / "-bad name").mkdir()
    (layers / "afile").write_text("")
    assert "half-built" in populated.layers()
    _repairs_to_clean(populated, ["orphan-directory"] * 3)
    assert populated.layers() == ["app", "base"]


def test_missing_work_directory_and_wrong_ancestors(populated: aufs.Driver) -> None:
    os.rmdir(Path(populated.layout.work_dir("app")))
    meta = Path(populated.layout.layer_meta("app"))
    meta.write_text(json.dumps({"parent": "base", "ancestors": ["base", "ghost"]}))
    _repairs_to_clean(populated, ["missing-work-directory", "wrong-ancestors"])
    assert json.loads(meta.read_text())["ancestors"] == ["base"]
    with populated.mount("app") as root:
        assert os.path.isfile(f"{root}/etc/x")


def test_unrepairable_damage_is_reported_and_left(populated: aufs.Driver) -> None:
    layout = PathLayout(populated.layout)
    populated.create("orphan", parent="app")
    # damage from outside the store: a parent deleted by hand, metadata overwritten
    os.rename(layout.layer_dir("app"), layout.home / "app-moved-away")
    populated.create("broken")
    layout.layer_meta("broken").write_text("not json")
    populated.create("hollow")
    os.rmdir(layout.diff_dir("hollow"))
    report = populated.check(repair=True)
    assert _kinds(report) == ["corrupt-metadata", "dangling-parent", "incomplete-layer"], str(report)
    assert not report.ok and {f.kind for f in report.unrepaired} <= UNREPAIRABLE_KINDS
    assert "cannot repair" in str(report)
    assert layout.layer_dir("orphan").is_dir()  # nothing was deleted


def test_stale_mount_of_a_dead_holder_and_its_references(populated: aufs.Driver) -> None:
    layout = PathLayout(populated.layout)
    populated.get("app")
    # the holder dies without put: its reference names a dead process
    layout.refs_file("app").write_text(json.dumps({"holders": {f"{_dead()}:abc": 2}}))
    _repairs_to_clean(populated, ["stale-mount", "stale-references"])
    assert not populated.is_mounted("app")


def test_references_without_a_mount_and_dead_holders_beside_live_ones(populated: aufs.Driver) -> None:
    layout = PathLayout(populated.layout)
    layout.refs_file("base").write_text(json.dumps({"holders": {f"{ProcessToken.current()}:x": 1}}))
    populated.get("app")
    table = json.loads(layout.refs_file("app").read_text())
    table["holders"][f"{_dead()}:y"] = 3
    layout.refs_file("app").write_text(json.dumps(table))
    _repairs_to_clean(populated, ["stale-references", "stale-references"])
    assert populated.is_mounted("app")  # the live holder keeps its mount
    populated.put("app")
    assert not populated.is_mounted("app")


def test_stacked_and_foreign_mounts(populated: aufs.Driver) -> None:
    layout = PathLayout(populated.layout)
    root = populated.get("app")
    mounts.mount("tmpfs", root, "tmpfs")  # mounted twice on the layer's mountpoint
    (layout.mnt_dir / "nolayer").mkdir()
    mounts.mount("tmpfs", layout.mnt_dir / "nolayer", "tmpfs")
    mounts.mount("tmpfs", layout.diff_dir("base"), "tmpfs")  # something mounted into a diff dir
    _repairs_to_clean(populated, ["stacked-mount", "stale-mount", "stale-mount"])
    assert not (layout.mnt_dir / "nolayer").exists()
    assert os.path.isfile(f"{root}/etc/x")  # the union itself stays for its holder
    populated.put("app")
    assert mounts_below(populated.home) == []


def test_stale_state_and_links(populated: aufs.Driver) -> None:
    layout = PathLayout(populated.layout)
    (layout.state_dir / "gone.lock").write_text("")
    (layout.state_dir / "gone.backend").write_text("1-1")
    os.symlink("../layers/gone/diff", layout.links_dir / "ABCDEFGHIJKLMNOPQRST")
    os.symlink(layout.short_link_target("base"), layout.links_dir / "WRONGNAMEWRONGNAME00")
    (layout.mnt_dir / "gone").mkdir()
    _repairs_to_clean(populated, ["stale-state"] * 4 + ["stale-mountpoint"])


def test_every_kind_is_documented() -> None:
    from aufs import check

    for kind in KINDS:
        assert f"``{kind}``" in (check.__doc__ or ""), kind


def test_check_never_reports_work_in_progress(populated: aufs.Driver) -> None:
    """While threads with other Drivers create, apply, mount and remove, every check is clean
    and check(repair=True) breaks none of their operations."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn(n: int) -> None:
        d = aufs.Driver(populated.home, backend=populated.backend)
        i = 0
        try:
            while not stop.is_set():
                own = f"w{n}-{i}"
                d.create(own, parent="app")
                d.apply_diff(own, build_tar([("file", f"f{i}", b"x")]))
                with d.mount(own), d.mount("app"):
                    pass
                d.remove(own)
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    reports = []
    try:
        for i in range(20):
            # repairing must not disturb them either: there is nothing to repair
            reports.append(populated.check(repair=i % 2 == 1))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert all(r.clean for r in reports), [str(r) for r in reports if not r.clean]
    assert store_state(populated.home).keys() == {"app", "base"}


def test_a_mount_that_vanished_takes_its_references_along(populated: aufs.Driver) -> None:
    """A mount gone from under the store (unmounted by hand, a reboot, a userns store's
    namespace that ended): the references recorded for it were to that mount. The next get
    counts from one, so one put unmounts, for a process holder and a persistent one."""
    keeper = aufs.Driver(populated.home, holder="keeper")
    for driver in (populated, keeper):
        path = driver.get("app")
        driver.get("app")
        mounts.unmount(path)  # two references to a mount that is no more
        assert not driver.is_mounted("app")
        assert driver.get("app") == path
        driver.put("app")
        assert not driver.is_mounted("app"), driver.holders("app")
        assert driver.holders("app") == {}
