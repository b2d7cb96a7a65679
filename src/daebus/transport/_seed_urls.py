"""URLs that name several servers to start from: a cluster's nodes, Sentinel's sentinels.

``scheme://[user:password@]host:port[,host:port...][/path][?options]``: what the two
kinds share (the seed list, the credentials, the options each kind allows) is read
here; what the path means is each kind's own (:mod:`._cluster_seeds`,
:mod:`._sentinel_url`).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

from ..exceptions import SetupError

__all__ = ["SeedURL", "host_port", "parse_seed_url"]


class SeedURL(NamedTuple):
    """What a seed URL says, its path left to its kind."""

    addresses: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    options: dict[str, str]
    path: str


def parse_seed_url(
    url: str,
    *,
    kind: str,
    schemes: frozenset[str],
    allowed: frozenset[str],
    member: str,
    default_port: int,
) -> SeedURL:
    """Read ``url``, a URL of one of ``schemes`` (``kind`` names it in errors).

    The credentials come from the ``username`` and ``password`` options, else from the
    URL's user info.

    Raises:
        SetupError: a query option not in ``allowed``: it would be ignored.
        ValueError: not of ``schemes``, no ``member`` address in it, or a bad port.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"not a {kind} URL: {url!r}")
    user_info, _, hosts = parts.netloc.rpartition("@")
    username, _, password = user_info.partition(":")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in allowed:
            raise SetupError(
                f"the {kind} URL option {name!r} is not supported: daebus's connections "
                f"would ignore it. Supported: {', '.join(sorted(allowed))}"
            )
        options[name] = value
    addresses = tuple(
        host_port(address, default_port, member) for address in hosts.split(",") if address
    )
    if not addresses:
        raise ValueError(f"the {kind} URL {url!r} names no {member}")
    return SeedURL(
        addresses,
        username=options.get("username") or unquote(username) or None,
        password=options.get("password") or (unquote(password) if user_info else None),
        options=options,
        path=parts.path,
    )


def host_port(address: str, default_port: int, member: str = "server") -> tuple[str, int]:
    """``host:port``, ``[ipv6]:port`` or a bare host (``default_port``) as ``(host, port)``."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:  # a bare host, or an IPv6 address without brackets (so without a port)
        host, port = address, ""
    try:
        return host or "localhost", int(port or default_port)
    except ValueError:
        raise ValueError(f"bad port in the {member} address {address!r}") from None
