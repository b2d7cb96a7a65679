"""The service registry: which services run, on how many instances, and how they fare.

Every running instance keeps an entry in Redis, refreshed every few seconds (see
:mod:`daebus.runtime.presence`); this module reads them, for scripts, monitors and the
``daebus services`` / ``daebus inspect`` / ``daebus health`` commands::

    from daebus.registry import service_health, service_info, services

    for summary in services():
        print(summary["service"], summary["instances"], summary["handled"])
    print(service_info("inventory")["instances"][0]["actions"])
    if not service_health("inventory")["ready"]:
        alert(...)

Like :mod:`daebus.health`, each call waits at most about ``timeout`` seconds for the
server and never retries. The server is ``redis_url``, else the one the library would
use. On ``memory://`` the registry is the process's own: the services of this process.
"""

from __future__ import annotations

from typing import Any

from . import protocol
from ._admin import open_admin
from .exceptions import (
    CallTimeoutError,
    DaebusError,
    RemoteError,
    ServiceUnavailableError,
)
from .health import DEFAULT_TIMEOUT

__all__ = ["instances", "service_health", "service_info", "services"]

_KINDS = ("requests", "broadcasts", "durable")


def instances(
    redis_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> list[dict[str, Any]]:
    """The entry of every running instance, by service then instance.

    Each is the JSON the instance wrote (see :mod:`daebus.runtime.presence`), with
    ``last_seen`` (seconds since it was written, by the server's clock) added and
    ``uptime`` brought up to now. Anyone who can write to the server can write an
    entry: one without a service and an instance name is skipped, and a field of the
    wrong type (a number that is not a count, a list that is not of names) is left out.

    Raises:
        TransportError: the server cannot be reached within ``timeout``.
    """
    with open_admin(redis_url, timeout=timeout) as admin:
        found = admin.entries(protocol.registry_index())
    entries = []
    for _key, value, left in found:
        try:
            entry = _checked(protocol.decode_object(value))
        except protocol.BadMessageError:
            continue  # not written by daebus: nothing to show
        if entry is None:
            continue
        ttl = entry.get("ttl")
        seen = max(0.0, float(ttl) - left) if isinstance(ttl, int | float) else 0.0
        entry["last_seen"] = round(seen, 3)
        if isinstance(entry.get("uptime"), int | float):
            entry["uptime"] = round(entry["uptime"] + seen, 3)
        entries.append(entry)
    entries.sort(key=lambda e: (str(e.get("service")), str(e.get("instance"))))
    return entries


def services(
    redis_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> list[dict[str, Any]]:
    """One summary per running service, by name.

    ``{"service", "instances", "uptime", "in_flight", "handled", "errors", "last_seen"}``:
    the count of its instances, the uptime of the oldest, the messages being handled,
    handled and failed by all of them (requests, broadcasts and durable messages), and
    how long ago the latest heartbeat was written.

    Raises:
        TransportError: the server cannot be reached within ``timeout``.
    """
    summaries: dict[str, dict[str, Any]] = {}
    for entry in instances(redis_url, timeout=timeout):
        name = str(entry.get("service"))
        summary = summaries.setdefault(
            name,
            {
                "service": name,
                "instances": 0,
                "uptime": 0.0,
                "in_flight": 0,
                "handled": 0,
                "errors": 0,
                "last_seen": None,
            },
        )
        summary["instances"] += 1
        summary["uptime"] = max(summary["uptime"], _number(entry.get("uptime")))
        summary["in_flight"] += int(_number(entry.get("in_flight")))
        summary["handled"] += _total(entry.get("handled"))
        summary["errors"] += _total(entry.get("errors"))
        seen, last = entry["last_seen"], summary["last_seen"]
        summary["last_seen"] = seen if last is None else min(seen, last)
    return [summaries[name] for name in sorted(summaries)]


def service_info(
    service: str, redis_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """What the registry knows of ``service``: ``{"service", "instances": [entry, ...]}``.

    ``instances`` is empty when no instance of it runs.

    Raises:
        TransportError: the server cannot be reached within ``timeout``.
    """
    found = [e for e in instances(redis_url, timeout=timeout) if e.get("service") == service]
    return {"service": service, "instances": found}


def service_health(
    service: str, redis_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Ask ``service`` whether it is ready: one of its instances answers, live.

    The instance runs its checks (started, subscribed, not stopping, every
    ``@app.health_check`` passing) and says ``{"ready", "reasons", "checks", "service",
    "instance", "state"}``. When no instance answers, or the server cannot be reached,
    within ``timeout``: ``{"ready": False, "reasons": [why]}`` and no ``instance``.
    Never raises for a service that is down: a health probe wants an answer. Reasons
    and checks are text whatever answered (anything subscribed to the channel can).
    """
    from .caller import DaebusCaller  # loads redis-py: only when asked

    try:
        with DaebusCaller(service, redis_url=redis_url, timeout=timeout) as caller:
            answer = caller.send_request(protocol.HEALTH_ACTION, {}, timeout=timeout)
    except ServiceUnavailableError:
        return _unready(service, f"no instance of {service!r} is running")
    except CallTimeoutError:
        # Busy, hung, or a daebus 0.0.31 service: it answers no action it does not know.
        return _unready(
            service,
            f"no instance of {service!r} answered within {timeout:g} s (a daebus 0.0.31 "
            "service never answers the health action: call one of its actions instead)",
        )
    except RemoteError as exc:
        # A daebus from before the health action answers it as unknown: it runs.
        if "Unknown action" in str(exc):
            return {
                "service": service,
                "ready": True,
                "reasons": [],
                "checks": {},
                "state": "running",
                "note": "it answers, but has no health action (an older daebus)",
            }
        return _unready(service, f"the health check failed: {exc}")
    except (DaebusError, ValueError, OSError) as exc:
        return _unready(service, str(exc) or type(exc).__name__)
    if not isinstance(answer, dict) or not isinstance(answer.get("ready"), bool):
        return _unready(service, f"not a health answer: {protocol.shorten(answer)}")
    return _health_answer(answer)


# The fields of an entry, by what they must be (see daebus.runtime.presence).
_NUMBERS = ("pid", "started", "uptime", "heartbeat", "ttl", "in_flight", "queued")
_TEXTS = ("host", "daebus", "python", "state")
_NAMES = ("actions", "workflows", "jobs", "threads", "health_checks", "sockets")
_COUNTS = ("handled", "errors")
# Larger is no count, time or pid: a forged number would only widen tables.
_LARGEST = 2**53
# No channel a service listens on is longer; a forged glob could take a reader's memory.
_CHANNEL_LIMIT = 1024


def _checked(entry: dict[str, Any]) -> dict[str, Any] | None:
    """``entry`` with each field of the type readers rely on, or None if it names nobody."""
    if not isinstance(entry.get("service"), str) or not isinstance(entry.get("instance"), str):
        return None
    for field in _NUMBERS:
        if field in entry and not _is_number(entry[field]):
            del entry[field]
    for field in _TEXTS:
        if field in entry and not isinstance(entry[field], str):
            del entry[field]
    for field in _NAMES:
        if field in entry:
            names = entry[field]
            if isinstance(names, list):
                entry[field] = [name for name in names if isinstance(name, str)]
            else:
                del entry[field]
    for field in _COUNTS:
        if field in entry:
            counts = entry[field]
            if isinstance(counts, dict):
                entry[field] = {kind: n for kind, n in counts.items() if _is_number(n)}
            else:
                del entry[field]
    entry["listeners"] = [
        listener
        for listener in _list(entry.get("listeners"))
        if isinstance(listener, dict)
        and isinstance(listener.get("channel"), str)
        and len(listener["channel"]) <= _CHANNEL_LIMIT
    ]
    if "routes" in entry:
        entry["routes"] = [
            route
            for route in _list(entry["routes"])
            if isinstance(route, dict)
            and isinstance(route.get("path"), str)
            and isinstance(route.get("methods"), list)
            and all(isinstance(method, str) for method in route["methods"])
        ]
    if "http" in entry and not isinstance(entry["http"], dict):
        del entry["http"]
    return entry


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= _LARGEST


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _health_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """``answer`` with its fields of the types callers rely on.

    Whatever subscribes to a service's channel can answer for it: a reason or a check
    that is not text becomes its ``repr``; a name that is not text is left out.
    """
    for field in ("service", "instance", "state"):
        if field in answer and not isinstance(answer[field], str):
            del answer[field]
    reasons = answer.get("reasons")
    if not isinstance(reasons, list):
        reasons = [] if reasons is None else [reasons]
    answer["reasons"] = [_text(reason) for reason in reasons]
    checks = answer.get("checks")
    checks = checks if isinstance(checks, dict) else {}
    answer["checks"] = {_text(name): _text(outcome) for name, outcome in checks.items()}
    return answer


def _text(value: Any) -> str:
    return value if isinstance(value, str) else protocol.shorten(value)


def _unready(service: str, reason: str) -> dict[str, Any]:
    return {"service": service, "ready": False, "reasons": [reason], "checks": {}}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _total(counts: Any) -> int:
    if not isinstance(counts, dict):
        return 0
    return sum(int(_number(counts.get(kind))) for kind in _KINDS)
