"""Where a cluster is, as a ``redis+cluster://`` URL says: its seed nodes and credentials."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from ..exceptions import SetupError
from ._endpoint import Endpoint

__all__ = ["CLUSTER_SCHEMES", "CLUSTER_URL_OPTIONS", "ClusterSeeds"]

#: The URL schemes of a cluster; the part before ``+`` is the protocol, as in ``redis://``.
CLUSTER_SCHEMES = frozenset({"redis+cluster", "valkey+cluster"})
#: The query options a cluster URL may carry: what the connections to its nodes honour.
CLUSTER_URL_OPTIONS = frozenset({"username", "password"})


@dataclass(frozen=True)
class ClusterSeeds:
    """The nodes a cluster URL names, and the credentials for every node."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> ClusterSeeds:
        """Parse ``redis+cluster://[user:password@]host:port[,host:port...][/][?options]``.

        Raises:
            SetupError: a query option other than ``username`` and ``password``, or a
                database other than 0 (a cluster has only database 0).
            ValueError: not a cluster URL, or no node in it.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() not in CLUSTER_SCHEMES:
            raise ValueError(f"not a cluster URL: {url!r}")
        user_info, _, hosts = parts.netloc.rpartition("@")
        username, _, password = user_info.partition(":")
        options: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in CLUSTER_URL_OPTIONS:
                raise SetupError(
                    f"the cluster URL option {name!r} is not supported: daebus's cluster "
                    f"transport would ignore it. Supported: "
                    f"{', '.join(sorted(CLUSTER_URL_OPTIONS))}"
                )
            options[name] = value
        if parts.path.strip("/") not in ("", "0"):
            raise SetupError(f"a cluster has only database 0, not {parts.path.strip('/')!r}")
        nodes = tuple(_host_port(address) for address in hosts.split(",") if address)
        if not nodes:
            raise ValueError(f"the cluster URL {url!r} names no node")
        return cls(
            nodes,
            username=options.get("username") or unquote(username) or None,
            password=options.get("password") or (unquote(password) if user_info else None),
        )

    def endpoint(self, host: str, port: int) -> Endpoint:
        """Where one node is, with the cluster's credentials."""
        return Endpoint(host=host, port=port, username=self.username, password=self.password)


def _host_port(address: str) -> tuple[str, int]:
    """``host:port``, ``[ipv6]:port`` or a bare host (port 6379) as ``(host, port)``."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:  # a bare host, or an IPv6 address without brackets (so without a port)
        host, port = address, ""
    try:
        return host or "localhost", int(port or 6379)
    except ValueError:
        raise ValueError(f"bad port in the cluster node address {address!r}") from None
