"""Seed N todos for one user, in batched inserts, with a progress bar.

    todo-seed --username alice [--password 'secret pw'] [--count 10000] [--batch 1000]

The user is created (with --password) when it does not exist yet. Server settings
(--mongo-uri, --redis-url, --db-name, ...) are read as the server reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import timedelta

from bson import ObjectId
from pymongo.errors import PyMongoError
from tqdm import tqdm

from scripts.common import script_settings
from server.domain.errors import ApiError
from server.domain.validation import credentials
from server.infra.clock import utc_now
from server.infra.settings import Settings
from server.web.services import open_services


async def seed(
    settings: Settings, *, username: str, password: str | None, count: int, batch: int,
    progress: bool = True,
) -> ObjectId:
    services = open_services(settings)
    try:
        owner = await services.users.find_by_username(username)
        if owner is None:
            if password is None:
                raise ApiError(f"user {username!r} does not exist; give --password to create it")
            creds = credentials({"username": username, "password": password}, new_account=True)
            created = await services.users.create(username=creds.username, password=creds.password)
            owner = ObjectId(created["id"])
        # Todo number n is created at start + n ms: numbers and list order agree across batches.
        start = utc_now() - timedelta(milliseconds=count)
        with tqdm(total=count, unit="todo", disable=not progress) as bar:
            for first in range(0, count, batch):
                size = min(batch, count - first)
                contents = [f"seeded todo {first + i + 1}" for i in range(size)]
                newest = start + timedelta(milliseconds=first + size)
                bar.update(await services.todos.create_many(
                    owner=owner, contents=contents, newest=newest
                ))
        return owner
    finally:
        await services.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="todo-seed", description=__doc__.split("\n")[0])
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", help="creates the user when it does not exist")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    args, server_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.count < 0 or not 1 <= args.batch <= 100_000:
        parser.error("--count must be >= 0 and --batch 1..100000")
    settings = script_settings("todo-seed", server_args)
    try:
        owner = asyncio.run(seed(settings, username=args.username, password=args.password,
                                 count=args.count, batch=args.batch))
    except ApiError as exc:
        sys.exit(f"todo-seed: {exc.message}")
    except PyMongoError as exc:
        sys.exit(f"todo-seed: MongoDB at {settings.mongo_uri} failed: {exc}")
    print(f"seeded {args.count} todos for {args.username} (user id {owner})")


if __name__ == "__main__":
    main()
