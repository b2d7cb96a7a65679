"""0.0.31's ``daebus.modules.context``: the context proxies."""

from ..context import broadcast, cache, get_daemon, logger, request, response

__all__ = ["broadcast", "cache", "get_daemon", "logger", "request", "response"]
