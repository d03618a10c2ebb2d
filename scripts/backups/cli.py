"""The backup commands.

    todo-backup  [--var var] [--mongo-uri URI] [--db-name NAME] [--out DIR] [--keep N]
    todo-restore BACKUP_DIR [--var var] [--mongo-uri URI] [--db-name NAME] [--drop]

Without --mongo-uri, they use the stack's MongoDB (var/stack.json, the stack `todo-stack up`
set up), else TODO_MONGO_URI, else the local default. Backups go to var/backups/, one
directory each, named by database and time; --keep N then deletes all but the newest N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from scripts.backups.archive import MANIFEST, ArchiveError
from scripts.backups.restore import RestoreError, restore_backup
from scripts.backups.take import take_backup
from scripts.stack.config import DEFAULT_VAR, StackConfig, StackError
from server.infra.settings import Settings


def _where(args: argparse.Namespace) -> tuple[str, str]:
    """The MongoDB URI and database name to use."""
    try:
        stack: StackConfig | None = StackConfig.load(args.var)
    except StackError:
        stack = None
    uri = (args.mongo_uri or (stack.mongo_uri if stack else "")
           or os.environ.get("TODO_MONGO_URI") or Settings.mongo_uri)
    db_name = args.db_name or (stack.db_name if stack else "") or Settings.db_name
    return uri, db_name


def _client(uri: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(uri, serverSelectionTimeoutMS=5000, w="majority", journal=True)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--var", type=Path, default=DEFAULT_VAR,
                        help="the stack whose MongoDB to use (its stack.json)")
    parser.add_argument("--mongo-uri", default="", help="a MongoDB URI instead of the stack's")
    parser.add_argument("--db-name", default="", help="the database (default: the stack's)")


def prune(backups: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` backups in `backups` (only directories with a
    manifest, named as todo-backup names them); the deleted ones."""
    found = sorted((path for path in backups.iterdir() if (path / MANIFEST).exists()),
                   key=lambda path: path.name.rsplit("-", 1)[-1])
    doomed = found[:-keep] if keep else found
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def backup_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="todo-backup",
                                     description="a consistent online backup of the database")
    _common(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="the directory backups go into (default: VAR/backups)")
    parser.add_argument("--keep", type=int, default=0,
                        help="then delete all but the newest N backups there (0: keep all)")
    args = parser.parse_args(argv)
    uri, db_name = _where(args)
    backups = args.out or args.var / "backups"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = backups / f"{db_name}-{stamp}"
    try:
        with _client(uri) as client:
            manifest = take_backup(client, db_name, target)
    except (PyMongoError, OSError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        sys.exit(f"todo-backup: {exc}")
    total = sum(entry.documents for entry in manifest.collections)
    print(f"backup of {db_name} ({manifest.method}, as of {manifest.taken_at}): {total} "
          f"documents in {len(manifest.collections)} collections -> {target}")
    if args.keep:
        for path in prune(backups, args.keep):
            print(f"deleted the older backup {path}")


def restore_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="todo-restore",
                                     description="restore a backup into a fresh deployment")
    parser.add_argument("backup", type=Path, help="a directory todo-backup wrote")
    _common(parser)
    parser.add_argument("--drop", action="store_true",
                        help="replace the database if it already holds data")
    args = parser.parse_args(argv)
    uri, db_name = _where(args)
    try:
        with _client(uri) as client:
            manifest = restore_backup(client, args.backup, db_name=args.db_name or None,
                                      drop=args.drop)
    except (ArchiveError, RestoreError, PyMongoError) as exc:
        sys.exit(f"todo-restore: {exc}")
    total = sum(entry.documents for entry in manifest.collections)
    print(f"restored {total} documents in {len(manifest.collections)} collections of "
          f"{manifest.database} (as of {manifest.taken_at}) into {args.db_name or db_name}")
