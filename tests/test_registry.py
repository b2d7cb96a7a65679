"""Registration: decorators, their add_* twins, blueprints, 0.0.31's table shapes."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

import daebus
from daebus import Blueprint, Daebus, SetupError


def test_decorators_register_and_return_the_function() -> None:
    app = Daebus("reg")

    def handler() -> None: ...

    assert app.action("a")(handler) is handler
    assert app.action(handler) is handler  # bare form: the function's name
    assert app.listen("ch")(handler) is handler
    assert app.background("job", 5)(handler) is handler
    assert app.thread("t", auto_start=False)(handler) is handler
    assert app.on_start()(handler) is handler
    assert app.on_start(handler) is handler
    assert app.action_handlers == {"a": handler, "handler": handler}
    assert app.listen_handlers == {"ch": handler}
    assert app.thread_tasks["t"]["func"] is handler
    assert app.thread_tasks["t"]["auto_start"] is False
    assert app._on_start_handlers == [handler, handler]
    assert list(app.background_tasks[0]) == ["job", 5.0, handler]


def test_new_app_is_empty_and_not_running() -> None:
    app = Daebus("empty")
    assert app.action_handlers == {}
    assert app.listen_handlers == {}
    assert app.background_tasks == []
    assert len(app.background_tasks) == 0
    assert not app.is_running()
    assert app.request is None
    assert app.response is None
    assert app.max_workers == 10
    assert Daebus("big", max_workers=20).max_workers == 20


@pytest.mark.parametrize(("name", "interval"), [("", 0), (None, -1), (3, "60"), ("x", True)])
def test_bad_names_and_intervals_are_refused(name: object, interval: object) -> None:
    app = Daebus("bad")
    if name != "x":
        with pytest.raises(SetupError):
            app.add_action(name, lambda: None)  # type: ignore[arg-type]
    with pytest.raises(SetupError):
        app.add_background("job", interval, lambda: None)  # type: ignore[arg-type]


def test_blueprint_registration_wins_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    app = Daebus("bpapp")
    bp = Blueprint("users")

    def app_get() -> None: ...

    def bp_get() -> None: ...

    app.add_action("get_user", app_get)
    bp.add_action("get_user", bp_get)
    bp.add_background("cleanup", 60, bp_get)
    bp.add_thread("monitor", bp_get)

    def bp_route(req: object) -> None: ...

    bp.route("/users", methods=["get", "POST"])(bp_route)
    bp.socket_connect()(bp_get)
    bp.on_start()(bp_get)
    with caplog.at_level(logging.WARNING, logger="daebus"):
        assert app.register_blueprint(bp) is app
    assert app.action_handlers["get_user"] is bp_get
    assert "replaces the app's action 'get_user'" in caplog.text
    assert app.background_tasks["cleanup"].func is bp_get
    assert app.thread_tasks["monitor"].func is bp_get
    assert app._on_start_handlers == [bp_get]
    assert app.routes == [("/users", ["GET", "POST"], bp_route)]
    assert app.socket_handlers == {"connect": bp_get}


def test_a_registered_blueprint_refuses_changes_that_would_not_reach_the_app() -> None:
    app = Daebus("bpapp")
    bp = Blueprint("users")

    def first() -> None: ...

    def late(*args: object) -> None: ...

    bp.add_action("first", first)
    register_later = bp.action("late")  # a decorator made before registration
    app.register_blueprint(bp)
    attempts = [
        lambda: bp.add_action("late", late),
        lambda: bp.action("late")(late),
        lambda: bp.action(late),
        lambda: register_later(late),
        lambda: bp.listen("ch")(late),
        lambda: bp.add_background("job", 5, late),
        lambda: bp.thread("t")(late),
        lambda: bp.workflow("flow")(late),
        lambda: bp.on_start(late),
        lambda: bp.on_stop(late),
        lambda: bp.route("/late")(late),
        lambda: bp.socket("ping")(late),
    ]
    for attempt in attempts:
        with pytest.raises(SetupError, match="can no longer be called on the blueprint 'users'"):
            attempt()
    assert bp.action_handlers == {"first": first}
    assert app.action_handlers == {"first": first}
    assert app.register_blueprint(bp) is app  # registering it again (or elsewhere) is fine
    assert Daebus("other").register_blueprint(bp).action_handlers == {"first": first}
    app.add_action("late", late)  # the app itself still takes registrations
    assert app.action_handlers["late"] is late


def names_imported_from_outside(module: types.ModuleType) -> set[str]:
    """The names `module`'s source binds by absolute imports (``typing``, ``__future__`` ...).

    They are tools of the module, not names it offers: its own names come from its
    package's modules (relative imports) or are defined in it.
    """
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.asname or alias.name.partition(".")[0] for alias in node.names)
    return names


def test_exported_members_are_sorted_and_complete() -> None:
    exported = daebus.__all__
    assert len(set(exported)) == len(exported), exported
    assert exported == sorted(exported, key=lambda name: (name.startswith("_"), name)) or (
        exported == sorted(exported)
    )
    for name in exported:  # each resolves, those loaded on first use included
        assert hasattr(daebus, name), name
    # dir(): the names bound so far and those the package loads on first use.
    outside = names_imported_from_outside(daebus)
    defined = {
        name
        for name in dir(daebus)
        if not name.startswith("_")
        and name not in outside
        and not isinstance(getattr(daebus, name), types.ModuleType)
    }
    assert defined == {name for name in exported if not name.startswith("_")}


def imported_by(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    return set(json.loads(done.stdout))


def roots(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


def test_import_daebus_loads_neither_aiohttp_nor_redis_py() -> None:
    # redis-py's package imports its whole client (cluster, sentinel, asyncio, commands)
    # whichever submodule is asked for, so no redis module may be loaded at all.
    heavy = {"aiohttp", "redis", "fakeredis"}
    assert not roots(imported_by("import daebus")) & heavy
    assert not roots(imported_by("from daebus import Daebus, Blueprint, request")) & heavy
    # ... until used: naming the HTTP component, or a Redis transport, loads them.
    assert "aiohttp" in roots(imported_by("from daebus import DaebusHttp"))
    assert "redis" in roots(imported_by("from daebus.transport import RedisTransport"))


def test_legacy_module_paths_import() -> None:
    from daebus.modules.caller import DaebusCaller
    from daebus.modules.context import request
    from daebus.modules.http import DaebusHttp, DaebusJSONEncoder, make_json_serializable
    from daebus.modules.logger import get_logger, set_log_level
    from daebus.modules.pubsub import PubSubBroadcast

    assert DaebusHttp is daebus.DaebusHttp
    assert DaebusJSONEncoder is daebus.DaebusJSONEncoder
    assert make_json_serializable({1, 2}) == [1, 2]
    assert DaebusCaller is daebus.DaebusCaller
    assert request is daebus.request
    assert PubSubBroadcast is daebus.PubSubBroadcast
    assert get_logger("x").name == "daebus.x"
    assert callable(set_log_level)


def test_routes_and_socket_handlers_register_before_any_component_is_attached() -> None:
    app = Daebus("order")
    seen: list[tuple[int, int]] = []

    class Component:
        def attach(self, app: Daebus) -> None:
            pass

        def refresh_handlers(self, app: Daebus) -> None:
            seen.append((len(app.routes), len(app.socket_handlers)))

        async def start_async(self, app: Daebus) -> None:
            pass

        async def stop_async(self) -> None:
            pass

    @app.route("/a", methods=["GET", "post"])
    def a(req: object) -> None: ...

    @app.socket("ping")
    def ping(data: object, client_id: str) -> None: ...

    component = app.attach(Component())
    assert seen == [(1, 1)]  # attached late, it still sees what came before
    assert app.components == (component,)

    @app.route("/b")
    def b(req: object) -> None: ...

    assert seen[-1] == (2, 1)
    assert app.routes[0] == ("/a", ["GET", "POST"], a)
    with pytest.raises(SetupError):
        app.route("no-slash")(a)
    with pytest.raises(SetupError):
        app.route("/x", methods="GET")(a)  # type: ignore[arg-type]


def test_only_a_whole_component_can_be_attached() -> None:
    app = Daebus("partial")

    class OnlyAttach:
        def attach(self, app: Daebus) -> None:
            raise AssertionError("not called: the app refuses it first")

    with pytest.raises(TypeError, match=r"has no refresh_handlers\(\), start_async\(\), stop_"):
        app.attach(OnlyAttach())  # type: ignore[type-var]
    assert app.components == ()
