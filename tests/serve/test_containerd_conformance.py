"""The Snapshots API over gRPC, case by case as containerd's own snapshotter test suite
(``core/snapshots/testsuite/testsuite.go``) checks a snapshotter, plus the bad requests a
server on a socket meets. Every mount is performed as containerd performs it (helpers).
"""
from __future__ import annotations

import errno
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from aufs import Driver
from aufs.serve.containerd import ContainerdServer

from .helpers import KIND_NAMES, Client, code_of, mounted

GC_ROOT = {"containerd.io/gc.root": "conformance"}
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT

Applier = Callable[[pathlib.Path], None]


def tree(root: pathlib.Path) -> dict[str, tuple[str, int, bytes]]:
    """Path -> (kind, mode, content) of everything below ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = pathlib.Path(dirpath, name)
            st = path.lstat()
            kind = "dir" if path.is_dir() and not path.is_symlink() else "link" if path.is_symlink() else "file"
            content = os.readlink(path).encode() if kind == "link" else path.read_bytes() if kind == "file" else b""
            out[str(path.relative_to(root))] = (kind, st.st_mode & 0o7777, content)
    return out


def create_file(rel: str, data: bytes, mode: int = 0o644) -> Applier:
    def apply(root: pathlib.Path) -> None:
        path = root / rel
        path.write_bytes(data)
        os.chmod(path, mode)
    return apply


def create_dir(rel: str, mode: int = 0o755) -> Applier:
    def apply(root: pathlib.Path) -> None:
        (root / rel).mkdir()
        os.chmod(root / rel, mode)
    return apply


def remove_all(rel: str) -> Applier:
    def apply(root: pathlib.Path) -> None:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    return apply


def link(old: str, new: str) -> Applier:
    return lambda root: os.link(root / old, root / new)


def apply_all(*appliers: Applier) -> Applier:
    def apply(root: pathlib.Path) -> None:
        for a in appliers:
            a(root)
    return apply


def check_snapshots(client: Client, work: pathlib.Path, *layers: Applier) -> None:
    """containerd's checkSnapshots: each layer applied in a fresh snapshot of the previous
    commit must look exactly like the layers applied one after another to a plain directory."""
    flat = work / "flat"
    flat.mkdir()
    parent = ""
    for i, layer in enumerate(layers):
        key, name = f"layer-{i}-active", f"layer-{i}"
        with mounted(client.prepare(key, parent, GC_ROOT), str(work / f"m{i}")) as root:
            layer(pathlib.Path(root))
        layer(flat)
        client.commit(name, key, GC_ROOT)
        with mounted(client.view(f"{name}-view", name, GC_ROOT), str(work / f"v{i}")) as view:
            assert tree(pathlib.Path(view)) == tree(flat), f"layer {i}"
        client.remove(f"{name}-view")
        parent = name


# ---------------------------------------------------------------------- containerd's cases


def test_basic_workflow(client: Client, work: pathlib.Path) -> None:
    initial = apply_all(create_file("foo", b"foo\n", 0o777), create_dir("a"), create_dir("a/b"), create_dir("a/b/c"))
    change = apply_all(create_file("bar", b"bar\n", 0o777), create_file("foo", b"bar\n", 0o777), remove_all("a/b"))
    expected_first, expected_both = work / "x1", work / "x2"
    expected_first.mkdir()
    initial(expected_first)
    expected_both.mkdir()
    initial(expected_both)
    change(expected_both)

    mounts = client.prepare("preparing", "", GC_ROOT)
    assert len(mounts) >= 1
    with mounted(mounts, str(work / "preparing")) as root:
        initial(pathlib.Path(root))
    client.commit("committed", "preparing", GC_ROOT)
    info = client.stat("committed")
    assert (info.parent, KIND_NAMES[info.kind]) == ("", "committed")
    assert code_of(client.stat, "preparing") == NOT_FOUND

    with mounted(client.prepare("next", "committed", GC_ROOT), str(work / "next")) as root:
        assert tree(pathlib.Path(root)) == tree(expected_first)
        change(pathlib.Path(root))
    info = client.stat("next")
    assert (info.parent, KIND_NAMES[info.kind]) == ("committed", "active")
    client.commit("committed-next", "next", GC_ROOT)
    second = client.stat("committed-next")
    assert (second.parent, KIND_NAMES[second.kind]) == ("committed", "committed")
    assert code_of(client.stat, "next") == NOT_FOUND

    walked = {i.name: i for i in client.walk()}
    assert walked == {"committed": client.stat("committed"), "committed-next": second}

    with mounted(client.view("nextnext", "committed-next", GC_ROOT), str(work / "nextnext")) as root:
        assert tree(pathlib.Path(root)) == tree(expected_both)
    client.remove("nextnext")

    with pytest.raises(grpc.RpcError) as refused:
        client.remove("committed")
    assert refused.value.code() == PRECONDITION and "remove" in (refused.value.details() or "")
    client.remove("committed-next")
    client.remove("committed")
    assert client.walk() == []


def test_stat_active_and_committed(client: Client, work: pathlib.Path) -> None:
    with mounted(client.prepare("preparing", "", GC_ROOT), str(work / "p")) as root:
        pathlib.Path(root, "foo").write_bytes(b"foo\n")
        info = client.stat("preparing")
        assert (info.name, KIND_NAMES[info.kind], info.parent) == ("preparing", "active", "")
    client.commit("committed", "preparing", GC_ROOT)
    info = client.stat("committed")
    assert (info.name, KIND_NAMES[info.kind], info.parent) == ("committed", "committed", "")


def test_transitivity(client: Client, work: pathlib.Path) -> None:
    with mounted(client.prepare("preparing", "", GC_ROOT), str(work / "p")) as root:
        pathlib.Path(root, "foo").write_bytes(b"foo\n")
    client.commit("snapA", "preparing", GC_ROOT)
    with mounted(client.prepare("next", "snapA", GC_ROOT), str(work / "n")) as root:
        pathlib.Path(root, "foo").write_bytes(b"foo bar\n")
    client.commit("snapB", "next", GC_ROOT)
    a, b = client.stat("snapA"), client.stat("snapB")
    assert (a.parent, b.parent, client.stat(b.parent).parent) == ("", "snapA", "")


def test_prepare_and_view_of_one_key_fail(client: Client) -> None:
    client.prepare("preparing", "", GC_ROOT)
    client.commit("snapA", "preparing", GC_ROOT)
    client.prepare("newlayer", "snapA", GC_ROOT)
    assert code_of(client.view, "newlayer", "snapA") == EXISTS
    client.prepare("prepLayer", "snapA", GC_ROOT)
    assert code_of(client.prepare, "prepLayer", "snapA") == EXISTS
    client.view("viewLayer", "snapA", GC_ROOT)
    assert code_of(client.view, "viewLayer", "snapA") == EXISTS


def _base_snapshots(client: Client) -> None:
    client.prepare("c1-a", "", GC_ROOT)
    client.commit("c1", "c1-a", GC_ROOT)
    client.prepare("c2-a", "c1", GC_ROOT)
    client.commit("c2", "c2-a", GC_ROOT)
    client.prepare("a1", "c2", GC_ROOT)
    client.prepare("a2", "", GC_ROOT)
    client.view("v1", "c2", GC_ROOT)
    client.view("v2", "", GC_ROOT)


def _ns(ts: object) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos  # type: ignore[attr-defined]


def test_update_labels_with_field_paths(client: Client) -> None:
    t1 = time.time_ns()
    _base_snapshots(client)
    t2 = time.time_ns()
    cases = [("c1", "committed", ""), ("c2", "committed", "c1"), ("a1", "active", "c2"),
             ("a2", "active", ""), ("v1", "view", "c2"), ("v2", "view", "")]
    for name, kind, parent in cases:
        st = client.stat(name)
        assert t1 <= _ns(st.created_at) <= t2 and st.created_at == st.updated_at, name
        assert (st.name, KIND_NAMES[st.kind], st.parent) == (name, kind, parent)

        root = {"containerd.io/gc.root": "now"}
        expected = {"l1": "v1", "l2": "v2", "l3": "v3", **root}
        st.parent = "doesnotexist"
        st.labels.clear()
        st.labels.update(expected)
        u1 = time.time_ns()
        st = client.update(st)
        u2 = time.time_ns()
        assert _ns(st.created_at) <= t2 and u1 <= _ns(st.updated_at) <= u2
        assert (st.name, KIND_NAMES[st.kind], st.parent) == (name, kind, parent)  # immutables kept
        assert dict(st.labels) == expected

        st.labels.clear()
        st.labels.update({"l1": "updated", "l4": "v4"})
        st = client.update(st, "labels.l1", "labels.l2")
        assert dict(st.labels) == {"l1": "updated", "l3": "v3", **root}

        st.labels.clear()
        st.labels.update({"l4": "v4", **root})
        st = client.update(st, "labels")
        assert dict(st.labels) == {"l4": "v4", **root}

        st.parent = "doesnotexist"
        assert code_of(client.update, st, "parent") == INVALID
        assert client.stat(name).parent == parent
    missing = client.stat("c1")
    missing.name = "nosuch"
    assert code_of(client.update, missing) == NOT_FOUND


def test_remove_then_reuse_keys(client: Client) -> None:
    client.prepare("committed-a", "", GC_ROOT)
    client.commit("committed-1", "committed-a", GC_ROOT)
    client.prepare("reuse-1", "committed-1", GC_ROOT)
    client.remove("reuse-1")
    client.view("reuse-1", "committed-1", GC_ROOT)
    client.remove("reuse-1")
    client.prepare("reuse-1", "", GC_ROOT)
    client.remove("committed-1")
    client.commit("committed-1", "reuse-1", GC_ROOT)
    assert KIND_NAMES[client.stat("committed-1").kind] == "committed"


def test_walk_filters(client: Client) -> None:
    gc = {"containerd.io/gc.root": "check-walk"}
    client.prepare("a-np", "", gc)
    client.prepare("p-tmp", "", gc)
    client.commit("p", "p-tmp", gc)
    client.prepare("a", "p", gc)
    client.view("v", "p", gc)
    client.prepare("p-wl-tmp", "", gc)
    client.commit("p-wl", "p-wl-tmp", {"l": "1", **gc})
    client.prepare("a-wl", "p-wl", {"l": "2", **gc})
    client.view("v-wl", "p-wl", {"l": "3", **gc})
    client.prepare("a-np-wl", "", {"l": "2", **gc})
    root = 'labels."containerd.io/gc.root"==check-walk'
    cases = [
        ([root], ["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"]),
        ([f"kind==active,{root}"], ["a-np", "a", "a-wl", "a-np-wl"]),
        ([f"kind==view,{root}"], ["v", "v-wl"]),
        ([f"kind==committed,{root}"], ["p", "p-wl"]),
        (["name==p", "name==a-np-wl"], ["p", "a-np-wl"]),
        (["name==a-wl,labels.l"], ["a-wl"]),
        (["parent==p"], ["a", "v"]),
        ([f'parent!="",{root}'], ["a", "v", "a-wl", "v-wl"]),
        (["labels.l"], ["p-wl", "a-wl", "v-wl", "a-np-wl"]),
        (["labels.l==2"], ["a-wl", "a-np-wl"]),
        (["labels.l~=^[23]$"], ["a-wl", "v-wl", "a-np-wl"]),
    ]
    for filters, expected in cases:
        assert sorted(i.name for i in client.walk(*filters)) == sorted(expected), filters
    assert code_of(client.walk, "labels.l~=(") == INVALID
    assert code_of(client.walk, "name==a,") == INVALID


def test_remove_intermediate_snapshot_fails(client: Client) -> None:
    client.prepare("base", "", GC_ROOT)
    client.commit("committed-base", "base", GC_ROOT)
    client.prepare("intermediate", "committed-base", GC_ROOT)
    client.commit("committed-inter", "intermediate", GC_ROOT)
    client.prepare("toplayer", "committed-inter", GC_ROOT)
    assert code_of(client.remove, "committed-inter") == PRECONDITION
    client.remove("toplayer")
    client.remove("committed-inter")
    client.remove("committed-base")


def test_deleted_files_in_child_snapshot(client: Client, work: pathlib.Path) -> None:
    check_snapshots(client, work,
                    apply_all(create_file("foo", b"foo\n", 0o777), create_file("foobar", b"foobar\n", 0o777)),
                    remove_all("foobar"),
                    apply_all())


def test_move_file_from_lower_layer(client: Client, work: pathlib.Path) -> None:
    check_snapshots(client, work,
                    apply_all(create_dir("dir1", 0o700), create_file("dir1/f1", b"Hello"),
                              create_dir("dir2", 0o700), create_file("dir2/f2", b"...")),
                    apply_all(create_dir("dir3", 0o700), create_file("dir3/f1", b"Hello"), remove_all("dir1"),
                              link("dir2/f2", "dir3/f2"), remove_all("dir2/f2")))


def test_layer_file_update_and_directory_in_lower_layer(client: Client, work: pathlib.Path) -> None:
    check_snapshots(client, work,
                    apply_all(create_dir("lib"), create_file("lib/a", b"1"), create_dir("lib/sub"),
                              create_file("lib/sub/b", b"2"), create_file("etc", b"not a dir")),
                    apply_all(create_file("lib/a", b"changed"), remove_all("lib/sub"), remove_all("etc"),
                              create_dir("etc")),
                    apply_all(create_dir("lib/sub"), create_file("lib/sub/c", b"3")))


def test_view_is_read_only(client: Client, work: pathlib.Path) -> None:
    client.prepare("preparing", "", GC_ROOT)
    client.commit("committed", "preparing", GC_ROOT)
    with mounted(client.view("view", "committed", GC_ROOT), str(work / "view")) as root:
        with pytest.raises(OSError) as refused:
            pathlib.Path(root, "testfile").write_bytes(b"testcontent")
        assert refused.value.errno == errno.EROFS
    client.remove("view")
    client.remove("committed")


def test_view_without_parent_is_an_empty_read_only_root(client: Client, work: pathlib.Path) -> None:
    with mounted(client.view("empty-view", "", GC_ROOT), str(work / "ev")) as root:
        assert os.listdir(root) == []
        with pytest.raises(OSError) as refused:
            pathlib.Path(root, "x").write_text("x")
        assert refused.value.errno == errno.EROFS


def test_root_of_a_new_snapshot_is_0755(client: Client, work: pathlib.Path) -> None:
    with mounted(client.prepare("preparing", "", GC_ROOT), str(work / "p")) as root:
        assert os.stat(root).st_mode & 0o777 == 0o755


def test_128_layers_mount(client: Client, work: pathlib.Path) -> None:
    """containerd's check128LayersMount: 128 layers, each overwriting, adding and replacing."""
    flat = work / "flat"
    flat.mkdir()
    layers = [apply_all(create_file("bottom", b"way at the bottom\n", 0o777),
                        create_file("overwriteme", b"FIRST!\n", 0o777),
                        create_dir("addhere"), create_dir("onlyme"),
                        create_file("onlyme/bottom", b"bye!\n", 0o777))]
    for i in range(1, 128):
        layers.append(apply_all(create_file("overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
                                create_file(f"addhere/file-{i}", b"same\n", 0o755),
                                remove_all("onlyme"), create_dir("onlyme"),
                                create_file(f"onlyme/file-{i}", b"only me!\n", 0o777)))
    parent = ""
    for i, layer in enumerate(layers):
        with mounted(client.prepare(f"prepare-layer-{i}", parent, GC_ROOT), str(work / "m")) as root:
            assert tree(pathlib.Path(root)) == tree(flat), f"layer {i} before"
            layer(flat)
            layer(pathlib.Path(root))
            assert tree(pathlib.Path(root)) == tree(flat), f"layer {i} after"
        parent = f"committed-{i}"
        client.commit(parent, f"prepare-layer-{i}", GC_ROOT)
    with mounted(client.view("fullview", parent, GC_ROOT), str(work / "view")) as root:
        assert tree(pathlib.Path(root)) == tree(flat)


# ---------------------------------------------------------------------- beyond the Go suite


def test_mounts_returns_the_prepared_mounts_and_refuses_committed(client: Client) -> None:
    first = client.prepare("a", "", GC_ROOT)
    assert client.mounts("a") == first
    assert first[0].type == "overlay" and any(o.startswith("upperdir=") for o in first[0].options)
    client.commit("c", "a", GC_ROOT)
    view = client.view("v", "c", GC_ROOT)
    assert not any(o.startswith(("upperdir=", "workdir=")) for o in view[0].options)  # read-only
    assert client.mounts("v") == view
    assert code_of(client.mounts, "c") == PRECONDITION
    assert code_of(client.mounts, "nosuch") == NOT_FOUND


def test_errors_for_missing_and_wrong_kinds(client: Client) -> None:
    client.prepare("active", "", GC_ROOT)
    client.view("view", "", GC_ROOT)
    assert code_of(client.prepare, "x", "nosuch") == NOT_FOUND
    assert code_of(client.prepare, "x", "active") == INVALID  # parent must be committed
    assert code_of(client.view, "x", "view") == INVALID
    assert code_of(client.commit, "c", "view") == PRECONDITION
    assert code_of(client.commit, "c", "nosuch") == NOT_FOUND
    client.prepare("other", "", GC_ROOT)
    client.commit("c", "other", GC_ROOT)
    assert code_of(client.commit, "c", "active") == EXISTS
    assert KIND_NAMES[client.stat("active").kind] == "active"  # the refused commit changed nothing
    assert code_of(client.commit, "c2", "c") == PRECONDITION
    for call in (client.remove, client.stat, client.usage, client.mounts):
        assert code_of(call, "nosuch") == NOT_FOUND
    assert sorted(i.name for i in client.walk()) == ["active", "c", "view"]


def test_bad_keys_and_labels_change_nothing(client: Client, overlay_driver: Driver) -> None:
    client.prepare("base-a", "", GC_ROOT)
    client.commit("base", "base-a", GC_ROOT)
    layers_before = sorted(overlay_driver.layers())
    for key in ("", "a\0b", "k" * 5000):
        assert code_of(client.prepare, key, "") == INVALID, key[:10]
        assert code_of(client.view, key, "base") == INVALID
        assert code_of(client.stat, key) == INVALID
    assert code_of(client.prepare, "x", "base\0") == INVALID
    assert code_of(client.prepare, "x", "base", {"k": "v" * 5000}) == INVALID
    huge = {f"label-{i}": "v" * 1000 for i in range(100)}
    assert code_of(client.prepare, "x", "base", huge) == INVALID
    assert code_of(client.commit, "c", "base-a", huge) == INVALID
    st = client.stat("base")
    st.labels.update(huge)
    assert code_of(client.update, st) == INVALID
    assert dict(client.stat("base").labels) == GC_ROOT
    assert sorted(overlay_driver.layers()) == layers_before
    assert [i.name for i in client.walk()] == ["base"]


def test_keys_with_slashes_dots_and_spaces_are_just_names(client: Client, overlay_driver: Driver) -> None:
    key = "default/4/extract-12345 sha256:../../etc"
    client.prepare(key, "", GC_ROOT)
    client.commit("default/5/sha256:abc", key, GC_ROOT)
    assert client.stat("default/5/sha256:abc").name == "default/5/sha256:abc"
    assert all(i.startswith("ctd-") for i in overlay_driver.layers())


def test_racing_prepares_of_one_key_exactly_one_wins(client: Client, overlay_driver: Driver) -> None:
    outcomes: list[object] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        try:
            client.prepare("contended", "", GC_ROOT)
            outcomes.append("ok")
        except grpc.RpcError as exc:
            outcomes.append(exc.code())

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, outcomes)) == sorted(["ok"] + [str(EXISTS)] * 7)
    assert len(overlay_driver.layers()) == 1


def test_usage_counts_the_snapshot_s_own_layer(client: Client, work: pathlib.Path) -> None:
    with mounted(client.prepare("base-a", "", GC_ROOT), str(work / "b")) as root:
        pathlib.Path(root, "big").write_bytes(b"x" * 1_000_000)
    client.commit("base", "base-a", GC_ROOT)
    with mounted(client.prepare("top", "base", GC_ROOT), str(work / "t")) as root:
        for i in range(10):
            pathlib.Path(root, f"f{i}").write_bytes(b"y" * 10_000)
    size, inodes = client.usage("top")
    assert inodes == 11  # the root and ten files; nothing of the parent
    assert 100_000 <= size < 1_000_000
    base_size, base_inodes = client.usage("base")
    assert base_size >= 1_000_000 and base_inodes == 2


def test_list_streams_in_batches_and_survives_a_client_that_leaves(client: Client, server: ContainerdServer) -> None:
    for i in range(250):
        client.view(f"view-{i:03d}", "", GC_ROOT)
    from aufs.serve._proto import snapshots_pb2

    call = client.stub.List(snapshots_pb2.ListSnapshotsRequest())
    first = next(call)
    assert len(first.info) == 100
    call.cancel()  # the client goes away in the middle of the stream
    with pytest.raises(grpc.RpcError) as gone:
        list(call)
    assert gone.value.code() == grpc.StatusCode.CANCELLED
    # the server holds no lock for the abandoned stream: everything still works
    client.prepare("after", "", GC_ROOT)
    assert len(client.walk()) == 251


def test_cleanup_removes_layers_no_snapshot_names(client: Client, overlay_driver: Driver) -> None:
    client.prepare("kept", "", GC_ROOT)
    overlay_driver.create("ctd-0123456789-abc999")  # as a crash between create and save leaves it
    overlay_driver.create("users-own-layer")
    client.cleanup()
    assert sorted(overlay_driver.layers()) == sorted([client_layer(overlay_driver), "users-own-layer"])


def client_layer(driver: Driver) -> str:
    (only,) = [i for i in driver.layers() if i.startswith("ctd-") and not i.endswith("-abc999")]
    return only


def test_chains_deeper_than_containerd_mounts_are_refused_unchanged(client: Client, overlay_driver: Driver,
                                                                      work: pathlib.Path) -> None:
    parent = ""
    depth = 0
    while True:
        key = f"deep-{depth}-active"
        try:
            client.prepare(key, parent, GC_ROOT)
        except grpc.RpcError as exc:
            assert exc.code() == PRECONDITION and "deeper than containerd can mount" in (exc.details() or "")
            break
        client.commit(f"deep-{depth}", key, GC_ROOT)
        parent = f"deep-{depth}"
        depth += 1
        assert depth < 300, "no limit met: containerd's mount(2) cannot take this"
    assert depth >= 170  # containerd's own suite mounts 128; short links give ~180
    layers = sorted(overlay_driver.layers())
    assert len(layers) == depth and code_of(client.stat, key) == NOT_FOUND
    assert sorted(overlay_driver.layers()) == layers
    # the deepest accepted chain mounts the way containerd mounts it
    client.remove(f"deep-{depth - 1}")
    with mounted(client.prepare("deepest", f"deep-{depth - 2}", GC_ROOT), str(work / "deepest")) as root:
        pathlib.Path(root, "top").write_text("ok")


def test_list_of_label_heavy_snapshots_fits_default_message_limits(client: Client) -> None:
    heavy = {f"l{i:02d}": "v" * 4000 for i in range(16)}  # ~64 KiB of labels each
    for i in range(100):
        client.view(f"heavy-{i:03d}", "", heavy)
    from aufs.serve._proto import snapshots_pb2

    responses = list(client.stub.List(snapshots_pb2.ListSnapshotsRequest()))
    assert sum(len(r.info) for r in responses) == 100 and len(responses) >= 6
    assert all(r.ByteSize() < 4 << 20 for r in responses)
