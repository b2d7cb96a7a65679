"""Where a cluster is, as a ``redis+cluster://`` URL says: its seed nodes and credentials."""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import SetupError
from ._endpoint import Endpoint
from ._seed_urls import parse_seed_url

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
        seeds = parse_seed_url(
            url,
            kind="cluster",
            schemes=CLUSTER_SCHEMES,
            allowed=CLUSTER_URL_OPTIONS,
            member="node",
            default_port=6379,
        )
        if seeds.path.strip("/") not in ("", "0"):
            raise SetupError(f"a cluster has only database 0, not {seeds.path.strip('/')!r}")
        return cls(seeds.addresses, username=seeds.username, password=seeds.password)

    def endpoint(self, host: str, port: int) -> Endpoint:
        """Where one node is, with the cluster's credentials."""
        return Endpoint(host=host, port=port, username=self.username, password=self.password)
