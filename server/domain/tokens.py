"""Bearer tokens: HMAC-signed, checked without a MongoDB round trip while Redis is up.

A token is `base64url(<user id>.<token id>.<expiry>)` + `.` + `base64url(HMAC-SHA256)`. Logging
out writes the token id to MongoDB (the truth, with a TTL index) and to Redis (the fast path).
The hot path asks Redis in one MGET for the revocation and for a "synced" marker (and,
for a first-page read, for the cached page: one round trip in all); when the
marker is missing (Redis restarted empty) or Redis is down, MongoDB answers instead, and the
marker is rebuilt from MongoDB.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from redis.asyncio import Redis

from server.domain.errors import Unauthorized
from server.infra.redis_guard import RedisGuard, UntilDone, done

log = logging.getLogger(__name__)
# How long Redis's copy of the revocations is trusted before it is rebuilt from MongoDB: the
# bound on how long a logout that never reached Redis (its instance died during a Redis outage)
# can go unseen by an instance that did not notice the outage.
SYNCED_TTL = 30
INVALID_TOKEN = "missing, invalid, expired or revoked bearer token"  # noqa: S105


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: ObjectId
    token_id: str
    expires_at: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenService:
    def __init__(
        self, *, secret: str, ttl: int, guard: RedisGuard, db: AsyncDatabase[dict[str, Any]]
    ) -> None:
        self._key = hashlib.sha256(("todo-token:" + secret).encode()).digest()
        self.ttl = ttl
        self.guard = guard
        self.revoked = db["revoked_tokens"]
        self._resync = UntilDone(guard, self._resync_attempt)
        self._clear_marker_pending = False
        self._synced_once = False
        guard.on_recovery(self._distrust_redis)

    @property
    def synced(self) -> bool:
        """Whether this instance has copied every revocation to Redis since it last
        distrusted it (until then it asks MongoDB, and the edge must not decide alone)."""
        return self._synced_once

    def request_sync(self) -> None:
        """Copy the revocations to Redis again (and renew its synced marker), in the background."""
        self._resync.request()

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, user_id: ObjectId) -> tuple[str, datetime]:
        expires_at = int(time.time()) + self.ttl
        payload = _b64(f"{user_id}.{secrets.token_urlsafe(16)}.{expires_at}".encode("ascii"))
        return f"{payload}.{self._sign(payload)}", datetime.fromtimestamp(expires_at, UTC)

    def _decode(self, token: str) -> Principal:
        try:
            payload, signature = token.split(".")
            # compare_digest refuses non-ASCII str; header values can be any latin-1 text.
            expected = self._sign(payload).encode("ascii")
            if not hmac.compare_digest(signature.encode("latin-1", "replace"), expected):
                raise Unauthorized(INVALID_TOKEN)
            user_id, token_id, expires_at = _unb64(payload).decode("ascii").split(".")
            principal = Principal(ObjectId(user_id), token_id, int(expires_at))
        except (ValueError, binascii.Error, UnicodeError, TypeError):
            raise Unauthorized(INVALID_TOKEN) from None
        if principal.expires_at <= time.time():
            raise Unauthorized(INVALID_TOKEN)
        return principal

    async def verify(self, token: str) -> Principal:
        return (await self.verify_and_read(token))[0]

    async def verify_and_read(
        self, token: str, keys_of: Callable[[Principal], Sequence[str]] | None = None
    ) -> tuple[Principal, list[Any] | None]:
        """The token's principal, and the values of the Redis keys `keys_of(principal)` names,
        read in the same round trip as the revocation (None when Redis could not be asked):
        a cached first page costs one Redis round trip, not two."""
        principal = self._decode(token)
        revoked_key = self.guard.key("revoked", principal.token_id)
        synced_key = self.guard.key("revocations-synced")
        extra = keys_of(principal) if keys_of is not None else ()
        found = await self.guard.read_many((revoked_key, synced_key, *extra))
        if found is not None and found[1] is not None and self._synced_once:
            revoked = found[0] is not None
        else:
            revoked = await self.revoked.find_one({"_id": principal.token_id}) is not None
            if found is not None:
                self._resync.request()
        if revoked:
            raise Unauthorized(INVALID_TOKEN)
        return principal, None if found is None or not extra else found[2:]

    async def revoke(self, principal: Principal) -> None:
        expires_at = datetime.fromtimestamp(principal.expires_at, UTC)
        await self.revoked.update_one(
            {"_id": principal.token_id},
            {"$set": {"user_id": principal.user_id, "expires_at": expires_at}},
            upsert=True,
        )
        key = self.guard.key("revoked", principal.token_id)
        remaining = max(1, principal.expires_at - int(time.time()))

        async def mark(client: Redis) -> None:
            await client.set(key, b"1", ex=remaining)

        await self.guard.must(mark)

    def _distrust_redis(self) -> None:
        """Redis answers again after an outage: a logout may have missed it meanwhile."""
        self._synced_once = False
        self._clear_marker_pending = True
        self._resync.request()

    async def _resync_attempt(self) -> bool:
        clear_marker, self._clear_marker_pending = self._clear_marker_pending, False
        if await self._copy_revocations_to_redis(clear_marker=clear_marker):
            return True
        self._clear_marker_pending |= clear_marker
        return False

    async def _copy_revocations_to_redis(self, *, clear_marker: bool) -> bool:
        """Rebuild Redis's copy of every unexpired revocation, then mark it complete.

        Runs on this instance's first check, when the marker is missing or expired, and (with
        `clear_marker`, so that every instance asks MongoDB until the copy is complete) when
        Redis answers again after an outage. Only that case deletes the marker: deleting it
        on every rebuild would make instances rebuild in turn forever.
        """
        synced_key = self.guard.key("revocations-synced")
        if clear_marker and not await self.guard.run(
            lambda r: done(r.delete(synced_key)), default=False
        ):
            return False
        now = datetime.now(UTC)
        try:
            entries = [
                (self.guard.key("revoked", doc["_id"]),
                 max(1, int((doc["expires_at"] - now).total_seconds())))
                async for doc in self.revoked.find({"expires_at": {"$gt": now}})
            ]
        except PyMongoError as exc:
            log.warning("could not read token revocations from MongoDB: %s", exc)
            return False

        async def copy(client: Redis) -> bool:
            async with client.pipeline(transaction=False) as pipe:
                for key, seconds in entries:
                    pipe.set(key, b"1", ex=seconds)
                pipe.set(synced_key, b"1", ex=SYNCED_TTL)
                await pipe.execute()
            return True

        if not await self.guard.run(copy, default=False):
            return False
        self._synced_once = True
        log.debug("copied %d token revocations from MongoDB to Redis", len(entries))
        return True

