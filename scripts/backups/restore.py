"""Restoring a backup into a deployment: into an empty database (or one dropped first, when
asked), every document written back as the bytes it was read as, then the indexes, then the
counts checked.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from scripts.backups.archive import ArchiveError, Manifest, read_collection
from scripts.backups.take import collection_names

BATCH = 1000


class RestoreError(Exception):
    """The restore would overwrite data, or its result does not match the backup."""


def restore_backup(client: MongoClient[Any], directory: Path, *, db_name: str | None = None,
                   drop: bool = False) -> Manifest:
    """Restore the backup in `directory` into `db_name` (the backed-up name by default)."""
    manifest = Manifest.load(directory)
    for entry in manifest.collections:  # a damaged file stops the restore before any write
        for _document in read_collection(directory, entry):
            pass
    db = client[db_name or manifest.database]
    existing = [name for name in collection_names(db) if db[name].estimated_document_count()]
    if existing and not drop:
        raise RestoreError(f"database {db.name} already holds data ({', '.join(existing)}); "
                           "restore into a fresh deployment, or pass --drop to replace it")
    if drop:
        client.drop_database(db.name)
    for entry in manifest.collections:
        collection = db[entry.name]
        db.create_collection(entry.name)
        documents = read_collection(directory, entry)
        while batch := list(islice(documents, BATCH)):
            collection.insert_many(batch, ordered=True)
        if entry.indexes:
            db.command("createIndexes", entry.name, indexes=entry.indexes)
        restored = collection.count_documents({})
        if restored != entry.documents:
            raise RestoreError(f"{entry.name}: {restored} documents restored, "
                               f"{entry.documents} in the backup")
    return manifest


__all__ = ["ArchiveError", "RestoreError", "restore_backup"]
