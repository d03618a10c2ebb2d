"""The service's addresses, checked at start-up: the MongoDB URI, the Redis URLs, and Celery's
form for the queue's Sentinels (sentinel://host:port/db;sentinel://host:port/db;...), so that a
malformed one is one line for the operator, not a traceback later.
"""

from __future__ import annotations

from typing import Any

from pymongo import uri_parser
from pymongo.errors import PyMongoError
from redis.connection import parse_url as parse_redis_url


class AddressError(ValueError):
    """An address is malformed; the message is one line meant for the operator."""


REDIS_URL_SETTINGS = ("redis_url", "broker_url", "result_backend")
SENTINEL_SCHEME = "sentinel://"


def is_sentinel_url(url: str) -> bool:
    """Whether `url` names Redis Sentinels (Celery's sentinel://...;sentinel://... form)."""
    return url.startswith(SENTINEL_SCHEME)


def sentinel_addresses(name: str, url: str) -> tuple[list[tuple[str, int]], int]:
    """The Sentinels' (host, port) pairs and the database of a sentinel:// setting.

    kombu and Celery take the database from the first address only: one named on a later
    address alone would be silently ignored, so it is refused unless the first names it too.
    """
    sentinels: list[tuple[str, int]] = []
    databases: list[int | None] = []
    for part in url.split(";"):
        if not is_sentinel_url(part):
            raise AddressError(f"{name}: every address of a Sentinel URL must start with "
                               f"sentinel://, got {part!r}")
        try:
            as_redis = "redis://" + part.removeprefix(SENTINEL_SCHEME)
            parsed = parse_redis_url(as_redis)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise AddressError(f"{name} is not a valid Sentinel URL: {exc}") from None
        if not parsed.get("host"):
            raise AddressError(f"{name}: Sentinel address {part!r} names no host")
        sentinels.append((parsed["host"], int(parsed.get("port", 26379))))
        databases.append(parsed.get("db"))
    database = int(databases[0] or 0)
    if any(db is not None and int(db) != database for db in databases[1:]):
        raise AddressError(f"{name}: Celery reads the database from the first Sentinel "
                           "address only; name it there too (sentinel://host:port/db;...)")
    return sentinels, database


def check_addresses(values: dict[str, Any]) -> None:
    """Parse every URL now, so a malformed one is a line at start-up, not a later traceback."""
    try:
        if values["mongo_uri"].startswith("mongodb://"):
            uri_parser.parse_uri(values["mongo_uri"])
    except (PyMongoError, ValueError) as exc:
        raise AddressError(f"mongo_uri is not a valid MongoDB URI: {exc}") from None
    where: dict[str, tuple[Any, ...]] = {}
    for name in REDIS_URL_SETTINGS:
        if name != "redis_url" and is_sentinel_url(values[name]):
            # A master the Sentinels name: never the cache's Redis, which no Sentinel watches.
            sentinel_addresses(name, values[name])
            continue
        try:
            parsed = parse_redis_url(values[name])  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise AddressError(f"{name} is not a valid Redis URL: {exc}") from None
        # Which server and database, with redis-py's defaults filled in.
        where[name] = (parsed.get("host", "localhost"), parsed.get("port", 6379),
                       parsed.get("path"), int(parsed.get("db") or 0))
    # The cache may be flushed (and is, after an outage): queued jobs must not go with it.
    for name in ("broker_url", "result_backend"):
        if name in where and where[name] == where["redis_url"]:
            raise AddressError(f"{name} must be another Redis database than redis_url's")
