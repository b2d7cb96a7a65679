"""HTTP helpers for tests: one request on a fresh connection, apps served on free ports,
and bare sockets for clients that misbehave."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest

from _apps import Apps
from _helpers import load_example
from daebus import Daebus, DaebusHttp


@dataclass
class Reply:
    """A complete HTTP response."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


_NO_BODY = object()


def fetch(
    base: str,
    path: str = "/",
    method: str = "GET",
    *,
    json_body: Any = _NO_BODY,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> Reply:
    """One request on a fresh HTTP/1.1 connection."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = dict(headers or {})
    if json_body is not _NO_BODY:
        body = json.dumps(json_body)
        headers.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=headers)
        reply = conn.getresponse()
        return Reply(reply.status, reply.headers, reply.read())
    finally:
        conn.close()


def serve(apps: Apps, app: Daebus, **options: Any) -> DaebusHttp:
    """Attach a DaebusHttp on a free loopback port (unless one is attached) and start."""
    http_component = app.http
    if http_component is None:
        options.setdefault("port", 0)
        options.setdefault("host", "127.0.0.1")
        http_component = app.attach(DaebusHttp(**options))
    else:
        http_component.port = 0
        http_component.host = "127.0.0.1"
    apps.start(app)
    assert http_component.port != 0
    return http_component


def serve_example(apps: Apps, relpath: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run an example's app in-process, its DaebusHttp moved to a free loopback port."""
    module = load_example(relpath, monkeypatch)
    return serve(apps, module.app).url


def raw_connection(base: str) -> socket.socket:
    """A bare TCP connection to the server at `base`, for clients that misbehave."""
    parts = urllib.parse.urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5.0)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (AssertionError if not)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open; got {data!r}") from None
    return data
