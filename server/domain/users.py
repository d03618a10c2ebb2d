"""User accounts: registration and credential checks."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.domain.errors import Conflict, Unauthorized
from server.domain.index_keeper import IndexKeeper
from server.domain.passwords import hash_password, verify_password
from server.infra.clock import utc_now

BAD_CREDENTIALS = "invalid username or password"


class UserStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], indexes: IndexKeeper) -> None:
        self.collection = db["users"]
        self.indexes = indexes

    async def create(self, *, username: str, password: str) -> dict[str, str]:
        # Without the unique index, two registrations of one name would both succeed.
        await self.indexes.ready("users")
        doc = {
            "_id": ObjectId(),
            "username": username,
            "password_hash": await hash_password(password),
            "created_at": utc_now(),
        }
        try:
            await self.collection.insert_one(doc)
        except DuplicateKeyError:
            raise Conflict(f"username {username!r} is already taken") from None
        return {"id": str(doc["_id"]), "username": username}

    async def authenticate(self, *, username: str, password: str) -> ObjectId:
        """The user's id, or 401 with the same message whether or not the user exists."""
        doc = await self.collection.find_one({"username": username}, {"password_hash": True})
        password_hash = doc["password_hash"] if doc else None
        # Always verify (against a decoy when there is no such user): equal cost either way.
        if not await verify_password(password_hash, password) or doc is None:
            raise Unauthorized(BAD_CREDENTIALS)
        return ObjectId(doc["_id"])

    async def username_of(self, user_id: ObjectId) -> str | None:
        doc = await self.collection.find_one({"_id": user_id}, {"username": True})
        return None if doc is None else str(doc["username"])

    async def find_by_username(self, username: str) -> ObjectId | None:
        return await user_id_by_name(self.collection.database, username)


async def user_id_by_name(db: AsyncDatabase[dict[str, Any]], username: str) -> ObjectId | None:
    doc = await db["users"].find_one({"username": username}, {"_id": True})
    return None if doc is None else ObjectId(doc["_id"])
