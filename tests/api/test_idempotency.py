"""Idempotency-Key on POST /todo: a retried create makes one todo, even racing on two instances."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import pytest
from bson import ObjectId
from tornado.httputil import HTTPHeaders

from server.domain.todos import new_todo
from server.web.app import OPENAPI_FILE
from tests.conftest import another_instance, error_of

# Run against one instance and through nginx (tests/conftest.py).
pytestmark = pytest.mark.contract

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PUBLIC_KEYS = {"id", "content", "created_at", "is_finished", "finished_at"}
KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"


async def post_todo(api, token, content, key=None, *, form=False):
    headers = {} if key is None else {"Idempotency-Key": key}
    if form:
        body = urlencode({"content": content})
        return await api.post("/todo", token=token, body=body, headers={**headers, **FORM})
    return await api.post("/todo", token=token, json_body={"content": content}, headers=headers)


def replayed(reply):
    return reply.headers.get("Idempotent-Replayed") == "true"


async def stored(services, **conditions):
    return await services.db["todos"].count_documents(conditions)


async def listed(api, token):
    reply = await api.get("/todo", token=token)
    assert reply.status == 200, reply.json
    return reply.json["data"]


# -- one request, retried --------------------------------------------------------------------
@pytest.mark.gen_test
async def test_same_key_twice_makes_one_todo_and_answers_the_same(api, services):
    token = await api.register("alice")
    assert await listed(api, token) == []  # the empty first page is now cached

    first = await post_todo(api, token, "buy milk", KEY)
    assert first.status == 201, first.json
    assert not replayed(first)
    assert first.headers["Location"] == f"/todo/{first.json['id']}"
    assert await listed(api, token) == [first.json]  # the create invalidated the cache

    again = await post_todo(api, token, "buy milk", KEY)
    assert again.status == 201, again.json
    assert replayed(again)
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json == first.json
    assert await stored(services) == 1
    assert await listed(api, token) == [first.json]


@pytest.mark.gen_test
async def test_the_key_is_stored_but_never_shown(api, services):
    token = await api.register("alice")
    created = (await post_todo(api, token, "buy milk", KEY)).json
    doc = await services.db["todos"].find_one({"_id": ObjectId(created["id"])})
    assert doc["idempotency_key"] == KEY
    assert set(created) == PUBLIC_KEYS
    assert set((await api.get(f"/todo/{created['id']}", token=token)).json) == PUBLIC_KEYS
    assert [set(todo) for todo in await listed(api, token)] == [PUBLIC_KEYS]
    finished = await api.put(f"/todo/{created['id']}/finish", token=token)
    assert set(finished.json) == PUBLIC_KEYS


@pytest.mark.gen_test
async def test_twenty_concurrent_posts_on_two_instances_make_exactly_one_todo(api, services):
    token = await api.register("alice")
    async with another_instance(services.settings) as other:
        replies = await asyncio.gather(
            *(post_todo(other if i % 3 == 0 else api, token, "buy milk", KEY) for i in range(20))
        )
    assert [r.status for r in replies] == [201] * 20, [r.json for r in replies]
    assert len({r.json["id"] for r in replies}) == 1
    assert len({r.headers["Location"] for r in replies}) == 1
    assert sum(not replayed(r) for r in replies) == 1  # exactly one request created it
    assert await stored(services) == 1
    assert await stored(services, idempotency_key=KEY) == 1
    assert [todo["id"] for todo in await listed(api, token)] == [replies[0].json["id"]]


@pytest.mark.gen_test
async def test_same_key_with_another_content_is_422_and_creates_nothing(api, services):
    token = await api.register("alice")
    first = await post_todo(api, token, "buy milk", KEY)
    for reply in (
        await post_todo(api, token, "buy bread", KEY),
        await post_todo(api, token, "buy bread", KEY, form=True),
    ):
        status, message = error_of(reply)
        assert status == 422
        assert "Idempotency-Key" in message
        assert "different request" in message
    assert await stored(services) == 1
    assert await listed(api, token) == [first.json]


@pytest.mark.gen_test
async def test_another_user_with_the_same_key_is_independent(api, services):
    alice = await api.register("alice")
    bob = await api.register("bob")
    alices = await post_todo(api, alice, "buy milk", KEY)
    bobs = await post_todo(api, bob, "walk the dog", KEY)
    assert (alices.status, bobs.status) == (201, 201)
    assert not replayed(bobs)
    assert alices.json["id"] != bobs.json["id"]
    bobs_again = await post_todo(api, bob, "walk the dog", KEY)
    assert bobs_again.json == bobs.json
    assert replayed(bobs_again)
    assert await listed(api, alice) == [alices.json]
    assert await listed(api, bob) == [bobs.json]
    assert await stored(services) == 2


# -- the header ------------------------------------------------------------------------------
@pytest.mark.gen_test
@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, "tab\there", "cl\u00e9"],
    ids=["empty", "256-chars", "tab", "non-ascii"],
)
async def test_an_invalid_key_is_400_and_stores_nothing(api, services, key):
    token = await api.register("alice")
    status, message = error_of(await post_todo(api, token, "buy milk", key))
    assert status == 400
    assert message == "Idempotency-Key must be 1-255 printable ASCII characters"
    assert await stored(services) == 0


@pytest.mark.gen_test
async def test_the_key_given_twice_is_400(api, services):
    token = await api.register("alice")
    headers = HTTPHeaders({"Authorization": f"Bearer {token}", **FORM})
    headers.add("Idempotency-Key", "one")
    headers.add("Idempotency-Key", "two")
    response = await api.client.fetch(
        f"{api.base_url}/todo", method="POST", headers=headers, body="content=x",
        raise_error=False,
    )
    assert response.code == 400
    assert json.loads(response.body)["error"]["message"] == "Idempotency-Key must be given once"
    assert await stored(services) == 0


@pytest.mark.gen_test
async def test_the_shortest_and_longest_keys_are_accepted(api, services):
    token = await api.register("alice")
    for key in ("k", "k" * 255, ' "quoted" key, with spaces ~ '):
        first = await post_todo(api, token, f"todo {len(key)}", key)
        again = await post_todo(api, token, f"todo {len(key)}", key)
        assert (first.status, again.status) == (201, 201), first.json
        assert again.json["id"] == first.json["id"]
    assert await stored(services) == 3


@pytest.mark.gen_test
async def test_keys_are_case_sensitive(api, services):
    token = await api.register("alice")
    lower = await post_todo(api, token, "buy milk", "abc")
    upper = await post_todo(api, token, "buy milk", "ABC")
    assert lower.json["id"] != upper.json["id"]
    assert await stored(services) == 2


@pytest.mark.gen_test
async def test_form_encoded_post_with_a_key(api, services):
    token = await api.register("alice")
    first = await post_todo(api, token, "buy milk", KEY, form=True)
    assert first.status == 201, first.json
    again = await post_todo(api, token, "buy milk", KEY, form=True)
    # The same content sent as JSON is the same request: what is compared is the content.
    as_json = await post_todo(api, token, "  buy milk ", KEY)
    assert (again.status, as_json.status) == (201, 201)
    assert again.json == as_json.json == first.json
    assert replayed(again)
    assert replayed(as_json)
    assert await stored(services) == 1


@pytest.mark.gen_test
async def test_without_the_header_nothing_changes(api, services):
    token = await api.register("alice")
    one = await post_todo(api, token, "buy milk")
    two = await post_todo(api, token, "buy milk")
    assert (one.status, two.status) == (201, 201)
    assert one.json["id"] != two.json["id"]
    assert not replayed(one)
    assert not replayed(two)
    assert await stored(services) == 2
    # Keyless todos hold no key at all, so the partial unique index never sees them.
    assert await stored(services, idempotency_key={"$exists": True}) == 0


# -- the key's lifetime ----------------------------------------------------------------------
@pytest.mark.gen_test
async def test_deleting_the_todo_frees_its_key(api, services):
    token = await api.register("alice")
    first = await post_todo(api, token, "buy milk", KEY)
    assert (await api.delete(f"/todo/{first.json['id']}", token=token)).status == 204
    second = await post_todo(api, token, "buy bread", KEY)
    assert second.status == 201, second.json
    assert not replayed(second)
    assert second.json["id"] != first.json["id"]
    assert await listed(api, token) == [second.json]


@pytest.mark.gen_test
async def test_a_retry_after_a_change_returns_the_todo_as_it_is_now(api, services):
    token = await api.register("alice")
    first = await post_todo(api, token, "buy milk", KEY)
    changed = await api.patch(
        f"/todo/{first.json['id']}", token=token, json_body={"content": "buy oat milk"}
    )
    assert changed.status == 200
    # The original request is still recognised, though the stored content changed since.
    again = await post_todo(api, token, "buy milk", KEY)
    assert again.status == 201
    assert replayed(again)
    assert again.json == changed.json
    # The new content was never the request this key was used for.
    assert error_of(await post_todo(api, token, "buy oat milk", KEY))[0] == 422
    assert await stored(services) == 1


@pytest.mark.gen_test
async def test_a_retry_repairs_the_cache_when_the_first_attempt_died_after_its_insert(
    api, services
):
    token = await api.register("alice")
    older = await post_todo(api, token, "older")
    assert await listed(api, token) == [older.json]  # cached
    owner = (await services.db["todos"].find_one({"_id": ObjectId(older.json["id"])}))["owner"]
    # What an instance killed between its insert and its cache invalidation leaves behind.
    orphan = new_todo(owner, "buy milk", KEY)
    await services.db["todos"].insert_one(orphan)
    assert await listed(api, token) == [older.json]  # the stale page

    retry = await post_todo(api, token, "buy milk", KEY)
    assert retry.status == 201
    assert replayed(retry)
    assert retry.json["id"] == str(orphan["_id"])
    assert [todo["id"] for todo in await listed(api, token)] == [retry.json["id"], older.json["id"]]


# -- index and description -------------------------------------------------------------------
@pytest.mark.gen_test
async def test_the_unique_partial_index_answers_the_replay_lookup(services):
    info = (await services.db["todos"].index_information())["owner_idempotency_key"]
    assert info["key"] == [("owner", 1), ("idempotency_key", 1)]
    assert info["unique"] is True
    assert info["partialFilterExpression"] == {"idempotency_key": {"$exists": True}}
    owner = ObjectId()
    # A user with many todos, where scanning the owner's todos would cost the most.
    await services.todos.create_many(owner=owner, contents=[f"todo {i}" for i in range(200)])
    await services.todos.create(owner=owner, content="buy milk", idempotency_key=KEY)
    explained = await services.db["todos"].find({"owner": owner, "idempotency_key": KEY}).explain()
    assert '"indexName": "owner_idempotency_key"' in json.dumps(
        explained["queryPlanner"]["winningPlan"], default=str
    )


def test_openapi_documents_the_header_and_the_422():
    spec = json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))
    operation = spec["paths"]["/todo"]["post"]
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in operation["parameters"]
    parameter = spec["components"]["parameters"]["IdempotencyKey"]
    assert (parameter["name"], parameter["in"]) == ("Idempotency-Key", "header")
    assert parameter["schema"]["maxLength"] == 255
    assert "422" in operation["responses"]
    assert "Idempotent-Replayed" in operation["responses"]["201"]["headers"]
