"""Who may use the dashboard: a token off localhost, and only pages of its own origin.

The dashboard can call any action and publish on any channel, so it is guarded:

- Bound to a loopback address with no token, only this machine reaches it; the
  ``Host`` a request names must then be a loopback name too, so that a web page whose
  domain is made to resolve to 127.0.0.1 (DNS rebinding) is refused.
- Bound elsewhere, or given one, every API request and WebSocket must bring the token:
  ``Authorization: Bearer <token>`` (or ``X-Daebus-Token``), or, on a WebSocket, a
  first message ``{"type": "auth", "token": ...}``. It is compared in constant time.
  The page takes it from its URL's fragment (``#token=...``), which browsers never
  send to a server, so it is in no request line and no log.
- A browser's request from a page of another origin (its ``Origin`` is not this
  server) is refused: another site's script cannot drive the dashboard through the
  user's browser, token or not. Writes must be ``application/json``, which a form of
  another site cannot send.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

__all__ = ["Guard", "is_loopback", "new_token"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def new_token() -> str:
    """A fresh random token, URL-safe (32 bytes of entropy)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    name = host.strip().lower().strip("[]")
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    """The checks of one dashboard: its token (None: none required) and its address."""

    def __init__(self, token: str | None) -> None:
        if token is not None and len(token) < 8:
            raise ValueError("the dashboard's token must be at least 8 characters long")
        self.token = token

    @property
    def requires_token(self) -> bool:
        """Whether requests must bring the token."""
        return self.token is not None

    def token_matches(self, given: object) -> bool:
        """Whether ``given`` is the token (always True when none is required)."""
        if self.token is None:
            return True
        if not isinstance(given, str):
            return False
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())

    def header_token(self, headers: dict[str, str] | object) -> str | None:
        """The token a request's headers bring, if any."""
        get = getattr(headers, "get", None)
        if get is None:
            return None
        authorization = get("Authorization") or ""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return str(value.strip())
        given = get("X-Daebus-Token")
        return str(given) if given else None

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether the ``Host`` a request names is acceptable.

        With a token any host is (the token is the check); without one only loopback
        names and addresses are, against DNS rebinding.
        """
        if self.token is not None:
            return True
        if not host_header:
            return False
        return is_loopback(_hostname(host_header))

    @staticmethod
    def origin_allowed(origin: str | None, host_header: str | None) -> bool:
        """Whether a request's ``Origin`` (None: not a browser's) is this server's own."""
        if origin is None:
            return True
        parts = urlsplit(origin)
        return (
            parts.scheme in ("http", "https")
            and host_header is not None
            and parts.netloc.lower() == host_header.lower()
        )


def _hostname(host_header: str) -> str:
    """The host of a ``Host`` header, without its port."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header
