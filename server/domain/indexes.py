"""The MongoDB indexes the queries need (every instance keeps them: server/domain/index_keeper.py),
and a look at the plan the list query wins."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from server.domain.index_keeper import make_indexes
from server.domain.todos import IDEMPOTENCY_KEY, LIST_ORDER

# In the order they are made: the unique indexes that writes rely on come first.
INDEXES: dict[str, list[IndexModel]] = {
    "users": [IndexModel([("username", ASCENDING)], unique=True, name="username_unique")],
    "todos": [
        # The list query, newest first, and its keyset cursor (created_at, _id).
        IndexModel([("owner", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
                   name="owner_created_at"),
        # The same with ?finished=true|false.
        IndexModel([("owner", ASCENDING), ("is_finished", ASCENDING),
                    ("created_at", DESCENDING), ("_id", DESCENDING)],
                   name="owner_finished_created_at"),
        # One todo per Idempotency-Key and user, even for requests racing on several instances.
        # Partial: keyless todos hold no key and are not indexed, so they never collide.
        IndexModel([("owner", ASCENDING), (IDEMPOTENCY_KEY, ASCENDING)], unique=True,
                   partialFilterExpression={IDEMPOTENCY_KEY: {"$exists": True}},
                   name="owner_idempotency_key"),
    ],
    # A user's recent jobs, newest first (GET /jobs).
    "jobs": [
        IndexModel([("owner", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
                   name="owner_created_at"),
        # The sweeper's three questions (server/worker/sweeper.py): leases run out, jobs queued
        # too long, exports past their keeping time.
        IndexModel([("status", ASCENDING), ("lease_until", ASCENDING)], name="status_lease"),
        IndexModel([("status", ASCENDING), ("queued_at", ASCENDING)], name="status_queued_at"),
        IndexModel([("status", ASCENDING), ("finished_at", ASCENDING)],
                   name="status_finished_at"),
    ],
    # GridFS's own indexes for the uploads (server/domain/upload_files.py writes the chunks itself).
    "imports.chunks": [IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True,
                                  name="files_id_1_n_1")],
    "imports.files": [IndexModel([("filename", ASCENDING), ("uploadDate", ASCENDING)],
                                 name="filename_1_uploadDate_1")],
    # Revocations disappear once the token they revoke has expired anyway.
    "revoked_tokens": [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0,
                                  name="expires_at_ttl")],
}


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> list[str]:
    """Create every index (idempotent); returns their names as `collection.index`."""
    return await make_indexes(db, INDEXES)


def _stages(plan: dict[str, Any]) -> list[str]:
    stages = [plan.get("stage", "?")]
    for child_key in ("inputStage", "inputStages"):
        child = plan.get(child_key)
        for sub in child if isinstance(child, list) else [child] if child else []:
            stages.extend(_stages(sub))
    return stages


async def explain_list_query(
    db: AsyncDatabase[dict[str, Any]], owner: ObjectId | None = None, limit: int = 10
) -> dict[str, Any]:
    """The winning plan of the first-page list query, with its stages flattened."""
    cursor = db["todos"].find({"owner": owner or ObjectId()}).sort(LIST_ORDER).limit(limit + 1)
    explained = await cursor.explain()
    plan = explained["queryPlanner"]["winningPlan"]
    plan = plan.get("queryPlan", plan)  # slot-based engine nests the classic shape
    return {"stages": _stages(plan), "plan": plan}
