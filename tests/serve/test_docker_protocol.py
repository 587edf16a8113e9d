"""Every endpoint of ``aufs serve docker``, spoken over its unix socket as dockerd speaks it.

The server runs in a thread of the test (``DockerPluginServer``) on a store on tmpfs, or as the
real ``aufs serve docker`` process where signals, restarts and kills matter. Each refusal is
checked for its ``Err`` answer *and* for leaving the store as it was.
"""
from __future__ import annotations

import io
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator

import pytest

import aufs
from aufs.mounts import mounted
from aufs.serve.docker import (
    DEFAULT_NAME,
    BadRequest,
    DockerPluginServer,
    SocketRefused,
    holder_name,
)

from ..users import User
from .docker_client import MEDIA_TYPE, PluginClient

HOLDER = holder_name("test")


def make_tar(files: dict[str, bytes], *, dirs: tuple[str, ...] = (), whiteouts: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name in whiteouts:
            head, _, base = name.rpartition("/")
            info = tarfile.TarInfo(f"{head}/.wh.{base}" if head else f".wh.{base}")
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


def chunks(data: bytes, size: int = 7777) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.fixture
def store(ramdir: pathlib.Path) -> Iterator[aufs.Driver]:
    driver = aufs.Driver(ramdir / "store", holder=HOLDER)
    try:
        yield driver
    finally:
        driver.cleanup()


@pytest.fixture
def server(store: aufs.Driver, ramdir: pathlib.Path) -> Iterator[DockerPluginServer]:
    srv = DockerPluginServer(store, ramdir / "test.sock")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        thread.join()
        srv.close()


@pytest.fixture
def client(server: DockerPluginServer) -> Iterator[PluginClient]:
    c = PluginClient(server.socket_path)
    try:
        yield c
    finally:
        c.close()


def snapshot(driver: aufs.Driver) -> dict[str, object]:
    """The store as a user sees it: layers, parents, files, mounts."""
    out: dict[str, object] = {}
    for layer_id in driver.layers():
        files = sorted(str(p.relative_to(driver.diff_dir(layer_id)))
                       for p in pathlib.Path(driver.diff_dir(layer_id)).rglob("*"))
        out[layer_id] = (driver.parent(layer_id), files, driver.is_mounted(layer_id))
    return out


# ---------------------------------------------------------------------------- handshake


def test_activate_says_graph_driver_in_the_plugin_media_type(client: PluginClient) -> None:
    status, headers, body = client.raw("POST", "/Plugin.Activate", b"")
    assert status == 200
    assert headers["content-type"] == MEDIA_TYPE
    assert __import__("json").loads(body) == {"Implements": ["GraphDriver"]}


def test_init_accepts_dockerd_request_and_refuses_options(client: PluginClient, store: aufs.Driver) -> None:
    assert client.ok("GraphDriver.Init", {"Home": "/var/lib/docker/aufs-store", "Opts": [],
                                          "UIDMaps": None, "GIDMaps": None}) == {}
    assert "size=10G" in client.err("GraphDriver.Init", {"Home": "/x", "Opts": ["size=10G"]})
    assert "remapping" in client.err("GraphDriver.Init", {"Home": "/x", "UIDMaps": [
        {"ContainerID": 0, "HostID": 100000, "Size": 65536}]})
    assert store.layers() == []


def test_capabilities_do_not_claim_exact_diffs(client: PluginClient) -> None:
    # dockerd reads the nested object; false keeps its tar-split data (Diff is not byte-exact)
    assert client.ok("GraphDriver.Capabilities", {}) == {"Capabilities": {"ReproducesExactDiffs": False}}


def test_diff_is_not_byte_identical_to_what_was_applied(client: PluginClient) -> None:
    # the reason Capabilities says false: a tar in another order comes back sorted, in pax
    applied = make_tar({"z": b"last", "a": b"first"})
    client.ok("GraphDriver.Create", {"ID": "l1"})
    assert client.apply_diff("l1", "", [applied])[0] == 200
    status, tar = client.diff("l1")
    assert status == 200 and tar != applied


# ---------------------------------------------------------------------------- lifecycle


def test_create_exists_remove(client: PluginClient, store: aufs.Driver) -> None:
    assert client.ok("GraphDriver.Exists", {"ID": "base"}) == {"Exists": False}
    client.ok("GraphDriver.Create", {"ID": "base", "Parent": "", "MountLabel": ""})
    client.ok("GraphDriver.CreateReadWrite", {"ID": "rw-init", "Parent": "base", "StorageOpt": {}})
    assert client.ok("GraphDriver.Exists", {"ID": "rw-init"}) == {"Exists": True}
    assert store.parent("rw-init") == "base"
    assert "already exists" in client.err("GraphDriver.Create", {"ID": "base"})
    assert "parent" in client.err("GraphDriver.Remove", {"ID": "base"})  # children first
    client.ok("GraphDriver.Remove", {"ID": "rw-init"})
    client.ok("GraphDriver.Remove", {"ID": "rw-init"})  # gone already: still fine, as Docker's drivers
    client.ok("GraphDriver.Remove", {"ID": "base"})
    assert store.layers() == []


def test_remove_gives_back_dockerd_references_but_not_others(client: PluginClient, store: aufs.Driver,
                                                               ramdir: pathlib.Path) -> None:
    client.ok("GraphDriver.Create", {"ID": "stale"})
    root = client.ok("GraphDriver.Get", {"ID": "stale"})["Dir"]  # a Get dockerd never Put (it died)
    client.ok("GraphDriver.Remove", {"ID": "stale"})
    assert not store.exists("stale") and not mounted(root)
    client.ok("GraphDriver.Create", {"ID": "shared"})
    other = aufs.Driver(ramdir / "store")  # another user of the store has it mounted
    with other.mount("shared") as theirs:
        assert "held by" in client.err("GraphDriver.Remove", {"ID": "shared"})
        assert store.exists("shared") and mounted(theirs)
    client.ok("GraphDriver.Remove", {"ID": "shared"})
    assert store.layers() == []


def test_dockerd_ids_are_store_ids(client: PluginClient, store: aufs.Driver) -> None:
    cache_id = "4f2a" * 16  # dockerd's cache ids: 64 hex digits; init layers add "-init"
    client.ok("GraphDriver.Create", {"ID": cache_id})
    client.ok("GraphDriver.CreateReadWrite", {"ID": "9c1e" * 16 + "-init", "Parent": cache_id})
    client.ok("GraphDriver.CreateReadWrite", {"ID": "9c1e" * 16, "Parent": "9c1e" * 16 + "-init"})
    assert store.layers() == sorted([cache_id, "9c1e" * 16 + "-init", "9c1e" * 16])


@pytest.mark.parametrize("bad", ["a/b", "..", "a..b", "../etc", "a\x00b", "", ".hidden", "/abs", 7, None, "x" * 129])
def test_bad_ids_are_refused_and_change_nothing(client: PluginClient, store: aufs.Driver, bad: object) -> None:
    client.ok("GraphDriver.Create", {"ID": "base"})
    before = snapshot(store)
    for endpoint in ("GraphDriver.Create", "GraphDriver.CreateReadWrite", "GraphDriver.Get",
                     "GraphDriver.Put", "GraphDriver.Remove", "GraphDriver.GetMetadata",
                     "GraphDriver.Changes", "GraphDriver.DiffSize", "GraphDriver.Exists"):
        status, answer = client.call(endpoint, {"ID": bad})
        assert status == 400 and answer["Err"], (endpoint, answer)
    assert client.call("GraphDriver.Create", {"ID": "child", "Parent": bad})[0] == (200 if bad in ("", None) else 400)
    if bad not in ("", None):
        assert not store.exists("child")
        assert snapshot(store) == before


def test_missing_parent_is_refused_and_creates_nothing(client: PluginClient, store: aufs.Driver) -> None:
    assert "does not exist" in client.err("GraphDriver.Create", {"ID": "child", "Parent": "nope"})
    assert store.layers() == []


def test_mount_label_and_storage_opt_are_refused(client: PluginClient, store: aufs.Driver) -> None:
    assert "SELinux" in client.err("GraphDriver.Create", {"ID": "a", "MountLabel": "system_u:object_r:container_file_t:s0"})
    assert "size" in client.err("GraphDriver.CreateReadWrite", {"ID": "a", "StorageOpt": {"size": "10G"}})
    assert store.layers() == []
    client.ok("GraphDriver.Create", {"ID": "a"})
    assert "SELinux" in client.err("GraphDriver.Get", {"ID": "a", "MountLabel": "system_u:object_r:x:s0"})
    assert not store.is_mounted("a")


def test_get_mounts_the_chain_and_put_unmounts_on_the_last_reference(client: PluginClient, store: aufs.Driver) -> None:
    client.ok("GraphDriver.Create", {"ID": "base"})
    assert client.apply_diff("base", "", chunks(make_tar({"etc/motd": b"hello\n"}, dirs=("etc",))))[0] == 200
    client.ok("GraphDriver.CreateReadWrite", {"ID": "rw", "Parent": "base"})
    root = client.ok("GraphDriver.Get", {"ID": "rw", "MountLabel": ""})["Dir"]
    assert mounted(root)
    assert pathlib.Path(root, "etc/motd").read_bytes() == b"hello\n"
    assert client.ok("GraphDriver.Get", {"ID": "rw"})["Dir"] == root  # dockerd counts too
    client.ok("GraphDriver.Put", {"ID": "rw"})
    assert mounted(root)
    client.ok("GraphDriver.Put", {"ID": "rw"})
    assert not mounted(root)
    assert "no layer" in client.err("GraphDriver.Get", {"ID": "missing"})
    assert "no layer" in client.err("GraphDriver.Put", {"ID": "missing"})


def test_status_and_metadata(client: PluginClient, store: aufs.Driver) -> None:
    status = dict(map(tuple, client.ok("GraphDriver.Status", {})["Status"]))
    assert status["Plugin"] == "test" and status["Backend"] == store.backend
    client.ok("GraphDriver.Create", {"ID": "base"})
    client.ok("GraphDriver.Create", {"ID": "top", "Parent": "base"})
    meta = client.ok("GraphDriver.GetMetadata", {"ID": "top"})["Metadata"]
    assert meta["DiffDir"] == store.diff_dir("top") and os.path.isdir(meta["DiffDir"])
    assert meta["Parent"] == "base"
    assert "no layer" in client.err("GraphDriver.GetMetadata", {"ID": "gone"})


def test_cleanup_gives_back_dockerd_references_only(client: PluginClient, store: aufs.Driver,
                                                    ramdir: pathlib.Path) -> None:
    for layer_id in ("base", "ours", "shared"):
        client.ok("GraphDriver.Create", {"ID": layer_id, "Parent": "base" if layer_id != "base" else ""})
    ours = client.ok("GraphDriver.Get", {"ID": "ours"})["Dir"]
    client.ok("GraphDriver.Get", {"ID": "ours"})
    shared = client.ok("GraphDriver.Get", {"ID": "shared"})["Dir"]
    other = aufs.Driver(ramdir / "store")  # another user of the same store
    with other.mount("shared"), other.mount("base") as theirs:
        client.ok("GraphDriver.Cleanup", {})
        assert not mounted(ours)
        assert mounted(shared) and mounted(theirs)
    assert not mounted(shared)  # the other holder's put was the last reference


# ---------------------------------------------------------------------------- diffs


def test_apply_changes_diff_and_size(client: PluginClient, store: aufs.Driver) -> None:
    client.ok("GraphDriver.Create", {"ID": "base"})
    size = client.apply_diff("base", "", chunks(make_tar(
        {"etc/keep": b"k" * 1000, "etc/gone": b"g", "bin/tool": b"\x7fELF" + b"x" * 5000}, dirs=("etc", "bin")), 333))
    assert size == (200, {"Size": 6005})
    assert pathlib.Path(store.diff_dir("base"), "bin/tool").stat().st_size == 5004
    client.ok("GraphDriver.CreateReadWrite", {"ID": "rw", "Parent": "base"})
    root = client.ok("GraphDriver.Get", {"ID": "rw"})["Dir"]
    pathlib.Path(root, "etc/new").write_bytes(b"new!")
    os.unlink(pathlib.Path(root, "etc/gone"))
    # docker diff / commit run on a mounted container layer
    changes = client.ok("GraphDriver.Changes", {"ID": "rw", "Parent": "base"})["Changes"]
    assert sorted((c["Path"], c["Kind"]) for c in changes) == [("/etc", 0), ("/etc/gone", 2), ("/etc/new", 1)]
    assert client.ok("GraphDriver.DiffSize", {"ID": "rw", "Parent": "base"}) == {"Size": 4}
    status, tar = client.diff("rw", "base")
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        names = {m.name.rstrip("/"): m for m in t.getmembers()}
        assert set(names) == {"etc", "etc/new", "etc/.wh.gone"}
        assert t.extractfile(names["etc/new"]).read() == b"new!"  # type: ignore[union-attr]
    client.ok("GraphDriver.Put", {"ID": "rw"})


def test_diffs_against_another_parent_are_refused(client: PluginClient) -> None:
    client.ok("GraphDriver.Create", {"ID": "a"})
    client.ok("GraphDriver.Create", {"ID": "b", "Parent": "a"})
    for endpoint in ("GraphDriver.Changes", "GraphDriver.DiffSize"):
        assert "parent" in client.err(endpoint, {"ID": "b", "Parent": ""})
        assert "parent" in client.err(endpoint, {"ID": "b", "Parent": "b"})
    status, body = client.diff("b", "")
    assert status == 400 and b"parent" in body
    assert client.diff("missing")[0] == 404


def test_apply_with_content_length_body(client: PluginClient, store: aufs.Driver) -> None:
    client.ok("GraphDriver.Create", {"ID": "base"})
    status, _, body = client.raw("POST", "/GraphDriver.ApplyDiff?id=base&parent=", make_tar({"f": b"12345"}))
    assert status == 200 and b'"Size": 5' in body
    assert pathlib.Path(store.diff_dir("base"), "f").read_bytes() == b"12345"


def test_apply_refusals_change_nothing_and_keep_the_connection(client: PluginClient, store: aufs.Driver) -> None:
    client.ok("GraphDriver.Create", {"ID": "base"})
    client.apply_diff("base", "", [make_tar({"old": b"old"})])
    client.ok("GraphDriver.Create", {"ID": "top", "Parent": "base"})
    before = snapshot(store)
    good = make_tar({"new": b"n" * 20000})
    cases = [
        ("top", "base", [b"this is not a tar archive at all" * 100]),
        ("top", "base", list(chunks(good[:10240]))),          # truncated tar, complete HTTP body
        ("top", "", list(chunks(good))),                      # not its parent
        ("top", "missing", list(chunks(good))),               # parent does not exist
        ("nope", "", list(chunks(good))),                     # layer does not exist
        ("../top", "base", list(chunks(good))),
    ]
    for layer_id, parent, body in cases:
        status, answer = client.apply_diff(layer_id, parent, body)  # the same connection each time
        assert status != 200 and answer["Err"], (layer_id, parent, answer)
        assert snapshot(store) == before
    assert client.apply_diff("top", "base", chunks(good)) == (200, {"Size": 20000})


def test_apply_from_a_client_that_hangs_up_changes_nothing(server: DockerPluginServer, store: aufs.Driver) -> None:
    client = PluginClient(server.socket_path)
    client.ok("GraphDriver.Create", {"ID": "base"})
    before = snapshot(store)
    data = make_tar({"big": os.urandom(1 << 20)})
    closed = server.connections_done
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(server.socket_path)
    sock.sendall(b"POST /GraphDriver.ApplyDiff?id=base&parent= HTTP/1.1\r\nHost: x\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    half = data[: len(data) // 2]
    sock.sendall(b"%x\r\n%s\r\n" % (len(half), half))
    sock.close()  # mid-stream
    # done with this connection, however late the server accepted it (no race with accept)
    assert server.wait_connections(closed + 1, 30)
    assert server.wait_idle(0)
    assert snapshot(store) == before
    assert not os.listdir(pathlib.Path(store.home, "tmp"))  # no staging debris
    assert client.ok("GraphDriver.Exists", {"ID": "base"}) == {"Exists": True}  # still serving
    client.close()


# ---------------------------------------------------------------------------- HTTP refusals


def test_malformed_json_unknown_endpoints_and_methods(client: PluginClient, store: aufs.Driver) -> None:
    status, _, body = client.raw("POST", "/GraphDriver.Create", b'{"ID": "a", ', {"Content-Type": "application/json"})
    assert status == 400 and b"malformed JSON" in body
    status, _, body = client.raw("POST", "/GraphDriver.Create", b'["a"]')
    assert status == 400 and b"JSON object" in body
    status, answer = client.call("GraphDriver.Frobnicate", {"ID": "a"})
    assert status == 404 and "unknown endpoint" in answer["Err"]
    status, answer = client.call("VolumeDriver.Create", {"Name": "a"})
    assert status == 404
    status, _, body = client.raw("POST", "/NetworkDriver.Join", b"{not json")  # unknown first
    assert status == 404 and b"unknown endpoint" in body
    client.close()
    huge = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    huge.settimeout(30)
    huge.connect(client.path)
    try:  # the server stops reading past its limit and hangs up
        huge.sendall(b"POST /GraphDriver.Create HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (4 << 20) + b"[" * (4 << 20))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert huge.recv(65536).startswith(b"HTTP/1.1 400")
    huge.close()
    assert store.layers() == []
    fresh = PluginClient(client.path)
    status, _, body = fresh.raw("GET", "/GraphDriver.Status")
    assert status == 405 and b"POST" in body
    fresh.close()
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.connect(client.path)
    bad.sendall(b"NONSENSE\r\n\r\n")
    reply = b""
    while True:  # the server answers, then closes: read to the end
        more = bad.recv(4096)
        if not more:
            break
        reply += more
    bad.close()
    assert reply.startswith(b"HTTP/1.1 400") and b'"Err"' in reply


# ---------------------------------------------------------------------------- the socket


def test_socket_is_private(server: DockerPluginServer) -> None:
    st = os.lstat(server.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()


def test_socket_path_of_another_user_is_refused(store: aufs.Driver, ramdir: pathlib.Path) -> None:
    path = ramdir / "theirs.sock"
    path.write_bytes(b"")
    os.chown(path, 65534, 65534)
    with pytest.raises(SocketRefused, match="uid 65534"):
        DockerPluginServer(store, path)
    assert path.exists() and os.lstat(path).st_uid == 65534
    shared = ramdir / "shared"
    shared.mkdir()
    os.chown(shared, 65534, 65534)
    with pytest.raises(SocketRefused, match="belongs to uid 65534"):
        DockerPluginServer(store, shared / "p.sock")
    open_dir = ramdir / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(PermissionError, match="other users"):
        DockerPluginServer(store, open_dir / "p.sock")


def test_other_users_can_neither_use_nor_squat_the_socket(server: DockerPluginServer, store: aufs.Driver,
                                                          ramdir: pathlib.Path, other_user: User) -> None:
    connect = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    denied = other_user.python(connect, server.socket_path)
    assert denied.returncode != 0 and b"PermissionError" in denied.stderr
    sticky = ramdir / "sticky"  # a directory like /tmp, where anyone may create names
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    squatted = sticky / "p.sock"
    made = other_user.python("import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", str(squatted))
    assert made.returncode == 0, made.stderr
    with pytest.raises(SocketRefused, match=f"uid {other_user.uid}"):
        DockerPluginServer(store, squatted)
    assert os.lstat(squatted).st_uid == other_user.uid


def test_live_socket_is_refused_stale_one_replaced(server: DockerPluginServer, store: aufs.Driver,
                                                   ramdir: pathlib.Path) -> None:
    with pytest.raises(SocketRefused, match="another server"):
        DockerPluginServer(store, server.socket_path)
    stale = ramdir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on: a killed server's
    with DockerPluginServer(store, stale) as srv:
        assert stat.S_IMODE(os.lstat(srv.socket_path).st_mode) == 0o600
    assert not stale.exists()


@pytest.mark.parametrize("name,why", [(n, "built-in") for n in ("overlay2", "aufs", "vfs", "overlay", "fuse-overlayfs",
                                                                 "devicemapper")]
                         + [(n, "characters") for n in (".hidden", "x" * 58, "a b")])
def test_builtin_and_malformed_names_are_refused(store: aufs.Driver, ramdir: pathlib.Path, name: str, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        DockerPluginServer(store, ramdir / f"{name}.sock")
    assert not (ramdir / f"{name}.sock").exists()


# ---------------------------------------------------------------------------- the process


def _start(home: pathlib.Path, sock: pathlib.Path, name: str = "proto-test") -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "aufs", "--home", str(home), "serve", "docker",
                             "--name", name, "--socket", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:  # the path may hold a killed server's stale socket: wait until one answers
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(sock))
            return proc
        except OSError:
            pass
        finally:
            probe.close()
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not start: {proc.communicate()}")
        time.sleep(0.05)


def test_cli_default_name_and_refusals(ramdir: pathlib.Path) -> None:
    assert DEFAULT_NAME == "aufs-store"
    run = subprocess.run([sys.executable, "-m", "aufs", "--home", str(ramdir / "s"), "serve", "docker",
                          "--name", "overlay2", "--socket", str(ramdir / "x.sock")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2 and "built-in" in run.stderr
    assert not (ramdir / "x.sock").exists()


def test_sigterm_exits_zero_and_removes_the_socket_mounts_stay(ramdir: pathlib.Path) -> None:
    home, sock = ramdir / "store", ramdir / "p.sock"
    proc = _start(home, sock)
    try:
        client = PluginClient(str(sock))
        client.ok("GraphDriver.Create", {"ID": "base"})
        root = client.ok("GraphDriver.Get", {"ID": "base"})["Dir"]
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not sock.exists()
        assert mounted(root)  # a running container keeps its root filesystem
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        aufs.Driver(home).cleanup()


def test_killed_server_restarted_puts_what_the_dead_one_got(ramdir: pathlib.Path) -> None:
    home, sock = ramdir / "store", ramdir / "p.sock"
    proc = _start(home, sock)
    try:
        client = PluginClient(str(sock))
        client.ok("GraphDriver.Create", {"ID": "base"})
        client.apply_diff("base", "", [make_tar({"f": b"data"})])
        client.ok("GraphDriver.CreateReadWrite", {"ID": "rw", "Parent": "base"})
        root = client.ok("GraphDriver.Get", {"ID": "rw"})["Dir"]
        client.ok("GraphDriver.Get", {"ID": "rw"})
        client.close()
        proc.kill()
        proc.wait()
        assert sock.exists() and mounted(root)
        # another process opening the store (and sweeping) must not drop dockerd's references
        aufs.Driver(home).check(repair=True)
        assert mounted(root)
        proc = _start(home, sock)  # replaces the stale socket
        client = PluginClient(str(sock))
        assert client.ok("GraphDriver.Exists", {"ID": "rw"}) == {"Exists": True}
        client.ok("GraphDriver.Put", {"ID": "rw"})
        assert mounted(root)
        client.ok("GraphDriver.Put", {"ID": "rw"})
        assert not mounted(root)
        assert pathlib.Path(aufs.Driver(home).diff_dir("base"), "f").read_bytes() == b"data"
        client.close()
    finally:
        proc.kill()
        proc.wait()
        aufs.Driver(home).cleanup()


# ---------------------------------------------------------------------------- HTTP framing


def _raw_exchange(path: str, request: bytes) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    sock.sendall(request)
    sock.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        more = sock.recv(65536)
        if not more:
            break
        reply += more
    sock.close()
    return reply


def test_chunk_extensions_and_trailers_are_understood(server: DockerPluginServer, store: aufs.Driver) -> None:
    client = PluginClient(server.socket_path)
    client.ok("GraphDriver.Create", {"ID": "base"})
    client.close()
    tar = make_tar({"f": b"framed"})
    body = b"".join(b"%X;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks(tar, 1000))
    reply = _raw_exchange(server.socket_path,
                          b"POST /GraphDriver.ApplyDiff?id=base&parent= HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body
                          + b"0\r\nX-Trailer: yes\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'{"Size": 6}')
    assert pathlib.Path(store.diff_dir("base"), "f").read_bytes() == b"framed"


def test_malformed_chunks_are_refused_and_change_nothing(server: DockerPluginServer, store: aufs.Driver) -> None:
    client = PluginClient(server.socket_path)
    client.ok("GraphDriver.Create", {"ID": "base"})
    client.close()
    tar = make_tar({"f": b"x" * 5000})
    for body in (b"zz\r\n" + tar + b"\r\n0\r\n\r\n",                       # not a hex size
                 b"%x\r\n%sXX0\r\n\r\n" % (len(tar), tar)):                   # chunk not ended by CRLF
        reply = _raw_exchange(server.socket_path,
                              b"POST /GraphDriver.ApplyDiff?id=base&parent= HTTP/1.1\r\nHost: x\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" + body)
        # a stream that cannot be framed cannot be drained: the server hangs up (maybe with no answer)
        assert reply == b"" or (reply.startswith(b"HTTP/1.1 4") and b"Connection: close" in reply)
        assert os.listdir(store.diff_dir("base")) == []


def test_diff_reader_that_hangs_up_releases_the_layer(client: PluginClient, server: DockerPluginServer,
                                                     store: aufs.Driver) -> None:
    client.ok("GraphDriver.Create", {"ID": "big"})
    files = {f"d/{i}": os.urandom(64 * 1024) for i in range(64)}
    assert client.apply_diff("big", "", chunks(make_tar(files, dirs=("d",)), 1 << 20))[0] == 200
    for _ in range(3):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(server.socket_path)
        sock.sendall(b'POST /GraphDriver.Diff HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{"ID": "big"}')
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        sock.close()  # a few bytes in: the rest of the tar has nowhere to go
    status, tar = client.diff("big")  # the layer lock was given back each time
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        assert {m.name for m in t.getmembers() if m.isfile()} == set(files)
    client.ok("GraphDriver.Remove", {"ID": "big"})


def test_concurrent_connections(server: DockerPluginServer, store: aufs.Driver) -> None:
    # dockerd loads layers of different images at once, each call on its own connection
    errors: list[BaseException] = []

    def load(n: int) -> None:
        c = PluginClient(server.socket_path)
        try:
            parent = ""
            for depth in range(3):
                layer_id = f"img{n}-{depth}"
                c.ok("GraphDriver.Create", {"ID": layer_id, "Parent": parent})
                status, answer = c.apply_diff(layer_id, parent, chunks(make_tar({f"f{depth}": b"%d" % n * 1000}), 4096))
                assert status == 200, answer
                parent = layer_id
            root = c.ok("GraphDriver.Get", {"ID": parent})["Dir"]
            assert pathlib.Path(root, "f0").read_bytes() == b"%d" % n * 1000
            c.ok("GraphDriver.Put", {"ID": parent})
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=load, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(store.layers()) == 18
    assert not any(store.is_mounted(layer) for layer in store.layers())
