"""Where a Sentinel-watched master is, as a ``redis+sentinel://`` URL says.

The form is the one Redis-Sentinel-Url and Prefect write:
``redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME[/db][?options]``.
The hosts are the sentinels (port 26379 when none is given); the credentials in the URL
and the ``db`` are those of the data nodes, the master and its replicas. The sentinels
have credentials of their own, given as the ``sentinel_username`` and
``sentinel_password`` options: a sentinel is asked with none unless they are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from ..exceptions import SetupError
from ._endpoint import Endpoint
from ._seed_urls import parse_seed_url

__all__ = ["SENTINEL_SCHEMES", "SENTINEL_URL_OPTIONS", "SentinelSeeds", "is_sentinel_url"]

#: The URL schemes of a master found through Sentinel.
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "valkey+sentinel"})
#: The query options a Sentinel URL may carry.
SENTINEL_URL_OPTIONS = frozenset(
    {"db", "username", "password", "sentinel_username", "sentinel_password"}
)
#: Where a sentinel listens when its address gives no port.
SENTINEL_PORT = 26379


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a master through its sentinels (``redis+sentinel://``)."""
    return "://" in url and url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelSeeds:
    """The sentinels a URL names, the master's name, and the credentials of each side."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SentinelSeeds:
        """Parse ``redis+sentinel://[user:password@]host:port[,...]/MASTER_NAME[/db][?options]``.

        Raises:
            SetupError: an unsupported query option, or no master name.
            ValueError: not a Sentinel URL, no sentinel in it, or a malformed address.
        """
        seeds = parse_seed_url(
            url,
            kind="Sentinel",
            schemes=SENTINEL_SCHEMES,
            allowed=SENTINEL_URL_OPTIONS,
            member="sentinel",
            default_port=SENTINEL_PORT,
        )
        options = seeds.options
        path = [unquote(part) for part in seeds.path.split("/") if part]
        if not path:
            raise SetupError(
                f"the Sentinel URL {url!r} names no master: "
                "redis+sentinel://host:port[,host:port...]/MASTER_NAME[/db]"
            )
        if len(path) > 2:
            raise SetupError(f"the Sentinel URL path is /MASTER_NAME[/db], not {seeds.path!r}")
        db = options.get("db") or (path[1] if len(path) == 2 else "0")
        if not db.isdigit():
            raise SetupError(f"the database of a Sentinel URL is a number, not {db!r}")
        return cls(
            seeds.addresses,
            path[0],
            db=int(db),
            username=seeds.username,
            password=seeds.password,
            sentinel_username=options.get("sentinel_username") or None,
            sentinel_password=options.get("sentinel_password") or None,
        )

    def endpoint(self, host: str = "localhost", port: int = 6379) -> Endpoint:
        """The master at ``host:port``, with the data nodes' credentials and database.

        It must answer ``ROLE`` with master: sentinels may name a node that was demoted.
        """
        return Endpoint(
            host=host,
            port=port,
            db=self.db,
            username=self.username,
            password=self.password,
            must_be_master=True,
        )
