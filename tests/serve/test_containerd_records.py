"""The snapshotter's persistent records across crashes, without gRPC: the states a process
killed between two steps leaves, reproduced on disk, then opened by the next server."""
from __future__ import annotations

import os
import pathlib

import pytest

from aufs import Driver, StoreLocked
from aufs.serve.snapshotter import SnapshotNotFound, Snapshotter


def test_records_survive_reopening(overlay_driver: Driver) -> None:
    with Snapshotter(overlay_driver) as s:
        s.prepare("a", "", {"l": "1"})
        s.commit("c", "a", {"gc": "x"})
        s.view("v", "c")
        s.update("v", {"k": "v"})
        before = {snap.key: snap for snap in s.walk()}
    with Snapshotter(Driver(overlay_driver.home, backend="overlay")) as again:
        assert {snap.key: snap for snap in again.walk()} == before


def test_a_commit_interrupted_between_its_two_writes_is_finished(overlay_driver: Driver) -> None:
    records = overlay_driver.home / "snapshotter" / "snapshots"
    with Snapshotter(overlay_driver) as s:
        s.prepare("work", "")
        (active_file,) = records.iterdir()
        saved = active_file.read_bytes()
        s.commit("done", "work")
    active_file.write_bytes(saved)  # as if the process died before deleting the active record
    with Snapshotter(overlay_driver) as s:
        assert [snap.key for snap in s.walk()] == ["done"]
        with pytest.raises(SnapshotNotFound):
            s.stat("work")
    assert len(list(records.iterdir())) == 1


def test_debris_of_a_crash_is_swept_and_nothing_else(overlay_driver: Driver) -> None:
    records = overlay_driver.home / "snapshotter" / "snapshots"
    with Snapshotter(overlay_driver) as s:
        s.prepare("kept", "")
        (kept_layer,) = overlay_driver.layers()
    # a layer created for a Prepare whose record was never written, a child of it, a
    # half-written record, and a layer of the user's own that merely looks similar
    overlay_driver.create("ctd-0011223344-beef01")
    overlay_driver.create("ctd-0011223344-f00d02", parent="ctd-0011223344-beef01")
    (records / "0123.json.tmp").write_text("{")
    overlay_driver.create("ctd-mine")
    with Snapshotter(overlay_driver) as s:
        assert [snap.key for snap in s.walk()] == ["kept"]
    assert sorted(overlay_driver.layers()) == sorted([kept_layer, "ctd-mine"])
    assert not (records / "0123.json.tmp").exists()


def test_one_snapshotter_per_store(overlay_driver: Driver) -> None:
    with Snapshotter(overlay_driver), pytest.raises(StoreLocked):
        Snapshotter(Driver(overlay_driver.home, backend="overlay"))


def test_a_record_whose_layer_was_removed_by_hand_reports_not_found(overlay_driver: Driver) -> None:
    with Snapshotter(overlay_driver) as s:
        s.prepare("a", "")
        (layer,) = overlay_driver.layers()
        overlay_driver.remove(layer)  # `aufs rm` behind containerd's back
        with pytest.raises(SnapshotNotFound):
            s.usage("a")
        s.remove("a")  # containerd can still clean up its view
        assert s.walk() == []


def test_a_layer_the_user_holds_outlives_its_snapshot_until_released(overlay_driver: Driver) -> None:
    with Snapshotter(overlay_driver) as s:
        s.prepare("a", "")
        (layer,) = overlay_driver.layers()
        root = overlay_driver.get(layer)  # `aufs mount` of a containerd layer
        try:
            s.remove("a")  # containerd's view: gone at once
            with pytest.raises(SnapshotNotFound):
                s.stat("a")
            assert overlay_driver.layers() == [layer] and os.path.ismount(root)
            s.cleanup()
            assert overlay_driver.layers() == [layer]
        finally:
            overlay_driver.put(layer)
        s.cleanup()
        assert overlay_driver.layers() == []


def test_a_home_containerd_cannot_name_is_refused(ramdir: pathlib.Path) -> None:
    driver = Driver(ramdir / "a,b", backend="overlay")
    with pytest.raises(ValueError, match="containerd splits overlay options"):
        Snapshotter(driver)
    assert not (ramdir / "a,b" / "snapshotter").exists()
