"""What the first-page cache keeps in Redis, per user: the keys, the version and the stored
page's format. The instances (server/infra/cache.py), the workers (a job's writes invalidate
like a request's) and the nginx edge (conf/edge/, in Lua) all read and write these.
"""

from __future__ import annotations

import secrets

VERSION_TTL = 86400


def first_page_keys(prefix: str, owner: str) -> tuple[str, str, str]:
    """The page, version and lock keys of `owner`'s first page (the workers use them too)."""
    return f"{prefix}page:{owner}", f"{prefix}version:{owner}", f"{prefix}lock:{owner}"


def new_version() -> str:
    # A random version, unlike a counter, cannot come round to an old value again (after a
    # Redis restart or the key's expiry) and revive an outdated page.
    return secrets.token_hex(8)


def wrap(page: bytes, *, fresh_until: int) -> bytes:
    return b"%d|%b" % (fresh_until, page)


def unwrap(stored: bytes) -> tuple[int, bytes]:
    """(fresh until, in ms since the epoch; the page) of a stored value."""
    fresh_until, _, page = stored.partition(b"|")
    return int(fresh_until), page


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
