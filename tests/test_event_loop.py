"""The event loop daebus creates: uvloop where installed, else asyncio's; $DAEBUS_EVENT_LOOP."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

import pytest
import redis

from _apps import Apps
from _helpers import Subscription, unique_name, wait_for
from daebus import Daebus, SetupError, broadcast, request, response
from daebus._portal import Portal
from daebus.runtime.loop import loop_name

pytest.importorskip("uvloop")


def _kind(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``: the package the loop's class comes from."""
    return type(loop).__module__.split(".")[0]


def _loop_app(seen: dict[str, str], channel: str) -> Daebus:
    app = Daebus("loops")

    @app.action("where")
    def where() -> str:
        return seen["service"]

    @app.action("parts")
    async def parts() -> None:
        for part in range(int(request.payload["n"])):
            response.send({"part": part}, final=False)
        await response.send({"done": True})

    @app.listen(channel)
    async def news(data: Any) -> None:
        seen["listener"] = _kind(asyncio.get_running_loop())
        seen["news"] = data

    @app.thread("once")
    async def once() -> None:
        await asyncio.sleep(0)
        seen["thread"] = _kind(asyncio.get_running_loop())

    @app.on_start
    async def started() -> None:
        seen["service"] = _kind(asyncio.get_running_loop())

    return app


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, "uvloop"), ("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")],
)
def test_a_service_runs_on_the_chosen_loop_and_works_there(
    apps: Apps, monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: str
) -> None:
    if setting is None:
        monkeypatch.delenv("DAEBUS_EVENT_LOOP", raising=False)  # CI may set it for the run
    else:
        monkeypatch.setenv("DAEBUS_EVENT_LOOP", setting)
    assert loop_name() == expected
    seen: dict[str, str] = {}
    channel = unique_name("loops-news")
    service = apps.start(_loop_app(seen, channel))
    caller = apps.caller(service, timeout=10)

    assert caller.send_request("where", {}) == expected
    wait_for(lambda: "thread" in seen)
    assert seen["thread"] == expected
    stream = list(caller.stream("parts", {"n": 5}))
    assert stream == [{"part": n} for n in range(5)] + [{"done": True}]
    broadcast.send(channel, {"hello": expected})
    wait_for(lambda: "news" in seen)
    assert seen["listener"] == expected
    assert seen["news"] == {"hello": expected}


@pytest.mark.parametrize(("setting", "expected"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_the_blocking_callers_background_loop_is_the_chosen_one(
    monkeypatch: pytest.MonkeyPatch, setting: str, expected: str
) -> None:
    monkeypatch.setenv("DAEBUS_EVENT_LOOP", setting)
    portal = Portal()
    try:
        assert _kind(portal.loop) == expected
        assert portal.call(asyncio.sleep(0, "ran")) == "ran"
    finally:
        portal.shutdown()
    assert not portal.thread.is_alive()
    assert portal.loop.is_closed()


def test_without_uvloop_auto_falls_back_to_asyncio(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAEBUS_EVENT_LOOP", "auto")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert loop_name() == "asyncio"
    seen: dict[str, str] = {}
    service = apps.start(_loop_app(seen, unique_name("loops-news")))
    assert apps.caller(service, timeout=10).send_request("where", {}) == "asyncio"


def test_asking_for_uvloop_without_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    monkeypatch.setenv("DAEBUS_EVENT_LOOP", "uvloop")
    with pytest.raises(SetupError, match=r"DAEBUS_EVENT_LOOP=uvloop, but uvloop is not installed"):
        Daebus("no-uvloop").start(unique_name("no-uvloop"), redis_url="redis://127.0.0.1:1/0")


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no "coroutine ... was never awaited"
def test_an_unknown_loop_name_is_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("DAEBUS_EVENT_LOOP", "trio")
    app = Daebus("bad-loop")
    ran: list[str] = []

    @app.on_start
    def started() -> None:
        ran.append("started")

    message = r"DAEBUS_EVENT_LOOP='trio': use one of auto, uvloop, asyncio"
    with pytest.raises(SetupError, match=message):
        app.start(unique_name("bad-loop"), redis_url=redis_url)
    with pytest.raises(SetupError, match=message):
        app.run(unique_name("bad-loop"), redis_url=redis_url)
    gc.collect()
    assert ran == []


def test_two_services_on_two_loops_share_a_process(
    apps: Apps, monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_client: redis.Redis
) -> None:
    # Two loops in one process, as when a uvloop service and an asyncio one share it.
    channel = unique_name("loops-news")
    monkeypatch.setenv("DAEBUS_EVENT_LOOP", "uvloop")
    seen_uv: dict[str, str] = {}
    uv_service = apps.start(_loop_app(seen_uv, channel))
    monkeypatch.setenv("DAEBUS_EVENT_LOOP", "asyncio")
    seen_plain: dict[str, str] = {}
    plain_service = apps.start(_loop_app(seen_plain, channel))
    with Subscription(redis_url, channel) as sub:
        redis_client.publish(channel, b'{"to": "both"}')
        assert sub.get_json() == {"to": "both"}
    wait_for(lambda: "news" in seen_uv and "news" in seen_plain)
    assert (seen_uv["listener"], seen_plain["listener"]) == ("uvloop", "asyncio")
    assert apps.caller(uv_service, timeout=10).send_request("where", {}) == "uvloop"
    assert apps.caller(plain_service, timeout=10).send_request("where", {}) == "asyncio"
