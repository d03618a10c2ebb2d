"""The operator scripts: index creation with its plan, and seeding."""

from __future__ import annotations

import uuid

import pytest
from pymongo import MongoClient

from scripts import create_indexes, seed
from tests.conftest import TEST_SECRET


@pytest.fixture
def server_args(mongo_uri, redis_url):
    db_name = f"todo_scripts_{uuid.uuid4().hex[:8]}"
    args = [f"--mongo-uri={mongo_uri}", f"--redis-url={redis_url}", f"--db-name={db_name}",
            f"--secret={TEST_SECRET}", f"--redis-prefix=todo-scripts:{db_name}:"]
    yield args, db_name
    with MongoClient(mongo_uri) as client:
        client.drop_database(db_name)


def test_create_indexes_shows_the_list_query_uses_an_index_scan(server_args, capsys):
    args, _ = server_args
    create_indexes.main(args)
    out = capsys.readouterr().out
    assert "todos.owner_created_at" in out
    assert "users.username_unique" in out
    assert "list query winning plan:" in out
    assert "IXSCAN using owner_created_at" in out


def test_create_indexes_twice_is_harmless(server_args, capsys):
    args, _ = server_args
    create_indexes.main(args)
    create_indexes.main([*args, "--verbose"])
    assert '"stage": "IXSCAN"' in capsys.readouterr().out.replace("'", '"')


def test_seed_creates_the_user_and_inserts_in_batches(server_args, mongo_uri, capsys):
    args, db_name = server_args
    seed.main(["--username=seeder", "--password=seed password", "--count=2500",
               "--batch=1000", *args])
    assert "seeded 2500 todos for seeder" in capsys.readouterr().out
    with MongoClient(mongo_uri) as client:
        db = client[db_name]
        user = db.users.find_one({"username": "seeder"})
        assert db.todos.count_documents({"owner": user["_id"]}) == 2500
        newest = db.todos.find({"owner": user["_id"]}).sort([("created_at", -1), ("_id", -1)])
        numbers = [int(doc["content"].rsplit(" ", 1)[1]) for doc in newest]
        assert numbers == list(range(2500, 0, -1))  # list order follows the numbering
    seed.main(["--username=seeder", "--count=10", *args])  # the user exists: no password
    with MongoClient(mongo_uri) as client:
        assert client[db_name].todos.count_documents({}) == 2510


def test_seed_refuses_an_unknown_user_without_a_password(server_args):
    args, _ = server_args
    with pytest.raises(SystemExit, match="does not exist; give --password"):
        seed.main(["--username=ghost", "--count=5", *args])


def test_scripts_report_a_bad_setting_in_one_line(server_args):
    args, _ = server_args
    with pytest.raises(SystemExit, match="todo-create-indexes: db_name"):
        create_indexes.main([*args, "--db-name=bad.name"])
