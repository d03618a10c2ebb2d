"""Who made a request, as far as the infrastructure needs to know: a user, and the token used.

server/domain/tokens.py's `Principal` is what a request's caller is; the access log and the
publisher of revocations name this Protocol instead, so that infrastructure imports nothing of
the domain above it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bson import ObjectId


@runtime_checkable
class Caller(Protocol):
    """An authenticated caller (server.domain.tokens.Principal)."""

    @property
    def user_id(self) -> ObjectId: ...

    @property
    def token_id(self) -> str: ...
