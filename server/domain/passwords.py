"""Password hashing with argon2id, always off the event loop (it is deliberately slow)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verified when the username does not exist, so that a miss costs as much as a wrong password.
_DECOY_HASH = _hasher.hash("decoy password that matches nothing")


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def hash_password(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(None, _hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True only for a real hash that matches; `None` burns the same time and answers False."""
    loop = asyncio.get_running_loop()
    matched = await loop.run_in_executor(None, _verify, password_hash or _DECOY_HASH, password)
    return matched and password_hash is not None
