"""Apps run in-process on a test server, and the callers that call them.

conftest.py builds the `apps` fixture (on the shared server) and `private_apps` (on the
test's `private_redis`) from `Apps`; tests use those fixtures.
"""

from __future__ import annotations

from _helpers import unique_name
from daebus import Daebus, DaebusCaller


class Apps:
    """Starts apps on a server and stops every one of them at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._apps: list[Daebus] = []
        self._callers: list[DaebusCaller] = []

    def start(self, app: Daebus, service: str | None = None, **options: object) -> str:
        """Start ``app`` as ``service`` (a unique name by default); returns the name."""
        service = service or unique_name(app.name)
        options.setdefault("redis_url", self.url)
        app.start(service, **options)  # type: ignore[arg-type]
        self._apps.append(app)
        return service

    def caller(self, service: str, **options: object) -> DaebusCaller:
        """A caller of ``service`` on the same server, closed at teardown."""
        options.setdefault("redis_url", self.url)
        caller = DaebusCaller(service, **options)  # type: ignore[arg-type]
        self._callers.append(caller)
        return caller

    def close(self) -> None:
        """Close every caller, then stop every app, the last started first."""
        for caller in self._callers:
            caller.close()
        for app in reversed(self._apps):
            app.stop()

    def __enter__(self) -> Apps:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
