"""Every todo route end to end, as a client sees it over HTTP."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from bson import ObjectId

from tests.conftest import error_of

# Run against one instance and through nginx (tests/conftest.py).
pytestmark = pytest.mark.contract

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ID_PATTERN = re.compile(r"[0-9a-f]{24}")
LONG_AGO = datetime(2020, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
LONG_AGO_TEXT = "2020-01-02T03:04:05.678Z"


# -- helpers ---------------------------------------------------------------------------------
async def create(api, token, content):
    reply = await api.post("/todo", token=token, json_body={"content": content})
    assert reply.status == 201, reply.json
    return reply.json


async def create_many(api, token, count, prefix="todo"):
    """`count` todos created one after the other; returned newest first, as the list shows them."""
    made = [await create(api, token, f"{prefix} {i}") for i in range(count)]
    return list(reversed(made))


def path_of(link):
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


async def follow(api, token, path):
    """Every todo reachable from `path` by following `next` until it is null, and the links."""
    todos, links = [], []
    while path is not None:
        reply = await api.get(path, token=token)
        assert reply.status == 200, reply.json
        todos.extend(reply.json["data"])
        link = reply.json["next"]
        if link is not None:
            assert link.startswith(f"{api.base_url}/todo?"), link
            links.append(link)
        path = None if link is None else path_of(link)
        assert len(links) < 50, "next links never end"
    return todos, links


def multipart(fields, boundary="todo-test-boundary-1234"):
    lines = []
    for name, value in fields:
        lines += [f"--{boundary}", f'Content-Disposition: form-data; name="{name}"', "", value]
    lines += [f"--{boundary}--", ""]
    body = "\r\n".join(lines).encode("utf-8")
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def parse_time(text):
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_todo_shape(todo):
    assert set(todo) == {"id", "content", "created_at", "is_finished", "finished_at"}
    assert isinstance(todo["id"], str)
    assert ID_PATTERN.fullmatch(todo["id"])
    assert isinstance(todo["content"], str)
    parse_time(todo["created_at"])
    assert isinstance(todo["is_finished"], bool)
    if todo["finished_at"] is not None:
        parse_time(todo["finished_at"])


async def backdate_finished_at(services, todo_id):
    """Put an old finished_at on a todo: "kept the first one" is then no same-millisecond fluke."""
    result = await services.db["todos"].update_one(
        {"_id": ObjectId(todo_id)}, {"$set": {"finished_at": LONG_AGO}}
    )
    assert result.modified_count == 1


# -- create ----------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_create_with_form_field_as_original_clients_send(api):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body="content=buy+milk", headers=FORM)
    assert reply.status == 201, reply.json
    assert_todo_shape(reply.json)
    assert reply.json["content"] == "buy milk"
    assert reply.json["is_finished"] is False
    assert reply.json["finished_at"] is None


@pytest.mark.gen_test
async def test_create_with_form_field_decodes_utf8(api):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body="content=caf%C3%A9+%E2%9C%93", headers=FORM)
    assert reply.status == 201, reply.json
    assert reply.json["content"] == "café ✓"


@pytest.mark.gen_test
async def test_create_with_multipart_form(api):
    token = await api.register("alice")
    body, headers = multipart([("content", "call mum ☎")])
    reply = await api.post("/todo", token=token, body=body, headers=headers)
    assert reply.status == 201, reply.json
    assert_todo_shape(reply.json)
    assert reply.json["content"] == "call mum ☎"


@pytest.mark.gen_test
async def test_create_with_json(api):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body={"content": "write tests"})
    assert reply.status == 201, reply.json
    assert_todo_shape(reply.json)
    assert reply.json["content"] == "write tests"
    assert reply.json["is_finished"] is False
    assert reply.json["finished_at"] is None


@pytest.mark.gen_test
async def test_create_with_json_charset_parameter(api):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body={"content": "x"},
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 201, reply.json


@pytest.mark.gen_test
async def test_create_answers_json_content_type(api):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body={"content": "x"})
    assert reply.headers["Content-Type"].startswith("application/json")


@pytest.mark.gen_test
async def test_create_location_header_gets_the_same_todo(api):
    token = await api.register("alice")
    created = await api.post("/todo", token=token, json_body={"content": "find me"})
    location = created.headers["Location"]
    assert location == f"/todo/{created.json['id']}"
    fetched = await api.get(location, token=token)
    assert fetched.status == 200
    assert fetched.json == created.json


@pytest.mark.gen_test
async def test_create_trims_content(api):
    token = await api.register("alice")
    via_json = await create(api, token, "  \t padded \n ")
    via_form = await api.post("/todo", token=token, body="content=++both+ends++", headers=FORM)
    assert via_json["content"] == "padded"
    assert via_form.json["content"] == "both ends"


@pytest.mark.gen_test
async def test_create_keeps_inner_whitespace(api):
    token = await api.register("alice")
    todo = await create(api, token, " two  spaces\tand tab ")
    assert todo["content"] == "two  spaces\tand tab"


@pytest.mark.gen_test
async def test_created_todo_shows_in_list(api):
    token = await api.register("alice")
    await api.get("/todo", token=token)  # warm the first-page cache
    todo = await create(api, token, "fresh")
    listed = await api.get("/todo", token=token)
    assert listed.json["data"] == [todo]


@pytest.mark.gen_test
async def test_created_at_is_iso_utc_and_ids_differ(api):
    token = await api.register("alice")
    first = await create(api, token, "one")
    second = await create(api, token, "two")
    assert first["id"] != second["id"]
    assert parse_time(second["created_at"]) >= parse_time(first["created_at"])


# -- list ------------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_list_of_new_user_is_empty(api):
    token = await api.register("alice")
    reply = await api.get("/todo", token=token)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json == {"data": [], "next": None}


@pytest.mark.gen_test
async def test_list_is_newest_first(api):
    token = await api.register("alice")
    expected = await create_many(api, token, 5)
    reply = await api.get("/todo", token=token)
    assert [t["id"] for t in reply.json["data"]] == [t["id"] for t in expected]
    assert reply.json["next"] is None


@pytest.mark.gen_test
async def test_list_items_have_todo_shape(api):
    token = await api.register("alice")
    await create_many(api, token, 2)
    for todo in (await api.get("/todo", token=token)).json["data"]:
        assert_todo_shape(todo)


@pytest.mark.gen_test
async def test_list_ties_on_created_at_are_broken_by_id(api, services):
    token = await api.register("alice")
    made = await create_many(api, token, 5)
    same_moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    await services.db["todos"].update_many({}, {"$set": {"created_at": same_moment}})
    reply = await api.get("/todo?limit=100", token=token)
    ids = [t["id"] for t in reply.json["data"]]
    assert ids == sorted((t["id"] for t in made), reverse=True)


@pytest.mark.gen_test
async def test_next_links_walk_through_ties_exactly_once(api, services):
    token = await api.register("alice")
    made = await create_many(api, token, 7)
    same_moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    await services.db["todos"].update_many({}, {"$set": {"created_at": same_moment}})
    todos, links = await follow(api, token, "/todo?limit=2")
    assert [t["id"] for t in todos] == sorted((t["id"] for t in made), reverse=True)
    assert len(links) == 3


@pytest.mark.gen_test
async def test_list_default_limit_is_ten(api):
    token = await api.register("alice")
    expected = await create_many(api, token, 11)
    reply = await api.get("/todo", token=token)
    assert [t["id"] for t in reply.json["data"]] == [t["id"] for t in expected[:10]]
    assert reply.json["next"] is not None


@pytest.mark.gen_test
async def test_list_exactly_limit_todos_has_no_next(api):
    token = await api.register("alice")
    await create_many(api, token, 10)
    reply = await api.get("/todo", token=token)
    assert len(reply.json["data"]) == 10
    assert reply.json["next"] is None


@pytest.mark.gen_test
async def test_list_limit(api):
    token = await api.register("alice")
    expected = await create_many(api, token, 6)
    reply = await api.get("/todo?limit=4", token=token)
    assert [t["id"] for t in reply.json["data"]] == [t["id"] for t in expected[:4]]


@pytest.mark.gen_test
async def test_list_limit_bounds_one_and_hundred_accepted(api):
    token = await api.register("alice")
    await create_many(api, token, 3)
    one = await api.get("/todo?limit=1", token=token)
    hundred = await api.get("/todo?limit=100", token=token)
    assert len(one.json["data"]) == 1
    assert len(hundred.json["data"]) == 3
    assert hundred.json["next"] is None


@pytest.mark.gen_test
async def test_list_start_offset_paging(api):
    token = await api.register("alice")
    expected = await create_many(api, token, 25)
    for start in (0, 10, 20):
        reply = await api.get(f"/todo?start={start}&limit=10", token=token)
        got = [t["id"] for t in reply.json["data"]]
        assert got == [t["id"] for t in expected[start:start + 10]], start


@pytest.mark.gen_test
async def test_list_start_alone_uses_default_limit(api):
    token = await api.register("alice")
    expected = await create_many(api, token, 13)
    reply = await api.get("/todo?start=2", token=token)
    assert [t["id"] for t in reply.json["data"]] == [t["id"] for t in expected[2:12]]


@pytest.mark.gen_test
async def test_list_start_past_the_end_is_empty(api):
    token = await api.register("alice")
    await create_many(api, token, 3)
    reply = await api.get("/todo?start=30", token=token)
    assert reply.status == 200
    assert reply.json == {"data": [], "next": None}


@pytest.mark.gen_test
async def test_list_last_offset_page_has_no_next(api):
    token = await api.register("alice")
    await create_many(api, token, 25)
    reply = await api.get("/todo?start=20&limit=10", token=token)
    assert len(reply.json["data"]) == 5
    assert reply.json["next"] is None


@pytest.mark.gen_test
async def test_next_from_offset_page_continues_after_it(api):
    token = await api.register("alice")
    expected = await create_many(api, token, 25)
    todos, _ = await follow(api, token, "/todo?start=10&limit=10")
    assert [t["id"] for t in todos] == [t["id"] for t in expected[10:]]


@pytest.mark.gen_test
async def test_following_next_returns_every_todo_once_in_order(api):
    token = await api.register("alice")
    expected = await create_many(api, token, 25)
    todos, links = await follow(api, token, "/todo?limit=10")
    assert [t["id"] for t in todos] == [t["id"] for t in expected]
    assert len(links) == 2


@pytest.mark.gen_test
async def test_following_next_from_default_list(api):
    token = await api.register("alice")
    expected = await create_many(api, token, 25)
    todos, links = await follow(api, token, "/todo")
    assert [t["id"] for t in todos] == [t["id"] for t in expected]
    assert len(links) == 2


@pytest.mark.gen_test
async def test_next_link_keeps_limit_and_uses_cursor(api):
    token = await api.register("alice")
    await create_many(api, token, 8)
    reply = await api.get("/todo?limit=3", token=token)
    query = parse_qs(urlsplit(reply.json["next"]).query)
    assert query["limit"] == ["3"]
    assert len(query["cursor"]) == 1
    assert "start" not in query


@pytest.mark.gen_test
async def test_next_link_keeps_finished_filter(api):
    token = await api.register("alice")
    made = await create_many(api, token, 25)
    for todo in made[::3]:
        assert (await api.put(f"/todo/{todo['id']}/finish", token=token)).status == 200
    unfinished = [t["id"] for t in made if t not in made[::3]]
    todos, links = await follow(api, token, "/todo?finished=false&limit=4")
    assert [t["id"] for t in todos] == unfinished
    assert all(t["is_finished"] is False for t in todos)
    assert links
    assert all(parse_qs(urlsplit(link).query)["finished"] == ["false"] for link in links)


@pytest.mark.gen_test
async def test_next_link_keeps_finished_true_filter(api):
    token = await api.register("alice")
    made = await create_many(api, token, 12)
    for todo in made[::2]:
        assert (await api.put(f"/todo/{todo['id']}/finish", token=token)).status == 200
    todos, links = await follow(api, token, "/todo?finished=true&limit=2")
    assert [t["id"] for t in todos] == [t["id"] for t in made[::2]]
    assert all(parse_qs(urlsplit(link).query)["finished"] == ["true"] for link in links)


@pytest.mark.gen_test
async def test_cursor_pages_do_not_shift_when_todos_are_added(api):
    token = await api.register("alice")
    expected = await create_many(api, token, 15)
    first = await api.get("/todo?limit=10", token=token)
    await create(api, token, "added after page one")
    second = await api.get(path_of(first.json["next"]), token=token)
    assert [t["id"] for t in second.json["data"]] == [t["id"] for t in expected[10:]]


@pytest.mark.gen_test
async def test_list_finished_filter(api):
    token = await api.register("alice")
    made = await create_many(api, token, 4)
    await api.put(f"/todo/{made[1]['id']}/finish", token=token)
    await api.put(f"/todo/{made[3]['id']}/finish", token=token)
    done = await api.get("/todo?finished=true", token=token)
    open_ = await api.get("/todo?finished=false", token=token)
    assert [t["id"] for t in done.json["data"]] == [made[1]["id"], made[3]["id"]]
    assert [t["id"] for t in open_.json["data"]] == [made[0]["id"], made[2]["id"]]
    assert all(t["is_finished"] for t in done.json["data"])


@pytest.mark.gen_test
async def test_list_finished_filter_orders_by_creation_not_finishing(api):
    token = await api.register("alice")
    older, newer = reversed(await create_many(api, token, 2))
    await api.put(f"/todo/{newer['id']}/finish", token=token)
    await api.put(f"/todo/{older['id']}/finish", token=token)
    done = await api.get("/todo?finished=true", token=token)
    assert [t["id"] for t in done.json["data"]] == [newer["id"], older["id"]]


# -- get one ---------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_get_one_todo(api):
    token = await api.register("alice")
    todo = await create(api, token, "the one")
    reply = await api.get(f"/todo/{todo['id']}", token=token)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json == todo


# -- patch -----------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_patch_content_only(api):
    token = await api.register("alice")
    todo = await create(api, token, "old words")
    reply = await api.patch(f"/todo/{todo['id']}", token=token,
                            json_body={"content": " new words "})
    assert reply.status == 200, reply.json
    assert reply.json == {**todo, "content": "new words"}
    assert (await api.get(f"/todo/{todo['id']}", token=token)).json == reply.json


@pytest.mark.gen_test
async def test_patch_is_finished_only_sets_finished_at(api):
    token = await api.register("alice")
    todo = await create(api, token, "do it")
    reply = await api.patch(f"/todo/{todo['id']}", token=token, json_body={"is_finished": True})
    assert reply.status == 200, reply.json
    assert reply.json["is_finished"] is True
    assert reply.json["content"] == "do it"
    assert reply.json["created_at"] == todo["created_at"]
    assert parse_time(reply.json["finished_at"]) >= parse_time(todo["created_at"])


@pytest.mark.gen_test
async def test_patch_both_fields(api):
    token = await api.register("alice")
    todo = await create(api, token, "before")
    reply = await api.patch(f"/todo/{todo['id']}", token=token,
                            json_body={"content": "after", "is_finished": True})
    assert reply.status == 200, reply.json
    assert reply.json["content"] == "after"
    assert reply.json["is_finished"] is True
    assert reply.json["finished_at"] is not None


@pytest.mark.gen_test
async def test_patch_unfinish_clears_finished_at(api):
    token = await api.register("alice")
    todo = await create(api, token, "undo me")
    await api.put(f"/todo/{todo['id']}/finish", token=token)
    reply = await api.patch(f"/todo/{todo['id']}", token=token, json_body={"is_finished": False})
    assert reply.status == 200, reply.json
    assert reply.json["is_finished"] is False
    assert reply.json["finished_at"] is None
    assert (await api.get(f"/todo/{todo['id']}", token=token)).json == reply.json


@pytest.mark.gen_test
async def test_patch_finishing_twice_keeps_first_finished_at(api, services):
    token = await api.register("alice")
    todo = await create(api, token, "once")
    await api.patch(f"/todo/{todo['id']}", token=token, json_body={"is_finished": True})
    await backdate_finished_at(services, todo["id"])
    again = await api.patch(f"/todo/{todo['id']}", token=token, json_body={"is_finished": True})
    assert again.status == 200, again.json
    assert again.json["finished_at"] == LONG_AGO_TEXT


@pytest.mark.gen_test
async def test_patch_content_of_finished_todo_keeps_finished_at(api, services):
    token = await api.register("alice")
    todo = await create(api, token, "finished")
    await api.put(f"/todo/{todo['id']}/finish", token=token)
    await backdate_finished_at(services, todo["id"])
    reply = await api.patch(f"/todo/{todo['id']}", token=token, json_body={"content": "renamed"})
    assert reply.json["is_finished"] is True
    assert reply.json["finished_at"] == LONG_AGO_TEXT


@pytest.mark.gen_test
async def test_patch_unfinished_todo_to_false_keeps_it_open(api):
    token = await api.register("alice")
    todo = await create(api, token, "open")
    reply = await api.patch(f"/todo/{todo['id']}", token=token, json_body={"is_finished": False})
    assert reply.status == 200
    assert reply.json == todo


@pytest.mark.gen_test
async def test_patch_shows_in_list(api):
    token = await api.register("alice")
    todo = await create(api, token, "stale")
    await api.get("/todo", token=token)  # warm the first-page cache
    await api.patch(f"/todo/{todo['id']}", token=token, json_body={"content": "fresh"})
    listed = await api.get("/todo", token=token)
    assert [t["content"] for t in listed.json["data"]] == ["fresh"]


# -- finish ----------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_finish(api):
    token = await api.register("alice")
    todo = await create(api, token, "finish me")
    reply = await api.put(f"/todo/{todo['id']}/finish", token=token)
    assert reply.status == 200, reply.json
    assert_todo_shape(reply.json)
    assert reply.json["id"] == todo["id"]
    assert reply.json["content"] == "finish me"
    assert reply.json["is_finished"] is True
    assert parse_time(reply.json["finished_at"]) >= parse_time(todo["created_at"])


@pytest.mark.gen_test
async def test_finish_repeat_is_harmless(api):
    token = await api.register("alice")
    todo = await create(api, token, "twice")
    first = await api.put(f"/todo/{todo['id']}/finish", token=token)
    second = await api.put(f"/todo/{todo['id']}/finish", token=token)
    assert second.status == 200
    assert second.json == first.json


@pytest.mark.gen_test
async def test_finish_repeat_keeps_first_finished_at(api, services):
    token = await api.register("alice")
    todo = await create(api, token, "twice")
    await api.put(f"/todo/{todo['id']}/finish", token=token)
    await backdate_finished_at(services, todo["id"])
    again = await api.put(f"/todo/{todo['id']}/finish", token=token)
    assert again.status == 200
    assert again.json["finished_at"] == LONG_AGO_TEXT


@pytest.mark.gen_test
async def test_finish_shows_in_get_and_list(api):
    token = await api.register("alice")
    todo = await create(api, token, "visible")
    await api.get("/todo", token=token)  # warm the first-page cache
    finished = await api.put(f"/todo/{todo['id']}/finish", token=token)
    assert (await api.get(f"/todo/{todo['id']}", token=token)).json == finished.json
    assert (await api.get("/todo", token=token)).json["data"] == [finished.json]


# -- delete ----------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_delete_then_get_is_404(api):
    token = await api.register("alice")
    todo = await create(api, token, "doomed")
    deleted = await api.delete(f"/todo/{todo['id']}", token=token)
    assert deleted.status == 204
    assert deleted.body == b""
    gone = await api.get(f"/todo/{todo['id']}", token=token)
    assert error_of(gone)[0] == 404


@pytest.mark.gen_test
async def test_delete_twice_is_404(api):
    token = await api.register("alice")
    todo = await create(api, token, "doomed")
    await api.delete(f"/todo/{todo['id']}", token=token)
    again = await api.delete(f"/todo/{todo['id']}", token=token)
    assert error_of(again)[0] == 404


@pytest.mark.gen_test
async def test_delete_removes_only_that_todo_from_list(api):
    token = await api.register("alice")
    made = await create_many(api, token, 3)
    await api.get("/todo", token=token)  # warm the first-page cache
    await api.delete(f"/todo/{made[1]['id']}", token=token)
    listed = await api.get("/todo", token=token)
    assert [t["id"] for t in listed.json["data"]] == [made[0]["id"], made[2]["id"]]


@pytest.mark.gen_test
async def test_finish_and_patch_after_delete_are_404(api):
    token = await api.register("alice")
    todo = await create(api, token, "doomed")
    await api.delete(f"/todo/{todo['id']}", token=token)
    finish = await api.put(f"/todo/{todo['id']}/finish", token=token)
    patch = await api.patch(f"/todo/{todo['id']}", token=token, json_body={"content": "x"})
    assert error_of(finish)[0] == 404
    assert error_of(patch)[0] == 404


# -- two users -------------------------------------------------------------------------------
@pytest.fixture
def two_users(api, io_loop):
    async def register():
        return await api.register("alice"), await api.register("bob")

    return io_loop.run_sync(register)


async def unknown_id_message(api, token):
    reply = await api.get(f"/todo/{ObjectId()}", token=token)
    return error_of(reply)


@pytest.mark.gen_test
async def test_other_users_todo_is_404_on_get(api, two_users):
    alice, bob = two_users
    todo = await create(api, alice, "alice's secret")
    reply = await api.get(f"/todo/{todo['id']}", token=bob)
    assert error_of(reply) == await unknown_id_message(api, bob)
    assert b"alice" not in reply.body


@pytest.mark.gen_test
async def test_other_users_todo_is_404_on_patch_and_unchanged(api, two_users):
    alice, bob = two_users
    todo = await create(api, alice, "alice's")
    reply = await api.patch(f"/todo/{todo['id']}", token=bob,
                            json_body={"content": "bob was here", "is_finished": True})
    assert error_of(reply) == await unknown_id_message(api, bob)
    assert (await api.get(f"/todo/{todo['id']}", token=alice)).json == todo


@pytest.mark.gen_test
async def test_other_users_todo_is_404_on_finish_and_unchanged(api, two_users):
    alice, bob = two_users
    todo = await create(api, alice, "alice's")
    reply = await api.put(f"/todo/{todo['id']}/finish", token=bob)
    assert error_of(reply) == await unknown_id_message(api, bob)
    assert (await api.get(f"/todo/{todo['id']}", token=alice)).json == todo


@pytest.mark.gen_test
async def test_other_users_todo_is_404_on_delete_and_kept(api, two_users):
    alice, bob = two_users
    todo = await create(api, alice, "alice's")
    reply = await api.delete(f"/todo/{todo['id']}", token=bob)
    assert error_of(reply) == await unknown_id_message(api, bob)
    assert (await api.get(f"/todo/{todo['id']}", token=alice)).json == todo
    assert (await api.get("/todo", token=alice)).json["data"] == [todo]


@pytest.mark.gen_test
async def test_lists_show_only_own_todos(api, two_users):
    alice, bob = two_users
    alices = await create_many(api, alice, 3, prefix="alice")
    assert (await api.get("/todo", token=bob)).json == {"data": [], "next": None}
    bobs = await create_many(api, bob, 2, prefix="bob")
    assert (await api.get("/todo", token=alice)).json["data"] == alices
    assert (await api.get("/todo", token=bob)).json["data"] == bobs


@pytest.mark.gen_test
async def test_filtered_and_offset_lists_show_only_own_todos(api, two_users):
    alice, bob = two_users
    todo = await create(api, alice, "alice's")
    await api.put(f"/todo/{todo['id']}/finish", token=alice)
    for query in ("finished=true", "finished=false", "start=0", "limit=100"):
        reply = await api.get(f"/todo?{query}", token=bob)
        assert reply.json == {"data": [], "next": None}, query


@pytest.mark.gen_test
async def test_cursor_from_one_user_shows_other_user_nothing(api, two_users):
    alice, bob = two_users
    await create_many(api, alice, 5, prefix="alice")
    first = await api.get("/todo?limit=2", token=alice)
    reply = await api.get(path_of(first.json["next"]), token=bob)
    assert reply.status == 200
    assert reply.json == {"data": [], "next": None}


# -- authentication --------------------------------------------------------------------------
def todo_routes(todo_id):
    return [
        ("GET", "/todo", None),
        ("POST", "/todo", {"content": "sneaky"}),
        ("GET", f"/todo/{todo_id}", None),
        ("PATCH", f"/todo/{todo_id}", {"content": "sneaky"}),
        ("PUT", f"/todo/{todo_id}/finish", None),
        ("DELETE", f"/todo/{todo_id}", None),
    ]


def tampered(token):
    payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    user_id, token_id, expires = raw.split(".")
    forged = f"{user_id}.{token_id}.{int(expires) + 10**6}".encode()
    return base64.urlsafe_b64encode(forged).decode().rstrip("=") + "." + signature


async def assert_every_route_refuses(api, services, todo, headers):
    for method, path, body in todo_routes(todo["id"]):
        reply = await api.request(method, path, json_body=body, headers=headers)
        status, message = error_of(reply)
        assert status == 401, (method, path, reply.json)
        assert message
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    doc = await services.db["todos"].find_one({"_id": ObjectId(todo["id"])})
    assert doc["content"] == todo["content"]
    assert doc["is_finished"] is False
    assert await services.db["todos"].count_documents({}) == 1


@pytest.mark.gen_test
async def test_no_token_is_401_everywhere(api, services):
    token = await api.register("alice")
    todo = await create(api, token, "mine")
    await assert_every_route_refuses(api, services, todo, {})


@pytest.mark.gen_test
@pytest.mark.parametrize("authorization", [
    "Bearer garbage",
    "Bearer a.b",
    "Bearer a.b.c",
    "Bearer ",
    "Bearer",
    "bearer",
    "Basic YWxpY2U6Y29ycmVjdCBob3JzZQ==",
    "garbage",
])
async def test_garbage_token_is_401_everywhere(api, services, authorization):
    token = await api.register("alice")
    todo = await create(api, token, "mine")
    await assert_every_route_refuses(api, services, todo, {"Authorization": authorization})


@pytest.mark.gen_test
async def test_token_with_non_ascii_signature_is_401(api):
    reply = await api.get("/todo", headers={"Authorization": "Bearer YWJj.\u00e9t\u00e9"})
    assert error_of(reply)[0] == 401


@pytest.mark.gen_test
async def test_token_with_non_ascii_payload_is_401(api):
    reply = await api.get("/todo", headers={"Authorization": "Bearer \u00e9t\u00e9.YWJj"})
    assert error_of(reply)[0] == 401


@pytest.mark.gen_test
async def test_tampered_token_is_401_everywhere(api, services):
    token = await api.register("alice")
    todo = await create(api, token, "mine")
    headers = {"Authorization": f"Bearer {tampered(token)}"}
    await assert_every_route_refuses(api, services, todo, headers)


@pytest.mark.gen_test
async def test_token_with_flipped_signature_is_401(api):
    token = await api.register("alice")
    last = token[-1]
    bad = token[:-1] + ("A" if last != "A" else "B")
    reply = await api.get("/todo", token=bad)
    assert error_of(reply)[0] == 401


@pytest.mark.gen_test
async def test_other_users_signature_on_own_payload_is_401(api, two_users):
    alice, bob = two_users
    spliced = alice.split(".")[0] + "." + bob.split(".")[1]
    reply = await api.get("/todo", token=spliced)
    assert error_of(reply)[0] == 401


@pytest.mark.gen_test
async def test_revoked_token_is_401_on_todos(api):
    token = await api.register("alice")
    assert (await api.delete("/tokens/current", token=token)).status == 204
    reply = await api.get("/todo", token=token)
    assert error_of(reply)[0] == 401


# -- health ----------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_healthz(api):
    reply = await api.get("/healthz")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json["status"] == "ok"


@pytest.mark.gen_test
async def test_readyz(api):
    reply = await api.get("/readyz")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json["checks"] == {"mongodb": "ok", "redis": "ok"}
