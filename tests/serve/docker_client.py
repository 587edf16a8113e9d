"""A small client of Docker's plugin protocol over a unix socket, as dockerd's Go client talks it.

POST with a JSON body (Content-Length) for calls; ``ApplyDiff`` with a chunked body, as Go's
``http.Client`` sends an ``io.Reader`` of unknown length; one keep-alive connection.
"""
from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterable
from typing import Any

MEDIA_TYPE = "application/vnd.docker.plugins.v1.2+json"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("plugin", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class PluginClient:
    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = _UnixConnection(path)

    def close(self) -> None:
        self.conn.close()

    def raw(self, method: str, url: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        hdrs = {"Accept": MEDIA_TYPE}
        hdrs.update(headers or {})
        self.conn.request(method, url, body=body, headers=hdrs)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def call(self, endpoint: str, request: Any = None) -> tuple[int, dict[str, Any]]:
        body = b"" if request is None else json.dumps(request).encode()
        status, _, data = self.raw("POST", "/" + endpoint, body,
                                   {"Content-Type": "application/json"})
        return status, json.loads(data)

    def ok(self, endpoint: str, request: Any = None) -> dict[str, Any]:
        status, answer = self.call(endpoint, request)
        assert status == 200 and not answer.get("Err"), (endpoint, status, answer)
        return answer

    def err(self, endpoint: str, request: Any = None) -> str:
        status, answer = self.call(endpoint, request)
        assert status != 200 and answer.get("Err"), (endpoint, status, answer)
        return str(answer["Err"])

    def diff(self, layer_id: str, parent: str = "") -> tuple[int, bytes]:
        status, _, data = self.raw("POST", "/GraphDriver.Diff",
                                   json.dumps({"ID": layer_id, "Parent": parent}).encode())
        return status, data

    def apply_diff(self, layer_id: str, parent: str, chunks: Iterable[bytes]) -> tuple[int, dict[str, Any]]:
        """ApplyDiff with a chunked body made of ``chunks`` (the query left unescaped, as dockerd does)."""
        self.conn.putrequest("POST", f"/GraphDriver.ApplyDiff?id={layer_id}&parent={parent}")
        self.conn.putheader("Accept", MEDIA_TYPE)
        self.conn.putheader("Transfer-Encoding", "chunked")
        self.conn.endheaders()
        for chunk in chunks:
            if chunk:
                self.conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.conn.send(b"0\r\n\r\n")
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read())
