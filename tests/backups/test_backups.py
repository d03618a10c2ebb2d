"""Backups of a standalone mongod (the stack's default): consistent by holding writes while
reading, restored exactly, and a restore that would overwrite or read a damaged file refuses
before writing anything. (On a replica set: tests/stack/test_replica_set.py.)"""

from __future__ import annotations

import gzip
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import Int64, ObjectId
from pymongo import MongoClient

from scripts.backups.archive import RAW, ArchiveError, Manifest
from scripts.backups.cli import backup_main, prune, restore_main
from scripts.backups.restore import RestoreError, restore_backup
from scripts.backups.take import take_backup


@pytest.fixture
def client(mongo_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    with MongoClient(mongo_uri) as mongo:
        yield mongo


@pytest.fixture
def source(client: MongoClient[dict[str, Any]]) -> Iterator[str]:
    name = f"backup_src_{uuid.uuid4().hex[:8]}"
    db = client[name]
    db["todos"].insert_many([{"n": Int64(number), "content": f"todo {number}", "at": time.time()}
                             for number in range(2500)])
    db["todos"].create_index([("n", 1)], name="n_unique", unique=True)
    db["users"].insert_one({"_id": ObjectId(), "username": "ann"})
    yield name
    client.drop_database(name)


def contents(client: MongoClient[dict[str, Any]], db_name: str) -> dict[str, list[bytes]]:
    db = client[db_name]
    return {name: sorted(doc.raw for doc in db[name].with_options(codec_options=RAW).find())
            for name in db.list_collection_names()}


def test_a_standalone_backup_holds_writes_and_restores_byte_for_byte(client, source, tmp_path,
                                                                      mongo_uri):
    target = tmp_path / "backups"
    done = threading.Event()
    written: list[int] = []

    def writer() -> None:  # writes go on while the backup runs; they wait, never fail
        number = 10_000
        while not done.is_set():
            client[source]["todos"].insert_one({"n": Int64(number), "content": "during"})
            written.append(number)
            number += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        backup_main(["--mongo-uri", mongo_uri, "--db-name", source, "--out", str(target)])
    finally:
        done.set()
        thread.join()
    [directory] = target.iterdir()
    manifest = Manifest.load(directory)
    assert manifest.method == "fsync-lock"
    todos = next(entry for entry in manifest.collections if entry.name == "todos")
    # One moment: the first writes made during the backup are in it, and nothing is torn.
    assert 2500 < todos.documents <= 2500 + len(written)

    fresh = f"backup_dst_{uuid.uuid4().hex[:8]}"
    try:
        restore_backup(client, directory, db_name=fresh)
        restored = contents(client, fresh)
        assert len(restored["todos"]) == todos.documents
        source_now = contents(client, source)
        assert set(restored["todos"]) <= set(source_now["todos"])
        assert restored["users"] == source_now["users"]
        assert "n_unique" in {index["name"] for index in client[fresh]["todos"].list_indexes()}
        # The types are those of the source: an Int64 stays an Int64.
        assert isinstance(client[fresh]["todos"].find_one({"n": 0})["n"], Int64)

        # Restoring over data is refused unless asked; --drop replaces it.
        with pytest.raises(RestoreError, match="already holds data"):
            restore_backup(client, directory, db_name=fresh)
        client[fresh]["todos"].insert_one({"n": -1})
        restore_main([str(directory), "--mongo-uri", mongo_uri, "--db-name", fresh, "--drop"])
        assert client[fresh]["todos"].count_documents({"n": -1}) == 0
    finally:
        client.drop_database(fresh)


def test_a_damaged_backup_is_refused_before_anything_is_written(client, source, tmp_path):
    directory = tmp_path / "one"
    take_backup(client, source, directory)
    with gzip.open(directory / "todos.bson.gz", "rb") as original:
        data = original.read()
    with gzip.open(directory / "todos.bson.gz", "wb") as damaged:
        damaged.write(data[: len(data) // 2])
    fresh = f"backup_dst_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ArchiveError, match=r"damaged|does not match"):
        restore_backup(client, directory, db_name=fresh)
    assert fresh not in client.list_database_names()
    with pytest.raises(ArchiveError, match="not a backup"):
        restore_backup(client, tmp_path, db_name=fresh)


def test_keep_deletes_all_but_the_newest_backups(tmp_path: Path):
    for stamp in ("20261101T000000Z", "20261201T000000Z", "20261115T000000Z"):
        (tmp_path / f"todo-{stamp}").mkdir()
        (tmp_path / f"todo-{stamp}" / "manifest.json").write_text("{}")
    (tmp_path / "notes").mkdir()  # not a backup: never touched
    deleted = prune(tmp_path, keep=2)
    assert [path.name for path in deleted] == ["todo-20261101T000000Z"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "notes", "todo-20261115T000000Z", "todo-20261201T000000Z"]
