"""DaebusHttp against real HTTP clients, with services running on the test Valkey.

The examples of the HTTP guide and the HTTP parts of the blueprint guide (examples/http/)
come first, then one test per 0.0.31 bug fixed, then the rest of the behaviour.
Clients: the stdlib's http.client (and raw sockets, for clients that misbehave) and
aiohttp's ClientSession (multipart uploads, keep-alive).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from _apps import Apps
from _helpers import EXAMPLES, ServiceProcess, load_example, wait_for
from _http import Reply, fetch, raw_connection, read_until_closed, serve, serve_example
from _servers import free_port
from daebus import (
    Blueprint,
    Daebus,
    DaebusHttp,
    HttpRequest,
    HttpResponse,
    SetupError,
    _registry,
    _routes,
    request,
    response,
)
from daebus.components import Component, MountProvider
from daebus.http import cross_origin

# -- the HTTP guide -------------------------------------------------------------------------


def test_guide_status(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_example("http/status.py", monkeypatch)
    assert module.http.host == "0.0.0.0"
    assert module.http.port == 8080
    assert module.app.http is module.http
    base = serve(apps, module.app).url
    reply = fetch(base, "/status")
    assert reply.status == 200
    assert reply.header("Content-Type") == "application/json"
    body = reply.json()
    assert body["status"] == "healthy"
    assert isinstance(body["timestamp"], float)


def test_guide_create_user(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/create_user.py", monkeypatch)
    reply = fetch(base, "/users", "POST", json_body={"name": "Ada", "email": "ada@example.com"})
    assert reply.status == 201
    user = reply.json()
    assert user["name"] == "Ada"
    assert user["email"] == "ada@example.com"
    uuid.UUID(user["id"])


def test_guide_request_object(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/request_data.py", monkeypatch)
    got = fetch(base, "/api/data?kind=lamp", headers={"User-Agent": "guide-test"}).json()
    assert got == {
        "method": "GET",
        "path": "/api/data",
        "content_type": None,
        "user_agent": "guide-test",
        "data": {"kind": "lamp"},
    }
    posted = fetch(base, "/api/data", "POST", json_body={"a": [1, 2]}).json()
    assert posted["method"] == "POST"
    assert posted["content_type"] == "application/json"
    assert posted["data"] == {"a": [1, 2]}


def test_guide_url_parameters(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/user_by_id.py", monkeypatch)
    found = fetch(base, "/users/123")
    assert found.status == 200
    assert found.json() == {"id": "123", "name": "John Doe", "email": "john@example.com"}
    missing = fetch(base, "/users/999")
    assert missing.status == 404
    assert missing.json() == {"error": "User not found"}


def test_guide_query_parameters(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/search.py", monkeypatch)
    got = fetch(base, "/search?q=lamp&limit=2&offset=3").json()
    assert got == {
        "query": "lamp",
        "limit": 2,
        "offset": 3,
        "results": ["lamp result 3", "lamp result 4"],
    }
    assert fetch(base, "/search").json()["limit"] == 10


def test_guide_response_send(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/send_data.py", monkeypatch)
    reply = fetch(base, "/data")
    assert reply.status == 200
    assert reply.json() == {"items": [1, 2, 3], "count": 3}


def test_guide_authentication(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/protected.py", monkeypatch)
    assert fetch(base, "/protected").status == 401
    forged = fetch(base, "/protected", headers={"Authorization": "Bearer forged"})
    assert forged.status == 403
    assert forged.json() == {"error": "Invalid token"}
    # Header names are case-insensitive now (0.0.31 looked them up in a plain dict).
    ok = fetch(base, "/protected", headers={"authorization": "Bearer valid-token"})
    assert ok.status == 200
    assert ok.json() == {"message": "You have access to this protected resource"}


def test_guide_return_styles(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/return_styles.py", monkeypatch)
    example = fetch(base, "/example")
    assert (example.status, example.json()) == (200, {"message": "Success"})
    missing = fetch(base, "/missing")
    assert (missing.status, missing.json()) == (404, {"error": "Not found"})
    as_tuple = fetch(base, "/tuple")
    assert (as_tuple.status, as_tuple.json()) == (200, {"data": "example"})


def test_guide_cors(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/cors.py", monkeypatch)
    origin = "http://localhost:3000"
    preflight = fetch(
        base,
        "/api/items",
        "OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.header("Access-Control-Allow-Origin") == origin
    assert preflight.header("Access-Control-Allow-Credentials") == "true"
    assert preflight.header("Access-Control-Allow-Methods") == "GET, POST"
    assert preflight.header("Access-Control-Allow-Headers") == "Content-Type, Authorization"
    assert preflight.header("Access-Control-Max-Age") == "3600"
    assert "Origin" in (preflight.header("Vary") or "")

    actual = fetch(base, "/api/items", headers={"Origin": origin})
    assert actual.status == 200
    assert actual.header("Access-Control-Allow-Origin") == origin
    assert actual.header("Access-Control-Allow-Credentials") == "true"
    assert actual.header("Access-Control-Expose-Headers") == "X-Total-Count"
    assert "Origin" in (actual.header("Vary") or "")

    # CORS headers only when there is an Origin.
    plain = fetch(base, "/api/items")
    assert plain.status == 200
    assert plain.header("Access-Control-Allow-Origin") is None
    assert plain.header("Access-Control-Allow-Credentials") is None


def test_guide_blueprint_routes_registered_after_attach(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = serve_example(apps, "http/blueprint_users.py", monkeypatch)
    assert fetch(base, "/users").json() == {"users": ["alice", "bob"]}
    assert fetch(base, "/users/7").json() == {"user_id": "7"}


def test_guide_type_hints(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/type_hints.py", monkeypatch)
    reply = fetch(base, "/typed")
    assert (reply.status, reply.json()) == (200, {"path": "/typed", "typed": True})


def test_guide_secure_unpacks_response_send(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/secure.py", monkeypatch)
    reply = fetch(base, "/secure", headers={"User-Agent": "ua/1"})
    assert (reply.status, reply.json()) == (200, {"secret": "42", "user_agent": "ua/1"})


def test_guide_require_auth_decorator(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/require_auth.py", monkeypatch)
    assert fetch(base, "/api/profile/settings").status == 401
    assert fetch(base, "/api/profile/settings", headers={"Authorization": "x"}).status == 403
    ok = fetch(base, "/api/profile/settings", headers={"Authorization": "Bearer secret-key"})
    assert (ok.status, ok.json()) == (200, {"user": "alice", "section": "settings"})


def test_guide_complete_example(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/complete.py", monkeypatch)
    assert fetch(base, "/").json()["endpoints"] == [
        "GET /users",
        "GET /users/<user_id>",
        "POST /users",
    ]
    # 0.0.31 answered 404 here: the POST route had replaced the GET one.
    listed = fetch(base, "/users")
    assert listed.status == 200
    assert listed.json() == {"users": [{"id": "1", "name": "Alice"}, {"id": "2", "name": "Bob"}]}
    assert fetch(base, "/users/2").json() == {"id": "2", "name": "Bob"}
    assert fetch(base, "/users/9").status == 404
    refused = fetch(base, "/users", "POST", json_body={})
    assert (refused.status, refused.json()) == (400, {"error": "Name is required"})
    created = fetch(base, "/users", "POST", json_body={"name": "Cleo"})
    assert (created.status, created.json()) == (201, {"id": "3", "name": "Cleo"})
    assert len(fetch(base, "/users").json()["users"]) == 3
    # allowed_origins "*": a literal *, whatever the origin.
    cors = fetch(base, "/users", headers={"Origin": "https://anywhere.example"})
    assert cors.header("Access-Control-Allow-Origin") == "*"
    preflight = fetch(
        base,
        "/users",
        "OPTIONS",
        headers={"Origin": "https://anywhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.header("Access-Control-Allow-Methods") == "GET, POST"


def test_guide_complete_example_runs_as_a_program(redis_url: str) -> None:
    # As a user runs it (app.run, signals), on a free port instead of 8080.
    port = free_port()
    path = str(EXAMPLES / "http" / "complete.py")
    code = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('complete', {path!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"module.http.port = {port}\n"
        "module.http.host = '127.0.0.1'\n"
        "module.app.run(service='user_api_program')\n"
    )
    base = f"http://127.0.0.1:{port}"
    with ServiceProcess(code=code, redis_url=redis_url, name="http_complete") as proc:

        def answers() -> Reply | None:
            assert proc.is_running(), proc.output()
            try:
                return fetch(base, "/users", timeout=1.0)
            except OSError:
                return None

        reply = wait_for(answers, timeout=15.0, message="the HTTP server never answered")
        assert reply.status == 200
        assert len(reply.json()["users"]) == 2
        assert proc.terminate(signal.SIGTERM, timeout=15.0) == 0, proc.output()
        assert f"HTTP listening on 127.0.0.1:{port}" in proc.output()


def test_overview_status_route(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/overview_status.py", monkeypatch)
    reply = fetch(base, "/api/status")
    assert (reply.status, reply.json()) == (200, {"status": "operational", "version": "1.0.0"})


# -- the blueprint guide --------------------------------------------------------------------


def test_blueprint_guide_routes(apps: Apps, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve_example(apps, "http/blueprint_routes.py", monkeypatch)
    assert fetch(base, "/api/users/42").json() == {"id": "42", "name": "Ada"}
    assert fetch(base, "/api/users/1").status == 404
    # GET and POST on one path.
    assert fetch(base, "/api/users").json() == {"users": [{"id": "42", "name": "Ada"}]}
    created = fetch(base, "/api/users", "POST", json_body={"name": "Bo"})
    assert (created.status, created.json()) == (201, {"id": "101", "name": "Bo"})
    assert len(fetch(base, "/api/users").json()["users"]) == 2
    assert fetch(base, "/api/products/p1").json()["price"] == 25
    assert fetch(base, "/api/products/p2").json() == {"error": "Product not found"}


def test_blueprint_guide_complete_example(
    apps: Apps, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daebus")
    module = load_example("http/blueprint_complete.py", monkeypatch)
    built: list[Daebus] = []
    # main() builds the app and runs it; keep the app and run it here instead.
    monkeypatch.setattr(module.Daebus, "run", lambda app, **_kw: built.append(app))
    module.main()
    (app,) = built
    base = serve(apps, app).url
    wait_for(lambda: "Application starting..." in caplog.text)

    assert fetch(base, "/api/users").json() == {"users": []}
    no_email = fetch(base, "/api/users", "POST", json_body={"name": "Ada"})
    assert (no_email.status, no_email.json()) == (400, {"error": "Email is required"})
    created = fetch(base, "/api/users", "POST", json_body={"email": "a@x.org", "name": "Ada"})
    assert created.status == 201
    user = created.json()
    assert user["id"].startswith("user_")
    assert fetch(base, f"/api/users/{user['id']}").json() == user
    assert fetch(base, "/api/users").json() == {"users": [user]}
    unknown = fetch(base, "/api/users/nobody")
    assert (unknown.status, unknown.json()) == (404, {"error": "User nobody not found"})

    login = {"email": "user@example.com", "password": "password"}
    granted = fetch(base, "/api/auth/login", "POST", json_body=login)
    assert granted.status == 200
    assert granted.json()["expires_in"] == 3600
    assert granted.json()["token"] in module.tokens
    denied = fetch(base, "/api/auth/login", "POST", json_body={**login, "password": "guess"})
    assert (denied.status, denied.json()) == (401, {"error": "Invalid email or password"})


# -- the 0.0.31 bugs, one test each -------------------------------------------------------


def test_get_and_post_on_one_path(apps: Apps) -> None:
    app = Daebus("one_path")

    @app.route("/things", methods=["GET"])
    def list_things(req: HttpRequest) -> Any:
        return {"via": "get"}

    @app.route("/things", methods=["post"])  # method names are case-insensitive
    def add_thing(req: HttpRequest) -> Any:
        return {"via": "post", "got": req.payload}, 201

    base = serve(apps, app).url
    assert fetch(base, "/things").json() == {"via": "get"}
    posted = fetch(base, "/things", "POST", json_body={"n": 1})
    assert (posted.status, posted.json()) == (201, {"via": "post", "got": {"n": 1}})


def test_wrong_method_gets_405_with_allow(apps: Apps) -> None:
    app = Daebus("wrong_method")
    app.route("/only-get")(lambda req: {"ok": True})
    base = serve(apps, app).url
    reply = fetch(base, "/only-get", "PATCH", json_body={"x": 1})
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD, OPTIONS"
    assert reply.json() == {"error": "Method Not Allowed", "path": "/only-get", "method": "PATCH"}
    # An unknown path is still a 404 with 0.0.31's body.
    missing = fetch(base, "/nothing/here", "PATCH")
    assert (missing.status, missing.json()) == (
        404,
        {"error": "Not Found", "path": "/nothing/here"},
    )


def test_head_answers_for_get_routes(apps: Apps) -> None:
    app = Daebus("head")
    calls: list[str] = []

    @app.route("/doc")
    def doc(req: HttpRequest) -> Any:
        calls.append(req.method)
        return {"title": "hello"}

    base = serve(apps, app).url
    got = fetch(base, "/doc")
    head = fetch(base, "/doc", "HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.header("Content-Length") == got.header("Content-Length") == str(len(got.body))
    assert head.header("Content-Type") == "application/json"
    assert calls == ["GET", "HEAD"]


def test_options_without_cors_answers_allow(apps: Apps) -> None:
    app = Daebus("options")
    app.route("/x", methods=["GET", "PUT"])(lambda req: {})
    base = serve(apps, app).url
    reply = fetch(base, "/x", "OPTIONS", headers={"Origin": "https://a.example"})
    assert reply.status == 204
    assert reply.header("Allow") == "GET, HEAD, OPTIONS, PUT"
    assert reply.header("Access-Control-Allow-Origin") is None
    assert fetch(base, "/y", "OPTIONS").status == 404


def test_malformed_json_gets_400_promptly(apps: Apps) -> None:
    app = Daebus("bad_json")
    called = threading.Event()

    @app.route("/in", methods=["POST"])
    def take(req: HttpRequest) -> Any:
        called.set()
        return {}

    base = serve(apps, app).url
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5.0)
    try:
        body = b'{"name": "Ada",'
        conn.request("POST", "/in", body=body, headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        assert reply.status == 400
        error = json.loads(reply.read())["error"]
        assert error.startswith("Malformed JSON body")
        # The connection is still good for another request (keep-alive).
        conn.request("POST", "/in", body=b"{}", headers={"Content-Type": "application/json"})
        second = conn.getresponse()
        assert (second.status, json.loads(second.read())) == (200, {})
    finally:
        conn.close()
    assert called.is_set()


def test_oversized_body_gets_413(apps: Apps) -> None:
    app = Daebus("big_body")
    calls: list[int] = []

    @app.route("/up", methods=["POST"])
    def up(req: HttpRequest) -> Any:
        calls.append(len(req.body))
        return {"n": len(req.body)}

    base = serve(apps, app, max_body_size=1000).url
    fits = fetch(base, "/up", "POST", body=b"x" * 1000, headers={"Content-Type": "text/plain"})
    assert fits.json() == {"n": 1000}
    declared = fetch(base, "/up", "POST", body=b"x" * 5000, headers={"Content-Type": "text/plain"})
    assert declared.status == 413
    assert declared.json()["max_size"] == 1000

    # Chunked, with no Content-Length to refuse up front: cut off once over the limit.
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5.0)
    try:
        chunks = iter([b"y" * 600, b"y" * 600, b"y" * 600])
        conn.request("POST", "/up", body=chunks, encode_chunked=True)
        reply = conn.getresponse()
        assert reply.status == 413
        reply.read()
    finally:
        conn.close()
    assert calls == [1000]


def test_slow_body_is_cut_off(apps: Apps) -> None:  # slowloris on the body
    app = Daebus("slow_body")
    called = threading.Event()
    app.route("/in", methods=["POST"])(lambda req: called.set())
    base = serve(apps, app, read_timeout=0.5).url
    started = time.monotonic()
    with contextlib.closing(raw_connection(base)) as sock:
        sock.sendall(
            b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"partial": '
        )
        answer = read_until_closed(sock, timeout=5.0)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"Request Timeout" in answer
    assert time.monotonic() - started < 4.0
    assert not called.is_set()


def test_slow_request_head_is_cut_off(apps: Apps) -> None:  # slowloris on the head
    app = Daebus("slow_head")
    app.route("/")(lambda req: {})
    base = serve(apps, app, keepalive_timeout=0.5).url
    started = time.monotonic()
    with contextlib.closing(raw_connection(base)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert read_until_closed(sock, timeout=5.0) == b""
    assert time.monotonic() - started < 4.0


def test_cors_credentialed_request_from_unlisted_origin_gets_no_acao(apps: Apps) -> None:
    app = Daebus("cors_list")
    app.route("/me")(lambda req: {"user": "ada"})
    config = {"allowed_origins": ["https://app.example"], "allow_credentials": True}
    base = serve(apps, app, cors_config=config).url
    evil = {"Origin": "https://evil.example", "Cookie": "session=1"}
    reply = fetch(base, "/me", headers=evil)
    assert reply.status == 200
    assert reply.header("Access-Control-Allow-Origin") is None
    assert reply.header("Access-Control-Allow-Credentials") is None
    preflight = fetch(
        base, "/me", "OPTIONS", headers={**evil, "Access-Control-Request-Method": "GET"}
    )
    assert preflight.header("Access-Control-Allow-Origin") is None
    assert preflight.header("Access-Control-Allow-Methods") is None
    good = fetch(base, "/me", headers={"Origin": "https://app.example"})
    assert good.header("Access-Control-Allow-Origin") == "https://app.example"
    assert good.header("Access-Control-Allow-Credentials") == "true"


def test_cors_wildcard_with_credentials_never_reflects_the_origin(apps: Apps) -> None:
    app = Daebus("cors_star")
    app.route("/me")(lambda req: {"user": "ada"})
    base = serve(apps, app, cors_config={"allowed_origins": "*", "allow_credentials": True}).url
    for reply in (
        fetch(base, "/me", headers={"Origin": "https://evil.example"}),
        fetch(
            base,
            "/me",
            "OPTIONS",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        ),
    ):
        assert reply.header("Access-Control-Allow-Origin") == "*"
        assert reply.header("Access-Control-Allow-Credentials") is None


def test_path_parameters_are_percent_decoded_and_converted(apps: Apps) -> None:
    app = Daebus("params")
    seen: list[Any] = []

    @app.route("/files/<name>")
    def file(req: HttpRequest, name: str) -> Any:
        return {"name": name, "payload": req.payload}

    @app.route("/items/<int:item_id>/<float:ratio>")
    def item(req: HttpRequest, item_id: int, ratio: float) -> Any:
        seen.append((item_id, ratio))
        return {"item_id": item_id, "ratio": ratio}

    @app.route("/tree/<path:rest>")
    def tree(req: HttpRequest, rest: str) -> Any:
        return {"rest": rest}

    @app.route("/orders/<uuid:order>")
    def order(req: HttpRequest, order: uuid.UUID) -> Any:
        return {"order": order.hex}

    base = serve(apps, app).url
    got = fetch(base, "/files/caf%C3%A9%20au%2Flait").json()
    # One segment, decoded; path parameters are also in the payload (as the guide says).
    assert got == {"name": "café au/lait", "payload": {"name": "café au/lait"}}
    huge = "9" * 5000  # more digits than int() converts: no match, not a 500
    assert fetch(base, f"/items/{huge}/0.5").status == 404
    assert fetch(base, "/items/7/0.5").json() == {"item_id": 7, "ratio": 0.5}
    assert seen == [(7, 0.5)]
    assert fetch(base, "/items/seven/0.5").status == 404
    assert fetch(base, "/tree/a/b%20c/d").json() == {"rest": "a/b c/d"}
    some = uuid.uuid4()
    assert fetch(base, f"/orders/{some}").json() == {"order": some.hex}
    assert fetch(base, "/orders/not-a-uuid").status == 404
    assert fetch(base, "/files/").status == 404  # a parameter is never empty


def test_route_definition_errors_fail_at_registration(apps: Apps) -> None:
    app = Daebus("bad_routes")
    app.attach(DaebusHttp(port=0))
    with pytest.raises(SetupError, match="unknown converter 'integer'"):
        app.route("/a/<integer:x>")(lambda req, x: {})
    before = Daebus("bad_routes_before")  # no DaebusHttp yet: still checked at once

    def no_request_argument() -> Any:
        return {}

    with pytest.raises(SetupError, match=r"cannot be called as handler\(req\)"):
        before.route("/b")(no_request_argument)
    assert before.routes == []  # nothing registered: later routes are unaffected
    before.route("/b")(lambda req: {})
    bp = Blueprint("bad")
    with pytest.raises(SetupError, match=r"handler\(req, x\)"):
        bp.route("/c/<x>")(lambda req: {})  # no parameter x


def test_registering_routes_does_not_import_aiohttp() -> None:
    # A fresh interpreter: this one imported aiohttp long ago.
    code = (
        "import sys\n"
        "from daebus import Blueprint, Daebus\n"
        "app = Daebus('no_aiohttp')\n"
        "app.route('/a/<int:x>', methods=['GET', 'POST'])(lambda req, x: x)\n"
        "bp = Blueprint('bp')\n"
        "bp.route('/b/<path:rest>')(lambda req, rest: rest)\n"
        "app.register_blueprint(bp)\n"
        "assert len(app.routes) == 2, app.routes\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] == 'aiohttp')\n"
        "assert not loaded, loaded\n"
        "assert 'daebus.http' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


def test_query_string_on_post_and_repeated_keys(apps: Apps) -> None:
    app = Daebus("query")

    @app.route("/q", methods=["GET", "POST", "DELETE"])
    def q(req: HttpRequest) -> Any:
        return {
            "payload": req.payload,
            "query": {key: req.query.getall(key) for key in req.query},
            "params": req.params,
        }

    base = serve(apps, app).url
    got = fetch(base, "/q?tag=a&tag=b&empty=").json()
    assert got["payload"] == {"tag": "b", "empty": ""}
    assert got["query"] == {"tag": ["a", "b"], "empty": [""]}
    assert got["params"] == {"tag": "b", "empty": ""}
    posted = fetch(base, "/q?page=2", "POST", json_body={"name": "Ada"}).json()
    assert posted["payload"] == {"name": "Ada"}
    assert posted["query"] == {"page": ["2"]}
    # An empty JSON object is the payload (0.0.31 fell through to the query).
    assert fetch(base, "/q?page=2", "POST", json_body={}).json()["payload"] == {}
    assert fetch(base, "/q?x=1", "DELETE").json()["payload"] == {"x": "1"}


async def test_multipart_form_with_a_file(apps: Apps) -> None:
    app = Daebus("multipart")

    @app.route("/upload", methods=["POST"])
    def upload(req: HttpRequest) -> Any:
        upload = req.files["photo"]
        return {
            "payload": req.payload,
            "filename": upload.filename,
            "content_type": upload.content_type,
            "content": upload.file.read().decode(),
            "tags": req.form.getall("tag"),
        }

    base = serve(apps, app).url
    form = aiohttp.FormData()
    form.add_field("title", "holiday")
    form.add_field("tag", "sea")
    form.add_field("tag", "sun")
    form.add_field("photo", b"not really a jpeg", filename="beach.jpg", content_type="image/jpeg")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/upload", data=form) as reply,
    ):
        assert reply.status == 200
        got = await reply.json()
    assert got == {
        "payload": {"title": "holiday", "tag": "sun"},
        "filename": "beach.jpg",
        "content_type": "image/jpeg",
        "content": "not really a jpeg",
        "tags": ["sea", "sun"],
    }


def test_form_body_on_put(apps: Apps) -> None:
    app = Daebus("put_form")
    app.route("/settings", methods=["PUT"])(lambda req: req.payload)
    base = serve(apps, app).url
    reply = fetch(
        base,
        "/settings",
        "PUT",
        body="volume=7&mute=&name=caf%C3%A9",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.json() == {"volume": "7", "mute": "", "name": "café"}


def test_failing_handler_gets_a_generic_500(apps: Apps, caplog: pytest.LogCaptureFixture) -> None:
    app = Daebus("fails")

    @app.route("/boom")
    def boom(req: HttpRequest) -> Any:
        raise ValueError("db password is hunter2")

    base = serve(apps, app).url
    reply = fetch(base, "/boom")
    assert reply.status == 500
    assert reply.json() == {"error": "Internal Server Error"}
    assert b"hunter2" not in reply.body
    failure = next(r for r in caplog.records if "the handler" in r.getMessage())
    assert failure.exc_info is not None  # logged with its traceback
    assert "hunter2" in str(failure.exc_info[1])


def test_failing_handler_shows_the_exception_in_debug(apps: Apps) -> None:
    app = Daebus("fails_debug")
    app.route("/boom")(lambda req: 1 / 0)
    base = serve(apps, app, debug=True).url
    reply = fetch(base, "/boom")
    assert reply.status == 500
    assert reply.json() == {
        "error": "Internal Server Error",
        "details": "ZeroDivisionError: division by zero",
    }


def test_sync_handlers_run_off_the_loop(apps: Apps) -> None:
    app = Daebus("off_loop", max_workers=4)
    release = threading.Event()
    entered = threading.Event()
    threads: dict[str, int] = {}

    @app.route("/block")
    def block(req: HttpRequest) -> Any:
        threads["sync"] = threading.get_ident()
        entered.set()
        assert release.wait(10)
        return {"released": True}

    @app.route("/ping")
    async def ping(req: HttpRequest) -> Any:
        threads["async"] = threading.get_ident()
        return {"pong": True}

    base = serve(apps, app).url
    blocked: list[Reply] = []
    waiter = threading.Thread(target=lambda: blocked.append(fetch(base, "/block", timeout=10)))
    waiter.start()
    try:
        assert entered.wait(5)
        # The sync handler is still blocked, and the loop answers anyway.
        assert fetch(base, "/ping").json() == {"pong": True}
        assert not blocked
    finally:
        release.set()
        waiter.join(10)
    assert blocked[0].json() == {"released": True}
    assert threads["sync"] != threads["async"]
    assert threads["async"] != threading.get_ident()


def test_request_and_response_proxies_in_sync_and_async_routes(apps: Apps) -> None:
    app = Daebus("proxies")

    @app.route("/sync/<name>", methods=["POST"])
    def sync_route(req: HttpRequest, name: str) -> Any:
        assert request.payload is req.payload
        return response.send(
            {
                "name": name,
                "payload": request.payload,
                "method": request.method,
                "request_id": request.request_id,
                "service": request.service,
                "reply_to": request.reply_to,
            },
            202,
        )

    @app.route("/async")
    async def async_route(req: HttpRequest) -> Any:
        await asyncio.sleep(0)
        return response.error(f"no {request.payload['what']}", 422)

    base = serve(apps, app).url
    got = fetch(base, "/sync/ada", "POST", json_body={"n": 1})
    assert got.status == 202
    body = got.json()
    assert body["request_id"].startswith("http-")
    del body["request_id"]
    assert body == {
        "name": "ada",
        "payload": {"n": 1, "name": "ada"},
        "method": "POST",
        "service": "http",
        "reply_to": None,
    }
    err = fetch(base, "/async?what=luck")
    assert (err.status, err.json()) == (422, {"status": "error", "error": "no luck"})


def test_path_parameters_reach_every_kind_of_route_handler(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    app = Daebus("kinds")

    @app.route("/async/<int:n>")
    async def async_route(req: HttpRequest, n: int) -> Any:
        return {"n": n, "path": request.path}

    async def inner(req: HttpRequest, n: int) -> Any:
        return {"n": n, "inner": True}

    @app.route("/wrapped/<int:n>")
    def wrapped(req: HttpRequest, **params: Any) -> Any:  # a decorator around an async def
        return inner(req, **params)

    # HTTP answers once: a route that yields parts fails, as 0.0.31's did.
    @app.route("/parts/<int:n>")
    def parts(req: HttpRequest, n: int) -> Any:
        yield n

    @app.route("/async-parts/<int:n>")
    async def async_parts(req: HttpRequest, n: int) -> Any:
        yield n

    base = serve(apps, app).url
    assert fetch(base, "/async/3").json() == {"n": 3, "path": "/async/3"}
    assert fetch(base, "/wrapped/4").json() == {"n": 4, "inner": True}
    for path in ("/parts/5", "/async-parts/6"):
        reply = fetch(base, path)
        assert (reply.status, reply.json()) == (500, {"error": "Internal Server Error"}), path
    failures = [r for r in caplog.records if "the handler" in r.getMessage()]
    assert [type(r.exc_info[1]) for r in failures if r.exc_info] == [TypeError, TypeError]


def test_routes_registered_before_attach_and_by_blueprint_are_served(apps: Apps) -> None:
    app = Daebus("order")
    app.route("/early")(lambda req: {"early": True})
    bp = Blueprint("bp")
    bp.route("/from-blueprint", methods=["GET", "POST"])(lambda req: {"bp": req.method})
    app.register_blueprint(bp)
    http_component = app.attach(DaebusHttp(port=0, host="127.0.0.1"))
    app.route("/late")(lambda req: {"late": True})
    apps.start(app)
    base = http_component.url
    assert fetch(base, "/early").json() == {"early": True}
    assert fetch(base, "/from-blueprint", "POST").json() == {"bp": "POST"}
    assert fetch(base, "/late").json() == {"late": True}
    # A route added while the service runs is served at once.
    assert fetch(base, "/later").status == 404
    app.route("/later")(lambda req: {"later": True})
    assert fetch(base, "/later").json() == {"later": True}


def test_port_taken_fails_the_start(apps: Apps) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = Daebus("port_taken")
        app.route("/")(lambda req: {})
        app.attach(DaebusHttp(port=port, host="127.0.0.1"))
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}") as failure:
            apps.start(app)
        assert "another program" in str(failure.value)
        assert not app.is_running()
        assert not app.http.is_running


def test_stop_does_not_wait_for_ever_on_a_stalled_request(apps: Apps) -> None:
    app = Daebus("stalled", shutdown_timeout=0.5)
    app.route("/in", methods=["GET", "POST"])(lambda req: {})
    base = serve(apps, app, read_timeout=60).url
    with (
        contextlib.closing(raw_connection(base)) as stalled,
        contextlib.closing(raw_connection(base)) as idle,
    ):
        # An idle keep-alive connection, after one request...
        idle.sendall(b"GET /in HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
        # ... and a request whose body never comes.
        stalled.sendall(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        wait_for(lambda: app.http._runner.server.requests_count == 2)
        started = time.monotonic()
        app.stop()
        assert time.monotonic() - started < 5.0
        assert not app.is_running()
        read_until_closed(stalled, timeout=5.0)
        assert read_until_closed(idle, timeout=5.0) == b""


# -- the rest ---------------------------------------------------------------------------


def test_port_zero_gives_the_real_port_and_keep_alive_works(apps: Apps) -> None:
    app = Daebus("keepalive")
    app.route("/n/<int:n>")(lambda req, n: {"n": n})
    http_component = serve(apps, app)
    assert http_component.port > 0
    assert http_component.url == f"http://127.0.0.1:{http_component.port}"
    conn = http.client.HTTPConnection("127.0.0.1", http_component.port, timeout=5.0)
    sockets: list[tuple[Any, int]] = []
    try:
        for n in range(3):
            conn.request("GET", f"/n/{n}")
            reply = conn.getresponse()
            assert reply.version == 11
            assert reply.getheader("Content-Length") == str(len(f'{{"n":{n}}}'))
            assert json.loads(reply.read()) == {"n": n}
            assert conn.sock is not None
            sockets.append((conn.sock, conn.sock.getsockname()[1]))
    finally:
        conn.close()
    # http.client opens a new socket when the server has closed the last one: the same
    # socket object and local port for all three means the connection was kept alive.
    assert len({id(sock) for sock, _ in sockets}) == 1
    assert len({port for _, port in sockets}) == 1


def test_return_values(apps: Apps) -> None:
    app = Daebus("returns")
    app.route("/html")(lambda req: "<h1>hi</h1>")
    app.route("/bytes")(lambda req: b"caf\xc3\xa9")
    app.route("/binary")(lambda req: b"\x00\xff")
    app.route("/none")(lambda req: None)
    app.route("/three")(lambda req: ({"a": 1}, 203, {"X-Extra": "yes"}))
    app.route("/triple")(lambda req: ("a", 2, "c"))  # not (data, status, headers)
    app.route("/pair")(lambda req: ("a", "b"))
    app.route("/raw")(lambda req: web.Response(text="raw!", status=299))
    page = "<h1>opt-in</h1>"
    app.route("/page")(lambda req: web.Response(text=page, content_type="text/html"))

    @app.route("/status")
    def set_status(req: HttpRequest) -> Any:
        response.set_status(201).set_header("X-Id", "7")
        return {"created": True}

    @app.route("/recorded")
    def recorded(req: HttpRequest) -> Any:
        response.send({"recorded": True}, 202)
        return {"ignored": True}

    @app.route("/unencodable")
    def unencodable(req: HttpRequest) -> Any:
        return {"x": object()}

    base = serve(apps, app).url
    # A string is a JSON string, as in 0.0.31: never HTML a client's input could be
    # reflected into.
    html = fetch(base, "/html")
    assert html.header("Content-Type") == "application/json"
    assert html.json() == "<h1>hi</h1>"
    raw_bytes = fetch(base, "/bytes")  # 0.0.31: bytes as UTF-8 text, else hex
    assert (raw_bytes.header("Content-Type"), raw_bytes.json()) == ("application/json", "café")
    assert fetch(base, "/binary").json() == "00ff"
    assert fetch(base, "/none").body == b"null"
    three = fetch(base, "/three")
    assert (three.status, three.json(), three.header("X-Extra")) == (203, {"a": 1}, "yes")
    triple = fetch(base, "/triple")
    assert (triple.status, triple.json()) == (200, ["a", 2, "c"])
    assert fetch(base, "/pair").json() == ["a", "b"]
    raw = fetch(base, "/raw")
    assert (raw.status, raw.body) == (299, b"raw!")
    opted_in = fetch(base, "/page")
    assert opted_in.header("Content-Type") == "text/html; charset=utf-8"
    assert opted_in.body == page.encode()
    status = fetch(base, "/status")
    assert (status.status, status.json(), status.header("X-Id")) == (201, {"created": True}, "7")
    assert fetch(base, "/recorded").json() == {"recorded": True}
    failed = fetch(base, "/unencodable")
    assert (failed.status, failed.json()) == (500, {"error": "Internal Server Error"})


def test_bad_statuses_give_a_logged_500(apps: Apps, caplog: pytest.LogCaptureFixture) -> None:
    app = Daebus("bad_status")
    app.route("/small")(lambda req: ({"x": 1}, 42))
    app.route("/informational")(lambda req: ({"x": 1}, 101))
    app.route("/large")(lambda req: response.send({"x": 1}, 600))
    app.route("/fine")(lambda req: ({"x": 1}, 599))
    base = serve(apps, app).url
    for path, status in (("/small", 42), ("/informational", 101), ("/large", 600)):
        reply = fetch(base, path)
        assert (reply.status, reply.json()) == (500, {"error": "Internal Server Error"}), path
        assert any(
            r.levelno == logging.ERROR and f"{status} is not an HTTP status" in r.getMessage()
            for r in caplog.records
        ), path
    assert fetch(base, "/fine").status == 599


def test_set_header_replaces_single_valued_headers(apps: Apps) -> None:
    app = Daebus("set_header")

    @app.route("/typed")
    def typed(req: HttpRequest) -> Any:
        response.set_header("Content-Type", "application/vnd.daebus+json")
        response.set_header("X-Twice", "1").set_header("X-Twice", "2")
        response.set_header("Set-Cookie", "a=1").set_header("Set-Cookie", "b=2")
        return {"ok": True}

    @app.route("/tuple")
    def with_tuple(req: HttpRequest) -> Any:
        response.set_header("X-Both", "from set_header")
        return {"ok": True}, 200, {"X-Both": "from the tuple", "Cache-Control": "no-store"}

    base = serve(apps, app).url
    typed_reply = fetch(base, "/typed")
    assert typed_reply.headers.get_all("Content-Type") == ["application/vnd.daebus+json"]
    assert typed_reply.headers.get_all("X-Twice") == ["2"]
    assert typed_reply.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert typed_reply.json() == {"ok": True}
    tuple_reply = fetch(base, "/tuple")
    assert tuple_reply.headers.get_all("X-Both") == ["from the tuple"]
    assert tuple_reply.header("Cache-Control") == "no-store"


def test_http_response_by_hand() -> None:
    resp = HttpResponse(None)
    assert resp.send({"a": 1}) == ({"a": 1}, 200)
    assert resp.error("nope") == ({"error": "nope"}, 400)
    assert resp.get_response() == ({"status": "error", "error": "nope"}, 400)
    assert resp.success([1], 201) == ([1], 201)
    req = HttpRequest({"method": "post", "path": "/p", "headers": {"X-A": "1"}, "json": {}})
    assert (req.method, req.payload, req.headers["x-a"]) == ("POST", {}, "1")


def test_json_sent_as_text_plain_by_fetch_is_understood(apps: Apps) -> None:
    app = Daebus("text_plain")
    app.route("/in", methods=["POST"])(lambda req: {"payload": req.payload, "text": req.text})
    http_component = serve(apps, app)
    base = http_component.url
    # What a browser's fetch(url, {method: "POST", body: JSON.stringify(x)}) sends,
    # from the page's own origin (or from a client that is no browser: no Origin).
    own_origin = f"http://127.0.0.1:{http_component.port}"
    for extra in ({}, {"Origin": own_origin}):
        headers = {"Content-Type": "text/plain;charset=UTF-8", **extra}
        got = fetch(base, "/in", "POST", body='{"a": 1}', headers=headers)
        assert got.json() == {"payload": {"a": 1}, "text": '{"a": 1}'}, extra
    plain = fetch(base, "/in?q=1", "POST", body="hello", headers={"Content-Type": "text/plain"})
    assert plain.json() == {"payload": {"q": "1"}, "text": "hello"}


def test_cross_site_text_plain_is_not_taken_as_json(apps: Apps) -> None:
    # A cross-site text/plain POST needs no CORS preflight: even on a route that takes
    # other origins' POSTs, it must not reach the handler as JSON (the payload is then
    # the query, and the body is left in req.text).
    app = Daebus("text_plain_csrf")
    app.route("/in", methods=["POST"])(
        cross_origin(lambda req: {"payload": req.payload, "json": req.json})
    )
    base = serve(apps, app).url
    for origin in ("https://evil.example", "null", "http://127.0.0.1:1"):
        headers = {"Content-Type": "text/plain", "Origin": origin}
        got = fetch(base, "/in?q=1", "POST", body='{"admin": true}', headers=headers)
        assert got.json() == {"payload": {"q": "1"}, "json": None}, origin
        no_type = fetch(base, "/in", "POST", body='{"admin": true}', headers={"Origin": origin})
        assert no_type.json() == {"payload": {}, "json": None}, origin
    # Declared JSON is JSON whatever the origin: a browser preflights it (CORS decides).
    declared = fetch(
        base,
        "/in",
        "POST",
        json_body={"a": 1},
        headers={"Origin": "https://evil.example"},
    )
    assert declared.json() == {"payload": {"a": 1}, "json": {"a": 1}}


def test_cross_origin_state_changing_requests_are_refused_before_the_handler(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    app = Daebus("cross_origin")
    ran: list[str] = []

    @app.route("/in", methods=["POST", "PUT", "DELETE", "PATCH"])
    def take(req: HttpRequest) -> Any:
        ran.append(req.method)
        return {"ran": True}

    @app.route("/hook", methods=["POST"])
    @cross_origin
    def hook(req: HttpRequest) -> Any:
        ran.append("hook")
        return {"ran": True}

    app.route("/read")(lambda req: {"read": True})
    http_component = serve(apps, app)
    base, port = http_component.url, http_component.port
    caplog.set_level(logging.WARNING)
    foreign = (
        "https://evil.example",
        "null",
        f"http://127.0.0.1:{port + 1}",  # the same host, another port: another origin
        f"http://127.0.0.1.evil.example:{port}",
        "file://",
        "",
        "http://[::1",  # not even a URL
    )
    for origin in foreign:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            headers = {"Content-Type": "text/plain", "Origin": origin}
            reply = fetch(base, "/in", method, body="x", headers=headers)
            assert reply.status == 403, (origin, method, reply.body)
            assert reply.json() == {"error": "Forbidden: cross-origin request"}
            assert reply.header("Access-Control-Allow-Origin") is None
    assert ran == []
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused POST /in")]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]  # not once each
    assert refusals[0].levelno == logging.WARNING
    # Safe methods, clients that are not browsers and the page's own origin go through.
    assert fetch(base, "/read", headers={"Origin": "https://evil.example"}).status == 200
    assert fetch(base, "/in", "POST", body="x").status == 200
    for own in (f"http://127.0.0.1:{port}", f"HTTP://127.0.0.1:{port}/"):
        assert fetch(base, "/in", "POST", body="x", headers={"Origin": own}).status == 200
    # Behind a proxy that ends TLS: the browser's origin names the Host it sent.
    proxied = {"Origin": "https://example.com", "Host": "example.com"}
    assert fetch(base, "/in", "PUT", body="x", headers=proxied).status == 200
    assert ran == ["POST", "POST", "POST", "PUT"]
    # A handler marked cross_origin takes any origin's POST.
    hooked = fetch(base, "/hook", "POST", body="x", headers={"Origin": "https://evil.example"})
    assert (hooked.status, ran[-1]) == (200, "hook")


def test_cross_origin_posts_from_origins_cors_config_allows(apps: Apps) -> None:
    app = Daebus("cross_origin_cors")
    app.route("/in", methods=["POST"])(lambda req: {"ran": True})
    listed = serve(apps, app, cors_config={"allowed_origins": ["https://app.example"]}).url
    allowed = fetch(listed, "/in", "POST", body="x", headers={"Origin": "https://APP.example/"})
    assert (allowed.status, allowed.header("Access-Control-Allow-Origin")) == (
        200,
        "https://APP.example/",
    )
    refused = fetch(listed, "/in", "POST", body="x", headers={"Origin": "https://evil.example"})
    assert refused.status == 403
    assert "Origin" in (refused.header("Vary") or "")
    # "*" lets every origin send, as it lets every origin read.
    anyone = Daebus("cross_origin_star")
    anyone.route("/in", methods=["POST"])(lambda req: {"ran": True})
    star = serve(apps, anyone, cors_config={"allowed_origins": "*"}).url
    reply = fetch(star, "/in", "POST", body="x", headers={"Origin": "https://evil.example"})
    assert (reply.status, reply.header("Access-Control-Allow-Origin")) == (200, "*")


def test_cross_origin_marks_functions_only() -> None:
    class Handlers:
        def take(self, req: HttpRequest) -> Any:
            return {}

    with pytest.raises(SetupError, match="mark the function"):
        cross_origin(Handlers().take)
    assert cross_origin(Handlers.take) is Handlers.take


def test_static_files(apps: Apps, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "js").mkdir(parents=True)
    (site / "index.html").write_text("<h1>kiosk</h1>")
    (site / "js" / "app.js").write_text("console.log(1)")
    (site / "js" / ".hidden.js").write_text("hidden")
    (site / ".env").write_text("SECRET=1")
    (site / ".git").mkdir()
    (site / ".git" / "config").write_text("[core]")
    (tmp_path / "secret.txt").write_text("secret")
    (site / "link.txt").symlink_to(tmp_path / "secret.txt")
    app = Daebus("static")
    app.route("/api/ping")(lambda req: {"pong": True})
    http_component = app.attach(DaebusHttp(port=0, host="127.0.0.1"))
    http_component.static("/", site)
    apps.start(app)
    base = http_component.url
    index = fetch(base, "/")
    assert (index.status, index.body) == (200, b"<h1>kiosk</h1>")
    assert index.header("Content-Type") == "text/html"
    assert fetch(base, "/js/app.js").body == b"console.log(1)"
    assert fetch(base, "/api/ping").json() == {"pong": True}  # routes win over files
    assert fetch(base, "/../secret.txt").status == 404
    assert fetch(base, "/%2E%2E/secret.txt").status == 404
    assert fetch(base, "/link.txt").status == 404  # a link out of the folder
    assert fetch(base, "/missing.css").status == 404
    # Dotfiles and dot-folders are never served.
    assert fetch(base, "/.env").status == 404
    assert fetch(base, "/%2Eenv").status == 404
    assert fetch(base, "/.git/config").status == 404
    assert fetch(base, "/js/.hidden.js").status == 404
    # Other methods on a file: 405 with Allow (OPTIONS answers); on nothing: 404.
    posted = fetch(base, "/js/app.js", "POST", body=b"x")
    assert (posted.status, posted.header("Allow")) == (405, "GET, HEAD, OPTIONS")
    options = fetch(base, "/js/app.js", "OPTIONS")
    assert (options.status, options.header("Allow")) == (204, "GET, HEAD, OPTIONS")
    assert fetch(base, "/missing.css", "POST", body=b"x").status == 404
    with pytest.raises(SetupError):
        http_component.static("/x", tmp_path / "no-such-folder")


def test_mounts_and_component_mounts(apps: Apps) -> None:
    async def raw(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"raw {request.path}")

    class Mounting:
        """A component of the app's own (daebus.components) that mounts a path."""

        stopped = 0

        def attach(self, app: Daebus) -> None:
            pass

        def refresh_handlers(self, app: Daebus) -> None:
            pass

        async def start_async(self, app: Daebus) -> None:
            pass

        async def stop_async(self) -> None:
            self.stopped += 1

        def http_mounts(self, app: Daebus) -> list[tuple[str, Any]]:
            return [("/ws", raw)]

    app = Daebus("mounts")
    app.route("/api")(lambda req: {"api": True})
    http_component = app.attach(DaebusHttp(port=0, host="127.0.0.1"))
    http_component.mount("/raw", raw)
    mounting = app.attach(Mounting())
    assert isinstance(mounting, Component)
    assert isinstance(mounting, MountProvider)
    apps.start(app)
    base = http_component.url
    assert fetch(base, "/raw").body == b"raw /raw"
    assert fetch(base, "/ws").body == b"raw /ws"
    assert fetch(base, "/api").json() == {"api": True}
    assert fetch(base, "/raw", "HEAD").status == 200
    not_get = fetch(base, "/ws", "POST")
    assert (not_get.status, not_get.header("Allow")) == (405, "GET, HEAD, OPTIONS")
    app.stop()
    assert mounting.stopped == 2  # by the app, and by DaebusHttp before its own wait


def test_daebus_http_is_a_component() -> None:
    # mypy checks the signatures (daebus/http/_component.py); this, that nothing is missing.
    http_component = DaebusHttp(port=0)
    assert isinstance(http_component, Component)
    assert not isinstance(http_component, MountProvider)  # it serves mounts, has none
    app = Daebus("typed_attach")
    assert app.attach(http_component) is http_component
    assert app.http is http_component


def test_http_route_decorator_and_routes_attribute(apps: Apps) -> None:
    http_component = DaebusHttp(port=0, host="127.0.0.1")
    with pytest.raises(SetupError, match="not attached"):
        http_component.route("/x")
    app = Daebus("http_route")
    app.attach(http_component)

    @http_component.route("/x", methods=["GET", "PUT"])
    def x(req: HttpRequest) -> Any:
        return {"method": req.method}

    @http_component.route("/x", methods=["DELETE"])
    def delete_x(req: HttpRequest) -> Any:
        return {"deleted": True}

    @app.route("/y/<int:n>")
    def y(req: HttpRequest, n: int) -> Any:
        return {"n": n}

    # 0.0.31's shape: path -> {"function", "methods"}; read-only.
    routes = http_component.routes
    assert list(routes) == ["/x", "/y/<int:n>"]
    assert routes["/x"]["function"] is delete_x  # the last registration on the path
    assert routes["/x"]["methods"] == ["GET", "PUT", "DELETE"]
    assert routes["/x"]["handlers"] == {"GET": x, "PUT": x, "DELETE": delete_x}
    assert routes["/y/<int:n>"] == {"function": y, "methods": ["GET"], "handlers": {"GET": y}}
    with pytest.raises(TypeError):
        routes["/z"] = {}  # type: ignore[index]
    apps.start(app)
    assert fetch(http_component.url, "/x", "PUT").json() == {"method": "PUT"}
    assert fetch(http_component.url, "/x", "DELETE").json() == {"deleted": True}


def test_path_parameters_win_in_a_copy_of_the_payload(apps: Apps) -> None:
    app = Daebus("params_payload")

    @app.route("/users/<int:user_id>", methods=["POST"])
    def update(req: HttpRequest, user_id: int) -> Any:
        return {"payload": req.payload, "json": req.json, "params": req.params}

    base = serve(apps, app).url
    # The body cannot change which user the route matched; req.json is what was sent.
    got = fetch(base, "/users/7?user_id=8", "POST", json_body={"user_id": 9, "name": "Ada"})
    assert got.json() == {
        "payload": {"user_id": 7, "name": "Ada"},
        "json": {"user_id": 9, "name": "Ada"},
        "params": {"user_id": 7},
    }
    from_query = fetch(base, "/users/7?user_id=8&x=1", "POST").json()
    assert from_query["payload"] == {"user_id": 7, "x": "1"}
    assert from_query["params"] == {"user_id": 7, "x": "1"}
    # A body that is not an object is the payload as it is.
    assert fetch(base, "/users/7", "POST", json_body=[1, 2]).json()["payload"] == [1, 2]


def test_malformed_bodies_get_400_not_500(apps: Apps, caplog: pytest.LogCaptureFixture) -> None:
    app = Daebus("bad_bodies")
    called: list[str] = []

    @app.route("/in", methods=["POST"])
    def take(req: HttpRequest) -> Any:
        called.append(req.text)
        return {"payload": req.payload}

    base = serve(apps, app).url
    boundary = "XyZ"
    broken_part = (
        f"--{boundary}\r\nContent-Disposition form-data; name=a\r\n\r\n1\r\n--{boundary}--\r\n"
    )
    cases = {
        "a multipart part with a broken header": (
            f"multipart/form-data; boundary={boundary}",
            broken_part.encode(),
        ),
        "an unknown charset": ("application/x-www-form-urlencoded; charset=nope", b"a=1"),
        "a form that is not UTF-8": ("application/x-www-form-urlencoded", b"a=\xff\xfe"),
        "a multipart body without its end": (
            f"multipart/form-data; boundary={boundary}",
            f'--{boundary}\r\nContent-Disposition: form-data; name="a"\r\n\r\n1'.encode(),
        ),
    }
    for what, (ctype, body) in cases.items():
        caplog.clear()
        reply = fetch(base, "/in", "POST", body=body, headers={"Content-Type": ctype})
        assert reply.status == 400, (what, reply.body)
        assert reply.json()["error"].startswith("Malformed request body"), what
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], what
        warned = [r for r in caplog.records if "malformed body" in r.getMessage()]
        assert warned, what
        assert warned[0].levelno == logging.WARNING
        assert warned[0].exc_info is None, what
    assert called == []
    # An unknown charset on a body that is not parsed: req.text falls back to UTF-8.
    text = fetch(
        base, "/in", "POST", body=b"caf\xc3\xa9", headers={"Content-Type": "x/y; charset=nope"}
    )
    assert (text.status, called) == (200, ["café"])


async def test_oversized_multipart_gets_413(apps: Apps) -> None:
    app = Daebus("big_multipart")
    called = threading.Event()
    app.route("/upload", methods=["POST"])(lambda req: called.set())
    base = serve(apps, app, max_body_size=1000).url
    form = aiohttp.FormData()
    form.add_field("photo", b"x" * 5000, filename="big.jpg", content_type="image/jpeg")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/upload", data=form, chunked=True) as reply,
    ):
        assert reply.status == 413
        assert (await reply.json())["max_size"] == 1000
    assert not called.is_set()


def test_expect_100_continue_refuses_a_declared_oversized_body_first(apps: Apps) -> None:
    app = Daebus("expect")
    app.route("/up", methods=["POST"])(lambda req: {"n": len(req.body)})
    base = serve(apps, app, max_body_size=1000).url
    head = "POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n"
    with contextlib.closing(raw_connection(base)) as sock:
        sock.sendall(head.format(5000).encode())
        answer = b""
        while b'"max_size":1000}' not in answer:  # the client sends nothing meanwhile
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"Connection: close" in answer
    assert b"100 Continue" not in answer
    with contextlib.closing(raw_connection(base)) as sock:
        sock.sendall(head.format(3).encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"abc")
        assert b'{"n":3}' in sock.recv(65536)


def test_preflight_echoing_requested_headers_varies_on_them(apps: Apps) -> None:
    app = Daebus("cors_vary")
    app.route("/x", methods=["POST"])(lambda req: {})
    base = serve(apps, app, cors_config={"allowed_origins": ["https://app.example"]}).url
    preflight = fetch(
        base,
        "/x",
        "OPTIONS",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-token",
        },
    )
    assert preflight.header("Access-Control-Allow-Headers") == "x-token"
    vary = [v.strip() for v in (preflight.header("Vary") or "").split(",")]
    assert "Origin" in vary
    assert "Access-Control-Request-Headers" in vary


def test_system_exit_in_a_handler_does_not_stop_the_service(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    app = Daebus("system_exit")

    @app.route("/exit")
    def leave(req: HttpRequest) -> Any:
        sys.exit(3)

    @app.route("/exit-async")
    async def leave_async(req: HttpRequest) -> Any:
        raise SystemExit(4)

    app.route("/ping")(lambda req: {"pong": True})
    base = serve(apps, app).url
    for path in ("/exit", "/exit-async"):
        reply = fetch(base, path)
        assert (reply.status, reply.json()) == (500, {"error": "Internal Server Error"}), path
    assert app.is_running()
    assert fetch(base, "/ping").json() == {"pong": True}
    failures = [r for r in caplog.records if "the handler" in r.getMessage()]
    assert [type(r.exc_info[1]) for r in failures if r.exc_info] == [SystemExit, SystemExit]


def test_a_bad_route_does_not_poison_later_ones_and_registering_is_cheap(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Daebus("many_routes")
    http_component = app.attach(DaebusHttp(port=0, host="127.0.0.1"))
    with pytest.raises(SetupError, match="unknown converter"):
        app.route("/bad/<nope:x>")(lambda req, x: {})
    assert app.routes == []  # an invalid pattern is not registered at all
    with pytest.raises(SetupError, match=r"handler\(req, x\)"):
        app.route("/unfit/<x>")(lambda req: {})
    app.route("/after")(lambda req: {"after": True})  # later registrations still work
    # Registering was quadratic: the table was rebuilt, every handler checked again, on
    # each one. Counted rather than timed: each new route is checked twice (by app.route
    # and by the table), never again.
    checked: list[str] = []
    real_check = _routes.check_handler

    def counting_check(path: str, func: Any, names: Any) -> None:
        checked.append(path)
        real_check(path, func, names)

    monkeypatch.setattr(_routes, "check_handler", counting_check)
    monkeypatch.setattr(_registry, "check_handler", counting_check)
    for n in range(500):
        app.route(f"/r{n}/<int:x>")(lambda req, x, n=n: {"n": n, "x": x})
        app.route(f"/s{n}")(lambda req, n=n: {"s": n})
    assert len(checked) == 2 * 1000, len(checked)
    assert set(collections.Counter(checked).values()) == {2}
    apps.start(app)
    base = http_component.url
    assert fetch(base, "/after").json() == {"after": True}
    assert fetch(base, "/r499/3").json() == {"n": 499, "x": 3}
    assert fetch(base, "/s250").json() == {"s": 250}
    assert fetch(base, "/unfit/1").status == 404  # refused, so not served


async def test_concurrent_requests_each_see_their_own_request(apps: Apps) -> None:
    app = Daebus("proxies_concurrent", max_workers=4)

    @app.route("/sync/<int:n>", methods=["POST"])
    def sync_route(req: HttpRequest, n: int) -> Any:
        time.sleep(0.002 * (n % 5))
        assert request.payload is req.payload
        return response.send({"n": n, "i": request.payload["i"], "id": request.request_id})

    @app.route("/async/<int:n>", methods=["POST"])
    async def async_route(req: HttpRequest, n: int) -> Any:
        await asyncio.sleep(0.002 * (n % 5))
        assert request.payload is req.payload
        return response.send({"n": n, "i": request.payload["i"], "id": request.request_id})

    base = serve(apps, app, max_concurrent=200).url

    async def one(session: aiohttp.ClientSession, n: int) -> dict[str, Any]:
        kind = "sync" if n % 2 else "async"
        async with session.post(f"{base}/{kind}/{n}", json={"i": n}) as reply:
            assert reply.status == 200
            body: dict[str, Any] = await reply.json()
            return body

    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(one(session, n) for n in range(120)))
    assert [(a["n"], a["i"]) for a in answers] == [(n, n) for n in range(120)]
    assert len({a["id"] for a in answers}) == 120


def test_past_max_concurrent_503_and_redis_actions_still_answer(apps: Apps) -> None:
    app = Daebus("busy_http", max_workers=2)
    entered = threading.Semaphore(0)
    release = threading.Event()

    @app.action("ping")
    def ping() -> Any:
        return {"pong": True}

    @app.route("/block")
    def block(req: HttpRequest) -> Any:
        entered.release()
        release.wait(20)
        return {"released": True}

    http_component = app.attach(
        DaebusHttp(port=0, host="127.0.0.1", max_concurrent=2, max_workers=2)
    )
    service = apps.start(app)
    base = http_component.url
    replies: list[Reply] = []
    clients = [
        threading.Thread(target=lambda: replies.append(fetch(base, "/block", timeout=25)))
        for _ in range(2)
    ]
    for client in clients:
        client.start()
    try:
        assert entered.acquire(timeout=5)
        assert entered.acquire(timeout=5)
        # Both HTTP threads are busy: more than app.max_workers' worth of blocked routes
        # if the pool were shared. A Redis action still answers...
        caller = apps.caller(service)
        assert caller.send_request("ping", timeout=5) == {"pong": True}
        # ... and the next HTTP request is refused at once instead of queueing.
        started = time.monotonic()
        refused = fetch(base, "/block", timeout=5)
        assert time.monotonic() - started < 4.0  # queued, it would wait out the 5 s
        assert refused.status == 503
        assert refused.header("Retry-After") == "1"
        assert "too many requests" in refused.json()["error"]
    finally:
        release.set()
        for client in clients:
            client.join(10)
    assert [r.json() for r in replies] == [{"released": True}] * 2
    assert fetch(base, "/block").json() == {"released": True}  # a slot is free again


def test_503s_are_logged_once_then_counted(apps: Apps, caplog: pytest.LogCaptureFixture) -> None:
    app = Daebus("busy_log")
    entered = threading.Event()
    release = threading.Event()

    @app.route("/block")
    def block(req: HttpRequest) -> Any:
        entered.set()
        release.wait(20)
        return {"released": True}

    base = serve(apps, app, max_concurrent=1).url
    caplog.set_level(logging.WARNING)
    blocked = threading.Thread(target=fetch, args=(base, "/block"), kwargs={"timeout": 25})
    blocked.start()
    try:
        assert entered.wait(5)
        for _ in range(5):
            assert fetch(base, "/block").status == 503
    finally:
        release.set()
        blocked.join(10)
    app.stop()  # the count held back is logged as the server stops
    line = "HTTP request answered 503: max_concurrent=1 requests in progress"
    lines = [r.getMessage() for r in caplog.records if "answered 503" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0] == line
    assert lines[1].startswith("4 more like this in the last ")
    assert lines[1].endswith(line)


def test_stop_is_bounded_with_stuck_handlers(apps: Apps) -> None:
    app = Daebus("stuck", shutdown_timeout=2.0)
    release = threading.Event()
    entered = threading.Event()
    entered_async = threading.Event()

    @app.route("/stuck")
    def stuck(req: HttpRequest) -> Any:
        entered.set()
        release.wait(30)
        return {"late": True}

    @app.route("/stuck-async")
    async def stuck_async(req: HttpRequest) -> Any:
        entered_async.set()
        await asyncio.sleep(30)
        return {"late": True}

    base = serve(apps, app).url
    outcomes: dict[str, Any] = {}

    def client(path: str) -> None:
        try:
            outcomes[path] = fetch(base, path, timeout=20)
        except (OSError, http.client.HTTPException) as exc:
            outcomes[path] = exc

    threads = [threading.Thread(target=client, args=(path,)) for path in ("/stuck", "/stuck-async")]
    for thread in threads:
        thread.start()
    try:
        assert entered.wait(5)
        assert entered_async.wait(5)
        started = time.monotonic()
        app.stop()
        elapsed = time.monotonic() - started
        assert not app.is_running()
        # One shutdown_timeout (2 s) and a little (app.stop() would give up joining
        # only after 7 s); aiohttp alone waited two timeouts.
        assert elapsed < 3.8, elapsed
        for thread in threads:
            thread.join(10)
        reply = outcomes["/stuck"]
        assert isinstance(reply, Reply), reply
        assert (reply.status, reply.json()) == (503, {"error": "Service Unavailable: stopping"})
        assert isinstance(outcomes["/stuck-async"], (OSError, http.client.HTTPException))
    finally:
        release.set()


#: Requests aiohttp refuses as malformed (400), for the log-flood test.
_MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Ctl: a\x01b\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    # Not the connection's first request: aiohttp logs a first request's bad method
    # quietly (a client speaking another protocol), a later one at ERROR.
    b"GAR\x01BAGE / HTTP/1.1\r\n\r\n",
]


def test_malformed_requests_are_logged_briefly_and_rarely(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    app = Daebus("malformed")
    app.route("/hello")(lambda req: {"hello": True})
    base = serve(apps, app).url
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    started = time.monotonic()
    answers: collections.Counter[bytes] = collections.Counter()
    for i in range(300):
        with contextlib.closing(raw_connection(base)) as sock:
            if i % 2:
                sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                first = b""
                while not first.endswith(b"true}"):
                    first += sock.recv(65536)
            sock.sendall(_MALFORMED[i % len(_MALFORMED)])
            answer = read_until_closed(sock, timeout=5.0)
        answers[answer.split(b" ", 1)[-1].split(b"\r\n", 1)[0]] += 1
    elapsed = time.monotonic() - started
    assert fetch(base, "/hello").json() == {"hello": True}
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "daebus"))]
    assert not [r for r in records if r.exc_info], [r.getMessage()[:200] for r in records][:3]
    assert not [r for r in records if r.levelno >= logging.WARNING]
    # One line per quiet period at most, whatever the number of bad requests.
    assert len(records) <= 2 + elapsed // 10, (len(records), answers)
    assert all(len(r.getMessage()) < 300 for r in records)
    assert answers[b"400 Bad Request"] >= 250, answers
