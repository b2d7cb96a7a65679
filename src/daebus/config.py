"""Where Redis is: resolving the URL from arguments and the environment."""

from __future__ import annotations

import os

__all__ = ["DEFAULT_REDIS_URL", "ENV_REDIS_URL", "resolve_redis_url"]

ENV_REDIS_URL = "DAEBUS_REDIS_URL"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def resolve_redis_url(
    redis_url: str | None = None,
    redis_host: str | None = None,
    redis_port: int | None = None,
) -> str:
    """Pick the Redis URL: an explicit URL, else host/port, else ``$DAEBUS_REDIS_URL``.

    Falls back to ``redis://localhost:6379/0``, 0.0.31's only choice.
    """
    if redis_url:
        return redis_url
    if redis_host is not None or redis_port is not None:
        return f"redis://{redis_host or 'localhost'}:{redis_port or 6379}/0"
    return os.environ.get(ENV_REDIS_URL) or DEFAULT_REDIS_URL
