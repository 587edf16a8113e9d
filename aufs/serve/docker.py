"""Docker's graph-driver plugin protocol (v1, HTTP/1.1 over a unix socket): ``aufs serve docker``.

dockerd (20.10 up to 27, started with ``--experimental --storage-driver NAME``) finds a v1
plugin by its socket, ``/run/docker/plugins/NAME.sock``, activates it (``POST
/Plugin.Activate``) and then calls ``POST /GraphDriver.*`` with JSON bodies; every image layer
and container filesystem then lives in the store. This module owns that protocol:

* :class:`GraphDriverPlugin` -- the endpoints' meaning over a :class:`aufs.Driver`
  (ids, parents, refusals, the answer of each call), independent of HTTP;
* :class:`DockerPluginServer` -- the HTTP side: each endpoint's request read and answered,
  refusals as ``{"Err": ...}``, layer streams in (``ApplyDiff``, drained whatever happens) and
  out (``Diff``); the socket, bodies and chunks are :mod:`aufs.serve.unixhttp`'s;
* :func:`serve_docker` -- serve until SIGTERM/SIGINT, then remove the socket.

Facts of the protocol this server relies on (moby v20.10 ``daemon/graphdriver/proxy.go``,
``pkg/plugins``): every call is a POST; a non-200 status makes the call fail with the
``Err`` of the JSON body; ``Capabilities`` is answered as ``{"Capabilities": {...}}`` and a
404 there means "no capabilities"; ``ApplyDiff?id=ID&parent=PARENT`` carries the uncompressed
layer tar as a chunked body, ids not URL-escaped; ``Diff`` answers with the raw tar stream;
``Get`` answers the directory dockerd uses as the root filesystem, so the mount is made in
this server's mount namespace, which must be dockerd's. dockerd passes its Get/Put calls
through unchanged and expects them to be counted across a restart of the plugin, so the
store's references are held under a persistent holder name (``docker-NAME``).
"""
from __future__ import annotations

import http.server
import io
import json
import logging
import os
import re
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, cast

from ..errors import (
    AufsError,
    InvalidLayerId,
    LayerExists,
    LayerInUse,
    LayerNotFound,
)
from ..layout import is_valid_layer_id
from .sockets import require_servable
from .unixhttp import (
    READ_CHUNK,
    ChunkedResponse,
    ClientGone,
    MalformedBody,
    SocketRefused,
    UnixHTTPServer,
    client_gone,
    drain,
    request_body,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Driver

__all__ = [
    "BUILTIN_DRIVER_NAMES",
    "DEFAULT_NAME",
    "MEDIA_TYPE",
    "BadRequest",
    "DockerPluginServer",
    "GraphDriverPlugin",
    "SocketRefused",
    "check_plugin_name",
    "default_socket",
    "holder_name",
    "serve_docker",
]

log = logging.getLogger("aufs.serve.docker")

DEFAULT_NAME = "aufs-store"
"""The plugin name ``aufs serve docker`` uses unless told otherwise: dockerd's ``--storage-driver``."""

# dockerd tries its own drivers before plugins: a plugin under one of these names is never used
BUILTIN_DRIVER_NAMES = frozenset(
    {"aufs", "btrfs", "devicemapper", "fuse-overlayfs", "overlay", "overlay2", "vfs", "zfs", "windowsfilter", "lcow"}
)

MEDIA_TYPE = "application/vnd.docker.plugins.v1.2+json"

PLUGINS_DIR = "/run/docker/plugins"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,56}\Z")

# a JSON request of the protocol is a few hundred bytes; anything far larger is not one
_MAX_JSON_BODY = 1 << 20


class BadRequest(AufsError, ValueError):
    """A request the protocol does not allow or this store does not support (answered with 400)."""


def holder_name(name: str) -> str:
    """The store holder under which the plugin called ``name`` counts dockerd's references."""
    return f"docker-{name}"


def default_socket(name: str) -> str:
    """Where dockerd looks for the v1 plugin ``name``: ``/run/docker/plugins/NAME.sock``."""
    return os.path.join(PLUGINS_DIR, f"{name}.sock")


def check_plugin_name(name: str) -> str:
    """``name`` if dockerd can load a plugin by it; :class:`BadRequest` otherwise."""
    if name in BUILTIN_DRIVER_NAMES:
        raise BadRequest(
            f"plugin name {name!r} is one of Docker's built-in storage drivers, which dockerd "
            f"would use instead of the plugin; choose another name (default {DEFAULT_NAME!r})"
        )
    # one safe path component, short enough for the holder name docker-NAME (64 at most)
    if not _NAME_RE.match(name):
        raise BadRequest(f"plugin name {name!r}: use 1 to 57 characters of [A-Za-z0-9_.-], first alphanumeric")
    return name


def _layer_id(value: object, what: str = "ID") -> str:
    """A layer id from a request, refused unless it is a valid store id (no ``/``, ``..``, NUL)."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} must be a non-empty string, not {value!r}")
    # dockerd's ids (64 hex digits, "-init" for init layers) are always valid store ids; the
    # ".." check is stricter than the store needs (an id is one component) and costs nothing
    if ".." in value or not is_valid_layer_id(value):
        raise BadRequest(
            f"invalid layer id {value!r} in {what}: use 1 to 128 characters of [A-Za-z0-9_.-], "
            "first alphanumeric, without '..'"
        )
    return value


def _parent_id(value: object) -> str | None:
    if value is None or value == "":
        return None
    return _layer_id(value, "Parent")


# ---------------------------------------------------------------------------------- protocol


class GraphDriverPlugin:
    """The graph-driver endpoints over one store, independent of HTTP.

    JSON endpoints are ``call(name, request) -> response``; ``Diff`` and ``ApplyDiff`` stream
    (:meth:`diff`, :meth:`apply_diff`). Every refusal raises an :class:`aufs.AufsError` (a
    :class:`BadRequest` for what the protocol or this store does not allow) and changes nothing.
    Safe to call from many threads at once (the store locks).
    """

    def __init__(self, driver: Driver, *, name: str = DEFAULT_NAME) -> None:
        self.driver = driver
        self.name = name
        self.docker_home: str | None = None  # what dockerd said in Init (not used for storage)
        self._endpoints: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "Plugin.Activate": self._activate,
            "GraphDriver.Init": self._init,
            "GraphDriver.Capabilities": self._capabilities,
            "GraphDriver.Create": self._create,
            "GraphDriver.CreateReadWrite": self._create,
            "GraphDriver.Remove": self._remove,
            "GraphDriver.Get": self._get,
            "GraphDriver.Put": self._put,
            "GraphDriver.Exists": self._exists,
            "GraphDriver.Status": self._status,
            "GraphDriver.GetMetadata": self._get_metadata,
            "GraphDriver.Cleanup": self._cleanup,
            "GraphDriver.Changes": self._changes,
            "GraphDriver.DiffSize": self._diff_size,
        }

    @property
    def endpoints(self) -> frozenset[str]:
        """Every endpoint name, the streaming ones included."""
        return frozenset(self._endpoints) | {"GraphDriver.Diff", "GraphDriver.ApplyDiff"}

    def call(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        """Answer the JSON endpoint ``name``; ``LookupError`` (not an AufsError) if there is none."""
        return self._endpoints[name](request)

    # -- lifecycle ----------------------------------------------------------------------------

    def _activate(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": ["GraphDriver"]}

    def _init(self, request: dict[str, Any]) -> dict[str, Any]:
        opts = request.get("Opts") or []
        if not isinstance(opts, list):
            raise BadRequest(f"Opts must be a list of strings, not {opts!r}")
        if opts:
            raise BadRequest(
                f"storage driver options are not supported by {self.name}: {', '.join(map(str, opts))}; "
                "start dockerd without --storage-opt"
            )
        for key in ("UIDMaps", "GIDMaps"):
            if request.get(key):
                raise BadRequest(f"{key}: user-namespace remapping is not supported by {self.name}; "
                                 "start dockerd without --userns-remap")
        home = request.get("Home")
        if home is not None and not isinstance(home, str):
            raise BadRequest(f"Home must be a string, not {home!r}")
        self.docker_home = home
        return {}

    def _capabilities(self, request: dict[str, Any]) -> dict[str, Any]:
        # Diff writes a deterministic tar of the layer's directory, not the bytes ApplyDiff
        # received (entry order, headers, padding differ): dockerd must keep its tar-split data
        return {"Capabilities": {"ReproducesExactDiffs": False}}

    def _create(self, request: dict[str, Any]) -> dict[str, Any]:
        layer_id = _layer_id(request.get("ID"))
        parent = _parent_id(request.get("Parent"))
        self._refuse_mount_label(request)
        storage_opt = request.get("StorageOpt") or {}
        if not isinstance(storage_opt, dict):
            raise BadRequest(f"StorageOpt must be an object, not {storage_opt!r}")
        if storage_opt:
            raise BadRequest(
                f"storage options are not supported by {self.name}: {', '.join(sorted(map(str, storage_opt)))} "
                "(e.g. docker run --storage-opt size=...)"
            )
        self.driver.create(layer_id, parent)
        return {}

    def _refuse_mount_label(self, request: dict[str, Any]) -> None:
        label = request.get("MountLabel") or ""
        if label:
            raise BadRequest(f"SELinux mount labels are not supported by {self.name} (MountLabel {label!r})")

    def _remove(self, request: dict[str, Any]) -> dict[str, Any]:
        layer_id = _layer_id(request.get("ID"))
        try:
            # dockerd removes a layer only when it is done with it: references it still holds
            # (a dockerd that died between Get and Put) go; another holder's mount is refused
            self._give_back(layer_id)
            self.driver.remove(layer_id)
        except LayerNotFound:
            pass  # as Docker's own drivers: removing what is gone succeeds (dockerd retries removes)
        return {}

    def _give_back(self, layer_id: str) -> None:
        """Put every reference this plugin's holder has on the layer."""
        for _ in range(self.driver.holders(layer_id).get(self.driver.holder, 0)):
            self.driver.put(layer_id)

    def _get(self, request: dict[str, Any]) -> dict[str, Any]:
        layer_id = _layer_id(request.get("ID"))
        self._refuse_mount_label(request)
        return {"Dir": self.driver.get(layer_id)}

    def _put(self, request: dict[str, Any]) -> dict[str, Any]:
        self.driver.put(_layer_id(request.get("ID")))
        return {}

    def _exists(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"Exists": self.driver.exists(_layer_id(request.get("ID")))}

    def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        status = [["Plugin", self.name]]
        status += [[key.replace("_", " ").capitalize(), str(value)] for key, value in self.driver.status().items()]
        return {"Status": status}

    def _get_metadata(self, request: dict[str, Any]) -> dict[str, Any]:
        layer_id = _layer_id(request.get("ID"))
        parent = self.driver.parent(layer_id)
        # docker inspect shows these as GraphDriver.Data
        return {"Metadata": {"DiffDir": self.driver.diff_dir(layer_id), "MergedDir": self.driver.mountpoint(layer_id),
                             "Parent": parent or "", "Backend": self.driver.backend}}

    def _cleanup(self, request: dict[str, Any]) -> dict[str, Any]:
        # dockerd calls Cleanup at shutdown, once no container runs: give back every reference
        # its holder still has (Docker's own drivers unmount everything then), but leave the
        # mounts other holders of the store use
        for layer_id in self.driver.layers():
            try:
                self._give_back(layer_id)
            except LayerNotFound:
                continue  # removed meanwhile: nothing left to give back
        return {}

    # -- diffs --------------------------------------------------------------------------------

    def _check_parent(self, layer_id: str, parent: str | None) -> None:
        """Diffs are against the layer's own parent: refuse any other base rather than lie."""
        actual = self.driver.parent(layer_id)
        if parent != actual:
            raise BadRequest(
                f"layer {layer_id!r} has parent {actual or 'none'}, not {parent or 'none'}: "
                f"{self.name} computes diffs against a layer's own parent only"
            )

    def _changes(self, request: dict[str, Any]) -> dict[str, Any]:
        layer_id = _layer_id(request.get("ID"))
        self._check_parent(layer_id, _parent_id(request.get("Parent")))
        # aufs.ChangeKind has Docker's numbers: 0 modified, 1 added, 2 deleted
        return {"Changes": [{"Path": c.path, "Kind": int(c.kind)} for c in self.driver.changes(layer_id)]}

    def _diff_size(self, request: dict[str, Any]) -> dict[str, Any]:
        layer_id = _layer_id(request.get("ID"))
        self._check_parent(layer_id, _parent_id(request.get("Parent")))
        return {"Size": self.driver.diff_size(layer_id)}

    def check_diff(self, request: dict[str, Any]) -> str:
        """Validate a Diff request before anything is streamed; returns the layer id."""
        layer_id = _layer_id(request.get("ID"))
        self._check_parent(layer_id, _parent_id(request.get("Parent")))
        return layer_id

    def diff(self, layer_id: str, out: BinaryIO) -> int:
        """Write the layer's changes as a tar to ``out`` (after :meth:`check_diff`); bytes written."""
        return self.driver.diff(layer_id, out)

    def check_apply(self, query: str) -> tuple[str, str | None]:
        """The layer and parent of ``ApplyDiff?id=ID&parent=PARENT`` (raw query), validated."""
        fields: dict[str, str] = {}
        for part in query.split("&") if query else []:
            key, sep, value = part.partition("=")
            if not sep or key not in ("id", "parent") or key in fields:
                raise BadRequest(f"ApplyDiff: unexpected query {query!r}; expected id=ID&parent=PARENT")
            fields[key] = value
        if "id" not in fields:
            raise BadRequest(f"ApplyDiff: the query {query!r} names no id")
        layer_id = _layer_id(fields["id"], "id")
        parent = _parent_id(fields.get("parent"))
        if parent is not None and not self.driver.exists(parent):
            raise LayerNotFound(f"ApplyDiff: parent {parent!r} does not exist", layer_id=parent)
        self._check_parent(layer_id, parent)
        return layer_id, parent

    def apply_diff(self, layer_id: str, body: BinaryIO) -> dict[str, Any]:
        """Apply the tar read from ``body`` to the layer (after :meth:`check_apply`)."""
        return {"Size": self.driver.apply_diff(layer_id, body)}


# ---------------------------------------------------------------------------------- HTTP server


def _status_for(exc: BaseException) -> int:
    if isinstance(exc, (BadRequest, MalformedBody, InvalidLayerId)):
        return 400
    if isinstance(exc, LayerNotFound):
        return 404
    if isinstance(exc, (LayerExists, LayerInUse)):
        return 409
    return 500


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as dockerd's Go client expects
    rbufsize = READ_CHUNK  # layer bodies arrive in many small chunks: few, large socket reads
    server_version = "aufs-serve-docker"
    server: DockerPluginServer

    # -- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s", format % args)  # the base logs every request to stderr

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # malformed HTTP (the base class's own refusals) is answered in the protocol's shape too,
        # with a status line even when the request line was too garbled to carry a version
        self.request_version = self.protocol_version
        self.close_connection = True
        self._reply(code, {"Err": message or explain or http.HTTPStatus(code).phrase})

    def _reply(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", MEDIA_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _fail(self, exc: BaseException) -> None:
        code = _status_for(exc)
        if isinstance(exc, AufsError):
            message = str(exc)
        else:  # a bug or an OS error: still an answer, and a line in the log
            message = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, OSError):
                log.exception("internal error answering %s", self.path)
        log.info("%s -> %d %s", self.path, code, message)
        self._reply(code, {"Err": message})

    # -- requests -----------------------------------------------------------------------------

    def do_POST(self) -> None:
        start = time.monotonic()
        with self.server.track_request():
            self._dispatch()
        log.debug("%s answered in %.3f s", self.path, time.monotonic() - start)

    def _refuse_method(self) -> None:
        self.close_connection = True
        self._reply(405, {"Err": f"{self.command} is not a method of the plugin protocol: use POST"})

    do_GET = do_PUT = do_DELETE = do_HEAD = do_PATCH = _refuse_method

    def _dispatch(self) -> None:
        plugin = self.server.plugin
        path, _, query = self.path.partition("?")
        endpoint = path.lstrip("/")
        try:
            body = request_body(self)
        except MalformedBody as exc:
            self._fail(exc)
            return
        if endpoint not in plugin.endpoints:
            if not drain(body):
                self.close_connection = True
            self._reply(404, {"Err": f"unknown endpoint {path!r}: {plugin.name} implements "
                                     + ", ".join(sorted(plugin.endpoints))})
            return
        if endpoint == "GraphDriver.ApplyDiff":
            self._apply_diff(query, body)
            return
        try:
            request = self._json(body)
        except (BadRequest, MalformedBody, ClientGone) as exc:
            self._refuse_body(exc, body)
            return
        if endpoint == "GraphDriver.Diff":
            self._diff(request)
            return
        try:
            answer = plugin.call(endpoint, request)
        except Exception as exc:  # noqa: BLE001 - every failure is an answer
            self._fail(exc)
            return
        self._reply(200, answer)

    def _refuse_body(self, exc: BaseException, body: io.RawIOBase) -> None:
        """Answer a failed request whose body may be unread, broken, or cut off."""
        if client_gone(body):
            log.info("%s: %s", self.path, body.failure)  # type: ignore[attr-defined]
            self.close_connection = True  # nobody is left to answer
            return
        if self.close_connection or not drain(body):
            self.close_connection = True  # the next request cannot be found in this stream
        self._fail(exc)

    def _json(self, body: io.RawIOBase) -> dict[str, Any]:
        data = bytearray()
        while True:
            chunk = body.read(READ_CHUNK)
            if not chunk:
                break
            data += chunk
            if len(data) > _MAX_JSON_BODY:
                self.close_connection = True  # not worth reading to its end
                raise BadRequest(f"request body larger than {_MAX_JSON_BODY} bytes: not a request of the protocol")
        if not data.strip():
            return {}
        try:
            request = json.loads(bytes(data))
        except ValueError as exc:
            raise BadRequest(f"malformed JSON request body: {exc}") from None
        if request is None:
            return {}
        if not isinstance(request, dict):
            raise BadRequest(f"the request body must be a JSON object, not {type(request).__name__}")
        return request

    def _diff(self, request: dict[str, Any]) -> None:
        plugin = self.server.plugin
        try:
            layer_id = plugin.check_diff(request)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        writer = ChunkedResponse(self, "application/x-tar")
        try:
            plugin.diff(layer_id, cast(BinaryIO, writer))
            writer.finish()
        except Exception as exc:  # noqa: BLE001
            if not writer.started:
                self._fail(exc)
                return
            # half a tar is out: end the connection without the last chunk, so the client
            # sees a broken stream, never a short tar it could take for the whole layer
            log.warning("Diff of %s failed after the stream began: %s", layer_id, exc)
            self.close_connection = True

    def _apply_diff(self, query: str, body: io.RawIOBase) -> None:
        plugin = self.server.plugin
        try:
            layer_id, _ = plugin.check_apply(query)
            answer = plugin.apply_diff(layer_id, cast(BinaryIO, body))
        except Exception as exc:  # noqa: BLE001
            self._refuse_body(exc, body)
            return
        if not drain(body):  # bytes after the tar's end (padding): read them, or lose the framing
            self.close_connection = True
            return
        self._reply(200, answer)


class DockerPluginServer(UnixHTTPServer):
    """The graph-driver plugin of ``driver`` on the unix socket ``path`` (one thread per connection).

    The socket is created mode 0600 (it gives root's powers over the store and every mount).
    Refused with :class:`SocketRefused`: a path another user owns, or whose directory another
    user may write; an existing path that is not a socket; a socket a live server answers on.
    A stale socket of ours (nothing listening) is replaced. ``name`` (default: the socket's
    file name without ``.sock``) must be one dockerd can load (:func:`check_plugin_name`).
    :meth:`close` removes the socket. Use as a context manager, with ``serve_forever`` in a
    thread and ``shutdown``.
    """

    def __init__(self, driver: Driver, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        if name is None:
            name = os.path.basename(os.fspath(path)).removesuffix(".sock")
        require_servable(driver, "Docker")
        self.plugin = GraphDriverPlugin(driver, name=check_plugin_name(name))
        super().__init__(path, _Handler)


def serve_docker(driver: Driver, socket: str | os.PathLike[str], *, name: str | None = None,
                 ready: Callable[[DockerPluginServer], None] | None = None) -> None:
    """Serve ``driver`` as Docker's graph-driver plugin on ``socket`` until SIGTERM or SIGINT.

    Returns (exit status 0 for the ``aufs`` command) once a signal arrived, the requests in
    progress finished (at most 30 seconds) and the socket was removed. Mounts dockerd holds
    stay mounted (running containers keep their root): open ``driver`` with
    ``holder=holder_name(name)`` so a restarted server can ``Put`` them. ``name`` (default:
    the socket's file name without ``.sock``) is what dockerd's ``--storage-driver`` says.
    ``ready`` is called with the server once it listens. Signals are handled only when called
    from the main thread; otherwise call :meth:`DockerPluginServer.shutdown` from elsewhere.
    """
    server = DockerPluginServer(driver, socket, name=name)
    stop = threading.Event()
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            saved[signum] = signal.getsignal(signum)
            signal.signal(signum, lambda received, frame: stop.set())
    try:
        worker = threading.Thread(target=server.serve_forever, name="aufs-serve-docker", daemon=True)
        worker.start()
        if ready is not None:
            ready(server)
        while not stop.wait(0.5) and worker.is_alive():
            pass
        server.shutdown()
        worker.join()
        server.wait_idle(30.0)
    finally:
        server.close()
        for held, handler in saved.items():
            signal.signal(held, handler)
