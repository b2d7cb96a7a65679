"""Shared set-up for the scripts that run under daebus 0.0.31 (in its own virtualenv).

Never imported by pytest: only `legacy_service.py` and `legacy_caller.py` import it, as a
sibling module, inside the 0.0.31 virtualenv.

0.0.31 defaults to localhost:6379 in three places, and the tests must never touch a system
Redis there:

- `Daebus.run()` and `DaebusCaller()` take `redis_host`/`redis_port`: the scripts pass the
  test server's explicitly.
- `daebus.modules.redis_client` builds a module-global `Redis()` for localhost:6379 at import
  (lazily connected), and every `Daebus()` binds `app.broadcast` to it, so `broadcast.send`
  ignores `run(redis_host, redis_port)`, a bug of 0.0.31. `load_daebus()` rebinds those
  globals and `bind_broadcast()` gives the app a broadcaster on the test server.
- As a last line of defence, `load_daebus()` makes every TCP connect to any other address
  fail loudly, so a missed default shows up as an error instead of traffic on 6379.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import warnings
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

EXPECTED_VERSION = "0.0.31"


def redis_address() -> tuple[str, int]:
    """(host, port) of the test server, from DAEBUS_REDIS_URL (set by the test harness)."""
    url = os.environ.get("DAEBUS_REDIS_URL")
    if not url:
        sys.exit("DAEBUS_REDIS_URL is not set; refusing to fall back to localhost:6379")
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname or not parts.port:
        sys.exit(f"DAEBUS_REDIS_URL must be redis://HOST:PORT[/DB], got {url!r}")
    return parts.hostname, parts.port


def _guard_connections(host: str, port: int) -> None:
    allowed = {(host, port)}
    with contextlib.suppress(OSError):
        allowed |= {(info[4][0], port) for info in socket.getaddrinfo(host, port)}
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        if isinstance(address, tuple) and (address[0], address[1]) not in allowed:
            raise ConnectionRefusedError(
                f"interop guard: connection to {address[0]}:{address[1]} blocked; "
                f"only the test server {host}:{port} may be used"
            )

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return original_connect_ex(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]


def load_daebus() -> ModuleType:
    """Import daebus 0.0.31 with its localhost:6379 globals redirected to the test server."""
    host, port = redis_address()
    _guard_connections(host, port)
    # 0.0.31 imports websockets' deprecated legacy server types; the noise helps nobody.
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    import daebus.modules.pubsub  # binds `daebus` too
    import daebus.modules.redis_client
    from redis import Redis

    if daebus.__version__ != EXPECTED_VERSION:
        sys.exit(
            f"expected daebus {EXPECTED_VERSION}, imported {daebus.__version__} from "
            f"{daebus.__file__}"
        )
    client = Redis(host=host, port=port, decode_responses=True)
    # `pubsub` copied the global into its own namespace at import, so rebind both.
    daebus.modules.redis_client._redis_instance = client
    daebus.modules.redis_client.redis_client = client
    daebus.modules.pubsub.redis_client = client
    return daebus


def bind_broadcast(app: Any) -> None:
    """Point `app.broadcast` (and so the `broadcast` proxy) at the test server.

    0.0.31 binds it to localhost:6379 whatever `run()` is given.
    """
    import daebus.modules.redis_client
    from daebus.modules.pubsub import PubSubBroadcast

    app.broadcast = PubSubBroadcast(
        custom_redis_client=daebus.modules.redis_client.get_redis_client()
    )
