"""URLs as they may be shown: in logs, errors and banners, never with their secrets."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["redact_url"]

# Query options that carry credentials: redis-py's (redis.connection.parse_url), and the
# sentinels' of a redis+sentinel:// URL.
_SECRET_OPTIONS = frozenset({"password", "sentinel_password"})


def redact_url(url: str) -> str:
    """``url`` with its password masked (``redis://:***@host``), fit for a log line.

    The password in the user-info part and a ``?password=`` option are both masked; a
    string that is not a URL comes back unchanged.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed port, say: show nothing of what may be a secret
        return "<unparsable URL>"
    shown = url
    if password is not None:
        user_info, _, host = parts.netloc.rpartition("@")
        user = user_info.partition(":")[0]
        shown = shown.replace(parts.netloc, f"{user}:***@{host}", 1)
    if parts.query:
        options = parse_qsl(parts.query, keep_blank_values=True)
        if any(name in _SECRET_OPTIONS for name, _ in options):
            masked = [(n, "***" if n in _SECRET_OPTIONS else v) for n, v in options]
            shown = shown.replace(parts.query, urlencode(masked, safe="*"), 1)
    return shown
