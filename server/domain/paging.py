"""Opaque keyset cursors: the position after the last todo of a page.

A cursor is the base64url of `<created_at ms>.<id hex>`; the next page asks MongoDB for todos
strictly older than that position, which the (owner, created_at, _id) index answers directly,
so a deep page costs the same as the first.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId

from server.domain.errors import BadRequest

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    todo_id: ObjectId

    def filter(self) -> dict[str, Any]:
        """The MongoDB condition "after this position" in newest-first order."""
        return {
            "$or": [
                {"created_at": {"$lt": self.created_at}},
                {"created_at": self.created_at, "_id": {"$lt": self.todo_id}},
            ]
        }


def encode_cursor(created_at: datetime, todo_id: ObjectId) -> str:
    millis = (created_at - EPOCH) // timedelta(milliseconds=1)
    raw = f"{millis}.{todo_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(token: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        millis, hex_id = raw.split(".")
        return Cursor(
            created_at=EPOCH + timedelta(milliseconds=int(millis)),
            todo_id=ObjectId(hex_id),
        )
    except (ValueError, binascii.Error, UnicodeDecodeError, TypeError, OverflowError, InvalidId):
        raise BadRequest("cursor is not valid; use the next link of a previous page") from None
