"""Bad input gets a clear JSON error with the right status, and changes nothing."""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import urlsplit

import pytest
from bson import ObjectId

from tests.conftest import error_of

# Run against one instance and through nginx (tests/conftest.py).
pytestmark = pytest.mark.contract

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}
MAX_BODY = 64 * 1024


# -- helpers ---------------------------------------------------------------------------------
def assert_error(reply, status):
    """A JSON error with `status` and a non-empty message; never HTML, never a traceback."""
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    lowered = reply.body.lower()
    assert b"<html" not in lowered
    assert b"traceback" not in lowered
    got_status, message = error_of(reply)
    assert got_status == status
    assert message.strip()
    return message


async def alice_with_todo(api):
    token = await api.register("alice")
    created = await api.post("/todo", token=token, json_body={"content": "original"})
    assert created.status == 201, created.json
    return token, created.json


async def assert_unchanged(api, services, token, todo):
    """The one todo is still there exactly as it was, and no other was stored."""
    assert await services.db["todos"].count_documents({}) == 1
    assert (await api.get(f"/todo/{todo['id']}", token=token)).json == todo
    assert (await api.get("/todo", token=token)).json["data"] == [todo]


async def assert_nothing_stored(api, services, token):
    assert await services.db["todos"].count_documents({}) == 0
    assert (await api.get("/todo", token=token)).json == {"data": [], "next": None}


def cursor_of(text):
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def multipart(parts, boundary="todo-test-boundary-1234"):
    """`parts` are (name, value bytes, filename or None)."""
    chunks = []
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class RawReply:
    def __init__(self, data):
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().title()] = value.strip()
        self.json = json.loads(self.body) if self.body else None


async def raw_request(api, head_lines, body=b""):
    """Send exactly these bytes (for what Tornado's client will not send) and read the reply."""
    parts = urlsplit(api.base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = "\r\n".join([*head_lines, f"Host: {parts.netloc}", "Connection: close", "", ""])
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return RawReply(data)


# -- ids -------------------------------------------------------------------------------------
BAD_IDS = ["zzz", "123", "0" * 25, "0" * 23, "g" * 24, "%24ne", "null"]


@pytest.mark.gen_test
@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_malformed_id_is_404_on_every_route(api, services, bad_id):
    token, todo = await alice_with_todo(api)
    replies = [
        await api.get(f"/todo/{bad_id}", token=token),
        await api.patch(f"/todo/{bad_id}", token=token, json_body={"content": "x"}),
        await api.put(f"/todo/{bad_id}/finish", token=token),
        await api.delete(f"/todo/{bad_id}", token=token),
    ]
    for reply in replies:
        assert_error(reply, 404)
    await assert_unchanged(api, services, token, todo)


@pytest.mark.gen_test
async def test_unknown_valid_id_is_404_on_every_route(api, services):
    token, todo = await alice_with_todo(api)
    unknown = str(ObjectId())
    replies = [
        await api.get(f"/todo/{unknown}", token=token),
        await api.patch(f"/todo/{unknown}", token=token, json_body={"content": "x"}),
        await api.put(f"/todo/{unknown}/finish", token=token),
        await api.delete(f"/todo/{unknown}", token=token),
    ]
    for reply in replies:
        assert_error(reply, 404)
    await assert_unchanged(api, services, token, todo)



@pytest.mark.gen_test
async def test_id_that_is_not_utf8_is_404(api, services):
    token, todo = await alice_with_todo(api)
    assert_error(await api.get("/todo/%FF", token=token), 404)
    assert_error(await api.delete("/todo/%FF%FE", token=token), 404)
    await assert_unchanged(api, services, token, todo)

@pytest.mark.gen_test
async def test_uppercase_hex_id_finds_the_todo(api):
    token, todo = await alice_with_todo(api)
    reply = await api.get(f"/todo/{todo['id'].upper()}", token=token)
    assert reply.status == 200
    assert reply.json == todo


# -- create: content -------------------------------------------------------------------------
@pytest.mark.gen_test
@pytest.mark.parametrize("fields", [
    {},
    {"content": ""},
    {"content": "   "},
    {"content": " \t\r\n "},
    {"content": "\u00a0\u2003"},
])
async def test_missing_empty_or_blank_content_is_400(api, services, fields):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body=fields)
    assert "content" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
@pytest.mark.parametrize("body", ["", "content=", "content=+++", "content=%20%09%0A", "content"])
async def test_missing_empty_or_blank_form_content_is_400(api, services, body):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body=body, headers=FORM)
    assert "content" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_blank_multipart_content_is_400(api, services):
    token = await api.register("alice")
    body, headers = multipart([("content", b"   ", None)])
    reply = await api.post("/todo", token=token, body=body, headers=headers)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_content_of_1001_characters_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body={"content": "x" * 1001})
    assert "1000" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_form_content_of_1001_characters_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body="content=" + "x" * 1001, headers=FORM)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_content_of_1000_characters_is_accepted(api):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body={"content": "x" * 1000})
    assert reply.status == 201, reply.json
    fetched = await api.get(reply.headers["Location"], token=token)
    assert fetched.json["content"] == "x" * 1000


@pytest.mark.gen_test
async def test_content_limit_counts_characters_not_bytes(api):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body={"content": "é" * 1000})
    assert reply.status == 201, reply.json
    assert reply.json["content"] == "é" * 1000


@pytest.mark.gen_test
async def test_content_limit_applies_after_trimming(api):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body={"content": "  " + "x" * 1000 + "  "})
    assert reply.status == 201, reply.json
    assert reply.json["content"] == "x" * 1000


@pytest.mark.gen_test
@pytest.mark.parametrize("value", [5, 1.5, True, None, [], ["a"], {}, {"text": "a"}])
async def test_non_string_content_is_400(api, services, value):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body={"content": value})
    assert "content" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_unknown_json_field_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token,
                           json_body={"content": "ok", "is_finished": True})
    assert "is_finished" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_unknown_form_field_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body="content=ok&owner=bob", headers=FORM)
    assert "owner" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_repeated_form_field_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body="content=a&content=b", headers=FORM)
    assert "content" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_repeated_multipart_field_is_400(api, services):
    token = await api.register("alice")
    body, headers = multipart([("content", b"a", None), ("content", b"b", None)])
    reply = await api.post("/todo", token=token, body=body, headers=headers)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_multipart_file_upload_is_400(api, services):
    token = await api.register("alice")
    body, headers = multipart([("content", b"a", "notes.txt")])
    reply = await api.post("/todo", token=token, body=body, headers=headers)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_multipart_without_boundary_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body=b"content=a",
                           headers={"Content-Type": "multipart/form-data"})
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


# -- create: the body as a whole -------------------------------------------------------------
@pytest.mark.gen_test
@pytest.mark.parametrize("body", ['["content"]', '"buy milk"', "42", "null", "true"])
async def test_non_object_json_body_is_400(api, services, body):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body=body, headers=JSON)
    assert "object" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
@pytest.mark.parametrize("body", ['{"content": "a"', "{content: 'a'}", "", "{} {}", "content=a"])
async def test_broken_json_is_400(api, services, body):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body=body, headers=JSON)
    assert "JSON" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_deeply_nested_json_is_400(api, services):
    token = await api.register("alice")
    depth = 20_000
    reply = await api.post("/todo", token=token, body="[" * depth + "]" * depth, headers=JSON)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_invalid_utf8_json_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body=b'{"content": "caf\xe9"}', headers=JSON)
    assert "UTF-8" in assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)



@pytest.mark.gen_test
async def test_lone_surrogate_in_json_content_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body='{"content": "a\\ud800b"}', headers=JSON)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_lone_surrogate_in_patch_content_is_400(api, services):
    token, todo = await alice_with_todo(api)
    reply = await api.patch(f"/todo/{todo['id']}", token=token,
                            body='{"content": "\\udfff"}', headers=JSON)
    assert_error(reply, 400)
    await assert_unchanged(api, services, token, todo)

@pytest.mark.gen_test
async def test_invalid_utf8_form_is_400(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body="content=caf%E9", headers=FORM)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_invalid_utf8_multipart_is_400(api, services):
    token = await api.register("alice")
    body, headers = multipart([("content", b"caf\xe9", None)])
    reply = await api.post("/todo", token=token, body=body, headers=headers)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "text/json", "foo"])
async def test_wrong_content_type_is_415(api, services, content_type):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body='{"content": "a"}',
                           headers={"Content-Type": content_type})
    assert "Content-Type" in assert_error(reply, 415)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_missing_content_type_is_415(api, services):
    token = await api.register("alice")
    body = b'{"content": "a"}'
    reply = await raw_request(api, [
        "POST /todo HTTP/1.1",
        f"Authorization: Bearer {token}",
        f"Content-Length: {len(body)}",
    ], body)
    assert_error(reply, 415)
    await assert_nothing_stored(api, services, token)


# -- body size -------------------------------------------------------------------------------
def padded_json(size):
    """A valid `{"content": "big"}` body of exactly `size` bytes (JSON allows trailing spaces)."""
    body = b'{"content": "big"}'
    return body + b" " * (size - len(body))


@pytest.mark.gen_test
async def test_body_of_exactly_64_kib_is_accepted(api):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body=padded_json(MAX_BODY), headers=JSON)
    assert reply.status == 201, reply.json


@pytest.mark.gen_test
async def test_body_over_64_kib_is_413_and_stores_nothing(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body=padded_json(MAX_BODY + 1), headers=JSON)
    assert_error(reply, 413)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_form_body_over_64_kib_is_413_and_stores_nothing(api, services):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body="content=" + "x" * MAX_BODY, headers=FORM)
    assert_error(reply, 413)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_chunked_body_over_64_kib_is_413_and_stores_nothing(api, services):
    token = await api.register("alice")

    async def produce(write):
        await write(b'{"content": "big"}')
        for _ in range(20):
            await write(b" " * 4096)

    response = await api.client.fetch(
        f"{api.base_url}/todo", method="POST", body_producer=produce, raise_error=False,
        headers={"Authorization": f"Bearer {token}", **JSON}, request_timeout=20,
    )
    assert response.code == 413, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.body)["error"]["status"] == 413
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
async def test_chunked_body_under_64_kib_is_accepted(api):
    token = await api.register("alice")

    async def produce(write):
        await write(b'{"content": ')
        await write(b'"chunked"}')

    response = await api.client.fetch(
        f"{api.base_url}/todo", method="POST", body_producer=produce, raise_error=False,
        headers={"Authorization": f"Bearer {token}", **JSON}, request_timeout=20,
    )
    assert response.code == 201, response.body
    assert json.loads(response.body)["content"] == "chunked"


@pytest.mark.gen_test
async def test_patch_body_over_64_kib_is_413_and_changes_nothing(api, services):
    token, todo = await alice_with_todo(api)
    body = json.dumps({"content": "new"}).encode() + b" " * MAX_BODY
    reply = await api.patch(f"/todo/{todo['id']}", token=token, body=body, headers=JSON)
    assert_error(reply, 413)
    await assert_unchanged(api, services, token, todo)


# -- patch -----------------------------------------------------------------------------------
@pytest.mark.gen_test
@pytest.mark.parametrize("fields", [
    {},
    {"is_finished": "true"},
    {"is_finished": 1},
    {"is_finished": 0},
    {"is_finished": None},
    {"is_finished": {"$ne": None}},
    {"content": ""},
    {"content": "   "},
    {"content": "x" * 1001},
    {"content": 5},
    {"content": None},
    {"content": {"$ne": None}},
    {"content": "ok", "owner": "bob"},
    {"content": "ok", "created_at": "2020-01-01T00:00:00Z"},
    {"id": "0" * 24},
    {"finished_at": None},
    {"$set": {"content": "x"}},
])
async def test_bad_patch_is_400_and_changes_nothing(api, services, fields):
    token, todo = await alice_with_todo(api)
    reply = await api.patch(f"/todo/{todo['id']}", token=token, json_body=fields)
    assert_error(reply, 400)
    await assert_unchanged(api, services, token, todo)


@pytest.mark.gen_test
@pytest.mark.parametrize("body", ["[]", '"content"', "7", "null", '{"content": "a"', "", "{,}"])
async def test_patch_non_object_or_broken_json_is_400(api, services, body):
    token, todo = await alice_with_todo(api)
    reply = await api.patch(f"/todo/{todo['id']}", token=token, body=body, headers=JSON)
    assert_error(reply, 400)
    await assert_unchanged(api, services, token, todo)


@pytest.mark.gen_test
async def test_patch_invalid_utf8_is_400(api, services):
    token, todo = await alice_with_todo(api)
    reply = await api.patch(f"/todo/{todo['id']}", token=token,
                            body=b'{"content": "\xff"}', headers=JSON)
    assert_error(reply, 400)
    await assert_unchanged(api, services, token, todo)


@pytest.mark.gen_test
@pytest.mark.parametrize("headers", [
    FORM,
    {"Content-Type": "multipart/form-data; boundary=x"},
    {"Content-Type": "text/plain"},
    {},
])
async def test_patch_with_non_json_content_type_is_415(api, services, headers):
    token, todo = await alice_with_todo(api)
    reply = await api.patch(f"/todo/{todo['id']}", token=token, body="content=new",
                            headers=headers)
    assert_error(reply, 415)
    await assert_unchanged(api, services, token, todo)


# -- operator injection ----------------------------------------------------------------------
@pytest.mark.gen_test
@pytest.mark.parametrize("fields", [
    {"content": {"$ne": None}},
    {"content": {"$gt": ""}},
    {"$where": "sleep(1000) || true"},
    {"content": "a", "$where": "true"},
    {"content": "a", "$set": {"owner": None}},
])
async def test_operator_injection_in_json_is_400_and_stores_nothing(api, services, fields):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, json_body=fields)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
@pytest.mark.parametrize("body", ["content[$ne]=1", "content%5B%24ne%5D=", "$where=1"])
async def test_operator_injection_in_form_is_400_and_stores_nothing(api, services, body):
    token = await api.register("alice")
    reply = await api.post("/todo", token=token, body=body, headers=FORM)
    assert_error(reply, 400)
    await assert_nothing_stored(api, services, token)


@pytest.mark.gen_test
@pytest.mark.parametrize("text", ["$where", "$set", "$ne", "$content", "$$ROOT", "$$NOW",
                                  "{\"$ne\": null}", "a.b", "$"])
async def test_dollar_strings_are_stored_literally(api, text):
    token = await api.register("alice")
    created = await api.post("/todo", token=token, json_body={"content": text})
    assert created.status == 201, created.json
    assert created.json["content"] == text
    assert (await api.get(created.headers["Location"], token=token)).json["content"] == text
    assert [t["content"] for t in (await api.get("/todo", token=token)).json["data"]] == [text]


@pytest.mark.gen_test
async def test_dollar_string_from_form_is_stored_literally(api):
    token = await api.register("alice")
    created = await api.post("/todo", token=token, body="content=%24where", headers=FORM)
    assert created.status == 201, created.json
    assert created.json["content"] == "$where"


@pytest.mark.gen_test
@pytest.mark.parametrize("text", ["$where", "$set", "$content", "$created_at", "$$ROOT",
                                  "$$NOW", "$finished_at", "$$REMOVE"])
async def test_dollar_strings_are_stored_literally_by_patch(api, services, text):
    token, todo = await alice_with_todo(api)
    reply = await api.patch(f"/todo/{todo['id']}", token=token, json_body={"content": text})
    assert reply.status == 200, reply.json
    assert reply.json == {**todo, "content": text}
    assert (await api.get(f"/todo/{todo['id']}", token=token)).json["content"] == text
    doc = await services.db["todos"].find_one({"_id": ObjectId(todo["id"])})
    assert doc["content"] == text


@pytest.mark.gen_test
@pytest.mark.parametrize("query", [
    "finished[$ne]=1",
    "finished%5B%24ne%5D=1",
    "finished[$exists]=true",
    "finished=%7B%22%24ne%22%3Anull%7D",
    "$where=1",
    "owner=x",
])
async def test_operator_injection_in_query_is_400_and_matches_nothing(api, query):
    token, _todo = await alice_with_todo(api)
    reply = await api.get(f"/todo?{query}", token=token)
    assert_error(reply, 400)
    assert b"original" not in reply.body
    assert "data" not in reply.json


# -- list query ------------------------------------------------------------------------------
@pytest.mark.gen_test
@pytest.mark.parametrize("query", [
    "limit=0",
    "limit=101",
    "limit=abc",
    "limit=",
    "limit=-1",
    "limit=1.5",
    "limit=+5",
    "limit=%205",
    "limit=%C2%B2",
    "limit=99999999999999999999999",
    "start=-1",
    "start=abc",
    "start=",
    "start=1e3",
    "start=%C2%B2",
    "finished=maybe",
    "finished=",
    "finished=TRUE",
    "finished=1",
    "cursor=",
    "cursor=!!!",
    "cursor=abc",
    "cursor=%FF%FE",
    "foo=1",
    "start=0&cursor=MTIzLjA",
    "limit=1&limit=2",
    "start=0&start=0",
    "finished=true&finished=true",
])
async def test_bad_list_query_is_400(api, query):
    token, _todo = await alice_with_todo(api)
    reply = await api.get(f"/todo?{query}", token=token)
    assert_error(reply, 400)


@pytest.mark.gen_test
@pytest.mark.parametrize("cursor", [
    "123.zzz",
    "abc.000000000000000000000000",
    "123",
    "1.2.3",
    "99999999999999999999.000000000000000000000000",
    "123.00000000000000000000000",
    "123.0000000000000000000000000",
    "\u00e9.000000000000000000000000",
])
async def test_forged_cursor_is_400(api, cursor):
    token, _todo = await alice_with_todo(api)
    reply = await api.get(f"/todo?cursor={cursor_of(cursor)}", token=token)
    assert "cursor" in assert_error(reply, 400)


@pytest.mark.gen_test
async def test_start_with_real_cursor_is_400(api):
    token = await api.register("alice")
    for i in range(3):
        await api.post("/todo", token=token, json_body={"content": f"t{i}"})
    first = await api.get("/todo?limit=1", token=token)
    cursor = first.json["next"].split("cursor=")[1]
    reply = await api.get(f"/todo?start=1&cursor={cursor}", token=token)
    assert_error(reply, 400)


# -- methods and routes ----------------------------------------------------------------------
WRONG_METHODS = [
    ("PATCH", "/todo"),
    ("PUT", "/todo"),
    ("DELETE", "/todo"),
    ("POST", "/todo/{id}"),
    ("PUT", "/todo/{id}"),
    ("GET", "/todo/{id}/finish"),
    ("POST", "/todo/{id}/finish"),
    ("DELETE", "/todo/{id}/finish"),
    ("DELETE", "/healthz"),
    ("POST", "/healthz"),
    ("POST", "/readyz"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
async def test_wrong_method_is_405_json_and_changes_nothing(api, services, method, path):
    token, todo = await alice_with_todo(api)
    reply = await api.request(method, path.format(id=todo["id"]), token=token,
                              json_body={"content": "x"} if method != "GET" else None)
    assert_error(reply, 405)
    assert method not in reply.headers.get("Allow", "")
    await assert_unchanged(api, services, token, todo)


@pytest.mark.gen_test
@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
async def test_wrong_method_without_token_is_405(api, method, path):
    reply = await api.request(method, path.format(id=ObjectId()))
    assert_error(reply, 405)


@pytest.mark.gen_test
async def test_405_lists_allowed_methods(api):
    token, todo = await alice_with_todo(api)
    reply = await api.request("POST", f"/todo/{todo['id']}", token=token,
                              json_body={"content": "x"})
    assert_error(reply, 405)
    allowed = {m.strip() for m in reply.headers["Allow"].split(",")}
    assert allowed >= {"GET", "PATCH", "DELETE"}
    assert "POST" not in allowed


@pytest.mark.gen_test
async def test_unsupported_http_method_is_405_json(api):
    token = await api.register("alice")
    reply = await raw_request(api, ["BREW /todo HTTP/1.1", f"Authorization: Bearer {token}"])
    assert_error(reply, 405)


@pytest.mark.gen_test
@pytest.mark.parametrize(("method", "path"), [
    # (Not "/": through nginx that is the web app, tests/browser and tests/stack/test_assets.py.)
    ("GET", "/api"),
    ("GET", "/nope"),
    ("GET", "/todos"),
    ("POST", "/todos"),
    ("GET", "/todo/"),
    ("GET", "/todo/{id}/finish/extra"),
    ("PUT", "/todo/{id}/finished"),
    ("DELETE", "/todo/{id}/x/y"),
    ("GET", "/admin.php"),
])
async def test_unknown_route_is_404_json(api, services, method, path):
    token, todo = await alice_with_todo(api)
    reply = await api.request(method, path.format(id=todo["id"]), token=token,
                              json_body={"content": "x"} if method != "GET" else None)
    assert_error(reply, 404)
    await assert_unchanged(api, services, token, todo)


@pytest.mark.gen_test
async def test_unknown_route_without_token_is_404_json(api):
    reply = await api.get("/nope")
    assert_error(reply, 404)
