"""Redis URLs, parsed without touching Redis (pure): `redis+sentinel://` for a master that Redis
Sentinel watches, and a credential-free form of any Redis URL for logs.

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?sentinel_password=x]

    parse_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/loragate/0").service
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def describe(self) -> str:
        """For logs: the sentinels and the service, never the password."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"{SENTINEL_SCHEME}://{hosts}/{self.service}/{self.db}"


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """`redis+sentinel://...` parsed; ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    netloc = parts.netloc.rpartition("@")
    auth, hosts = netloc[0], netloc[2]
    username = password = None
    if auth:
        user, _, pw = auth.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("the path is /<service name>[/<db>]")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"database {path[1]!r} is not a number")
    query = parse_qs(parts.query)
    return SentinelUrl(
        sentinels=tuple(sentinels),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


def describe_url(url: str) -> str:
    """A Redis URL for logs: scheme, hosts and database; credentials dropped."""
    if is_sentinel(url):
        return parse_sentinel_url(url).describe()
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
