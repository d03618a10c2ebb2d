"""Taking a backup: every collection of the database as of one moment, while the service runs.

- On a replica set: one snapshot session. Its first read fixes a cluster time and every later
  read in the session sees the data exactly as of that time, whatever is written meanwhile;
  nothing waits. MongoDB keeps the history such a read needs for
  minSnapshotHistoryWindowInSeconds (300 s by default): a backup must be read within that time
  (about 2 GB a minute here), or that server parameter raised.
- On a standalone server (no snapshot reads there): its writes are held with `fsync` + lock
  while the collections are read, then released. Writes wait for that long; run a replica set
  (`todo-stack up --replica-set 3`) where that matters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.database import Database

from scripts.backups.archive import RAW, CollectionEntry, Manifest, write_collection

BATCH = 1000


def _indexes(db: Database[Any], name: str) -> list[dict[str, Any]]:
    """The collection's indexes as createIndexes takes them back (not _id's, always there)."""
    found = []
    for index in db[name].list_indexes():
        spec = {key: value for key, value in index.items() if key not in ("v", "ns")}
        if spec["name"] != "_id_":
            spec["key"] = dict(spec["key"])
            found.append(spec)
    return found


def collection_names(db: Database[Any]) -> list[str]:
    return sorted(name for name in db.list_collection_names(filter={"type": "collection"})
                  if not name.startswith("system."))


@contextlib.contextmanager
def _consistent_reads(client: MongoClient[Any]) -> Iterator[tuple[str, ClientSession | None]]:
    """How to read every collection as of one moment: the method's name, and the session to
    read in (none on a standalone, whose writes are held meanwhile)."""
    if "setName" in client.admin.command("hello"):
        with client.start_session(snapshot=True) as session:
            yield "snapshot", session
        return
    client.admin.command("fsync", lock=True)
    try:
        yield "fsync-lock", None
    finally:
        client.admin.command("fsyncUnlock")


def take_backup(client: MongoClient[Any], db_name: str, directory: Path) -> Manifest:
    """Write a backup of `db_name` into the new directory `directory`."""
    directory.mkdir(parents=True)
    db = client[db_name]
    names = collection_names(db)
    indexes = {name: _indexes(db, name) for name in names}
    taken_at = datetime.now(UTC)
    entries: list[CollectionEntry] = []
    cluster_time: list[int] | None = None
    with _consistent_reads(client) as (method, session):
        for name in names:
            documents = db[name].with_options(codec_options=RAW).find(
                {}, session=session, batch_size=BATCH
            )
            with documents:
                entries.append(write_collection(directory, name, documents, indexes[name]))
            if session is not None and cluster_time is None:
                # The time the session's first read fixed (pymongo keeps it on the session).
                fixed = session._snapshot_time
                cluster_time = [fixed.time, fixed.inc] if fixed is not None else None
    manifest = Manifest(database=db_name, method=method,
                        taken_at=taken_at.isoformat().replace("+00:00", "Z"),
                        cluster_time=cluster_time, collections=entries)
    manifest.save(directory)
    return manifest
