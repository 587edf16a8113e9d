"""HTTP/1.1 on a unix socket, as plugin protocols speak it: the socket, request bodies, chunks.

What an engine's plugin server needs below its protocol, with the standard library only:

* :class:`UnixHTTPServer` -- a threading ``http.server`` on a unix socket created mode 0600,
  refused (:class:`SocketRefused`) when another user owns the path or may write its directory,
  when the path is not a socket, or when a live server answers there; a stale socket of ours
  (its server was killed) is replaced, and :meth:`UnixHTTPServer.close` removes ours only;
* :func:`request_body` -- a request's body as a stream: ``Transfer-Encoding: chunked``
  decoded (extensions and trailers understood) or ``Content-Length`` bytes; a body cut off
  raises :class:`ClientGone`, broken framing :class:`MalformedBody`, and either failure sticks,
  so that :func:`drain` and :func:`client_gone` can tell whether the connection is still usable;
* :class:`ChunkedResponse` -- a streamed response body, headers sent on the first write.
"""
from __future__ import annotations

import http.server
import io
import os
import socketserver
import threading
from typing import Any, BinaryIO, cast

from ..errors import AufsError
from .sockets import SocketRefused, claim_socket_path

__all__ = [
    "ChunkedResponse",
    "ClientGone",
    "MalformedBody",
    "SocketRefused",
    "UnixHTTPServer",
    "client_gone",
    "drain",
    "request_body",
]

READ_CHUNK = 1 << 20
"""Bytes read at a time from a request: bodies of layer streams come in many small chunks."""


class ClientGone(AufsError, ConnectionError):
    """The client closed the connection in the middle of a request body."""


class MalformedBody(AufsError, ValueError):
    """A request body whose HTTP framing is broken (chunk sizes, Content-Length)."""


# ---------------------------------------------------------------------------------- bodies


class _ChunkedBody(io.RawIOBase):
    """The decoded body of a ``Transfer-Encoding: chunked`` request, read as a stream."""

    def __init__(self, rfile: BinaryIO) -> None:
        super().__init__()
        self._rfile = rfile
        self._left = 0  # bytes of the current chunk not yet read
        self.finished = False
        self.failure: AufsError | None = None  # once the framing failed, every read fails alike

    def readable(self) -> bool:
        return True

    def _line(self) -> bytes:
        line = self._rfile.readline(4097)
        if not line:
            raise ClientGone("the client hung up in the middle of a chunked request body")
        if not line.endswith(b"\n"):
            raise MalformedBody("malformed chunked request body: a chunk header line is too long")
        return line.rstrip(b"\r\n")

    def _next_chunk(self) -> None:
        text = self._line().split(b";", 1)[0].strip()
        try:
            size = int(text, 16)
        except ValueError:
            raise MalformedBody(f"malformed chunked request body: bad chunk size {text[:40]!r}") from None
        if size < 0:
            raise MalformedBody("malformed chunked request body: negative chunk size")
        if size == 0:
            while self._line():  # trailer fields, up to the empty line
                pass
            self.finished = True
        self._left = size

    def readinto(self, buffer: Any) -> int:
        if self.failure is not None:
            raise self.failure
        try:
            return self._fill(buffer)
        except (MalformedBody, ClientGone) as exc:
            self.failure = exc
            raise

    def _fill(self, buffer: Any) -> int:
        # fills the whole buffer across chunks: a client's chunks follow its own reads (dockerd
        # sends one 512-byte tar header or one small file at a time), and readers pay per call
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and not self.finished:
            if self._left == 0:
                self._next_chunk()
                if self.finished:
                    break
            data = self._rfile.read1(min(len(view) - filled, self._left))  # type: ignore[attr-defined]
            if not data:
                raise ClientGone("the client hung up in the middle of a chunked request body")
            n = len(data)
            view[filled:filled + n] = data
            filled += n
            self._left -= n
            if self._left == 0 and self._rfile.read(2) != b"\r\n":
                raise MalformedBody("malformed chunked request body: a chunk does not end with CRLF")
        return filled


class _SizedBody(io.RawIOBase):
    """A ``Content-Length`` request body, read as a stream; short means :class:`ClientGone`."""

    def __init__(self, rfile: BinaryIO, length: int) -> None:
        super().__init__()
        self._rfile = rfile
        self._left = length
        self.finished = length == 0
        self.failure: AufsError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.failure is not None:
            raise self.failure
        view = memoryview(buffer).cast("B")
        if self._left == 0 or not len(view):
            self.finished = self._left == 0
            return 0
        data = self._rfile.read1(min(len(view), self._left))  # type: ignore[attr-defined]
        if not data:
            self.failure = ClientGone(f"the client hung up with {self._left} bytes of the request body unsent")
            raise self.failure
        n = len(data)
        view[:n] = data
        self._left -= n
        self.finished = self._left == 0
        return n


def request_body(handler: http.server.BaseHTTPRequestHandler) -> io.RawIOBase:
    """The body of the request ``handler`` is answering, as a stream (nothing read yet).

    Raises :class:`MalformedBody` for a Content-Length that is not a number (and marks the
    connection to be closed: the next request cannot be found).
    """
    rfile = cast(BinaryIO, handler.rfile)
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        return _ChunkedBody(rfile)
    length_text = handler.headers.get("Content-Length") or "0"
    try:
        length = int(length_text)
        if length < 0:
            raise ValueError(length_text)
    except ValueError:
        handler.close_connection = True
        raise MalformedBody(f"bad Content-Length {length_text!r}") from None
    return _SizedBody(rfile, length)


def client_gone(body: io.RawIOBase) -> bool:
    """True if the client hung up while sending ``body``: nobody is left to answer."""
    return isinstance(getattr(body, "failure", None), ClientGone)


def drain(body: io.RawIOBase) -> bool:
    """Read ``body`` to its end, so the client gets the answer and the connection its next
    request; False if that is impossible (cut off, or its framing broke)."""
    if getattr(body, "failure", None) is not None:
        return False
    try:
        while body.read(READ_CHUNK):
            pass
    except (AufsError, OSError):
        return False
    return True


class ChunkedResponse:
    """A streamed 200 response body: headers on the first write, then one chunk per write.

    A writable binary file for code that writes a stream (a tar). If :meth:`finish` is never
    reached after the first write, the handler must close the connection: the client then sees
    a broken stream, never a short one it could take for the whole.
    """

    def __init__(self, handler: http.server.BaseHTTPRequestHandler, content_type: str) -> None:
        self._handler = handler
        self._content_type = content_type
        self.started = False

    def _start(self) -> None:
        if not self.started:
            self.started = True
            h = self._handler
            h.send_response(200)
            h.send_header("Content-Type", self._content_type)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()

    def write(self, data: Any) -> int:
        n = len(memoryview(data))
        if n:
            self._start()
            # one write per chunk: the response socket is unbuffered
            self._handler.wfile.write(b"".join((b"%x\r\n" % n, data, b"\r\n")))
        return n

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._handler.wfile.flush()

    def finish(self) -> None:
        """End the body (the zero-length chunk)."""
        self._start()
        self._handler.wfile.write(b"0\r\n\r\n")
        self._handler.wfile.flush()


# ---------------------------------------------------------------------------------- the server


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A threading HTTP server on the unix socket ``path``, created mode 0600.

    See :func:`aufs.serve.sockets.claim_socket_path` for the paths it refuses. :meth:`close` removes the socket
    (only if it is still ours). Requests counted with :meth:`track_request` can be waited for
    with :meth:`wait_idle`. Use as a context manager, with ``serve_forever`` in a thread and
    ``shutdown``.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = False

    def __init__(self, path: str | os.PathLike[str],
                 handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.socket_path = os.path.abspath(os.fspath(path))
        self._active = 0
        self.connections_done = 0
        """Connections answered (or dropped) and closed so far: a caller that opened one can
        wait for this to grow, then know the server is done with it."""
        self._idle = threading.Condition()
        claim_socket_path(self.socket_path)
        # process-wide, but only for the bind: the socket is born 0600, with no window in
        # which another user could connect
        old_umask = os.umask(0o177)
        try:
            super().__init__(self.socket_path, handler)
        finally:
            os.umask(old_umask)
        try:
            os.chmod(self.socket_path, 0o600)
            self._inode = os.lstat(self.socket_path).st_ino
        except BaseException:
            self.server_close()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._idle:
                self.connections_done += 1
                self._idle.notify_all()

    def wait_connections(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` connections have been closed (at most ``timeout`` seconds)."""
        with self._idle:
            return self._idle.wait_for(lambda: self.connections_done >= count, timeout)

    def track_request(self) -> _Tracking:
        """``with server.track_request():`` around the answer of one request."""
        return _Tracking(self)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no tracked request is being answered (at most ``timeout`` seconds)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def server_close(self) -> None:
        super().server_close()
        try:  # only our own socket: a newer server may have replaced it
            if os.lstat(self.socket_path).st_ino == getattr(self, "_inode", None):
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Stop listening and remove the socket (requests in progress finish on their threads)."""
        self.server_close()

    def __enter__(self) -> UnixHTTPServer:  # noqa: PYI034 - Python 3.9 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Tracking:
    def __init__(self, server: UnixHTTPServer) -> None:
        self._server = server

    def __enter__(self) -> None:
        with self._server._idle:
            self._server._active += 1

    def __exit__(self, *exc: object) -> None:
        with self._server._idle:
            self._server._active -= 1
            self._server._idle.notify_all()


