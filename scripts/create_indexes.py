"""Create the MongoDB indexes and show that the list query is answered by an index scan.

    todo-create-indexes [--mongo-uri URI] [--db-name NAME]
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from pymongo.errors import PyMongoError

from scripts.common import script_settings
from server.domain.indexes import ensure_indexes, explain_list_query
from server.infra.settings import Settings
from server.web.services import mongo_client


def _index_names(plan: dict[str, Any]) -> list[str]:
    names = [plan["indexName"]] if "indexName" in plan else []
    for key in ("inputStage", "inputStages"):
        child = plan.get(key)
        for sub in child if isinstance(child, list) else [child] if child else []:
            names.extend(_index_names(sub))
    return names


async def create_indexes(settings: Settings, *, verbose: bool = False) -> dict[str, Any]:
    client = mongo_client(settings)
    try:
        db = client[settings.db_name]
        names = await ensure_indexes(db)
        explained = await explain_list_query(db)
    finally:
        await client.close()
    print(f"indexes on {settings.db_name}: {', '.join(names)}")
    stages = " -> ".join(explained["stages"])
    print(f"list query winning plan: {stages} using {', '.join(_index_names(explained['plan']))}")
    if verbose:
        print(json.dumps(explained["plan"], indent=2, default=str))
    return explained


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    settings = script_settings("todo-create-indexes", [a for a in args if a != "--verbose"])
    try:
        explained = asyncio.run(create_indexes(settings, verbose=verbose))
    except PyMongoError as exc:
        sys.exit(f"todo-create-indexes: MongoDB at {settings.mongo_uri} failed: {exc}")
    if "IXSCAN" not in explained["stages"]:
        sys.exit("todo-create-indexes: the list query does not use an index scan")


if __name__ == "__main__":
    main()
