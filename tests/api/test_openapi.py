"""The OpenAPI document served at /openapi.json: valid, complete, and true to the real answers."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate
from tornado.routing import PathMatches
from tornado.web import Application, RequestHandler

from handlers import accounts, health, jobs, metrics, todos, ws
from handlers.base import APIHandler
from server.web.app import OPENAPI_FILE

HANDLER_MODULES = (todos, jobs, accounts, health, metrics, ws)
HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
NAMED_GROUP = re.compile(r"\(\?P<(\w+)>[^()]*\)")


def openapi_path(pattern: str) -> str:
    """A Tornado route regex as an OpenAPI path: `(?P<todo_id>[^/]+)` becomes `{todo_id}`."""
    path = NAMED_GROUP.sub(r"{\1}", pattern.removesuffix("$"))
    assert not re.search(r"[()\\^$*+?\[\]|]", path), f"cannot translate route {pattern!r}"
    return path


def implemented_methods(handler: type[RequestHandler]) -> set[str]:
    """The HTTP methods a handler class answers (RequestHandler's own ones are all 405s)."""
    return {m for m in HTTP_METHODS if getattr(handler, m) is not getattr(RequestHandler, m)}


def routed_operations() -> dict[tuple[str, str], type[APIHandler]]:
    operations: dict[tuple[str, str], type[APIHandler]] = {}
    for module in HANDLER_MODULES:
        for pattern, handler in module.default_handlers:
            for method in implemented_methods(handler):
                operations[(openapi_path(pattern), method)] = handler
    return operations


def documented_operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def schema_validator(spec: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator of `components/schemas/<name>`, its $refs resolved."""
    root = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return Draft202012Validator(root, format_checker=FormatChecker())


def assert_matches(spec: dict[str, Any], name: str, value: Any) -> None:
    errors = [e.message for e in schema_validator(spec, name).iter_errors(value)]
    assert not errors, f"{name}: {value!r}: {errors}"


@pytest.fixture
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))
    return loaded


@pytest.mark.gen_test
async def test_served_document_is_valid_openapi_31(api, spec):
    reply = await api.get("/openapi.json")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json["openapi"].startswith("3.1.")
    validate(reply.json)
    assert reply.json == spec


def test_translates_tornado_routes():
    assert openapi_path(r"/todo/(?P<todo_id>[^/]+)/finish") == "/todo/{todo_id}/finish"
    assert openapi_path(r"/todo$") == "/todo"


def test_handler_modules_are_the_applications_routes(app: Application):
    from_modules = [(p, h) for m in HANDLER_MODULES for p, h in m.default_handlers]
    from_app = []
    for rule in app.wildcard_router.rules:
        assert isinstance(rule.matcher, PathMatches)
        from_app.append((rule.matcher.regex.pattern, rule.target))
    assert sorted(from_app, key=str) == sorted(
        [(p if p.endswith("$") else p + "$", h) for p, h in from_modules], key=str
    )


def test_every_route_and_method_is_documented_and_nothing_else(spec):
    routed = routed_operations()
    documented = documented_operations(spec)
    assert sorted(set(routed) - set(documented)) == [], "routed but not documented"
    assert sorted(set(documented) - set(routed)) == [], "documented but not routed"
    routed_paths = {path for path, _method in routed}
    assert set(spec["paths"]) == routed_paths


def test_security_matches_which_handlers_need_a_token(spec):
    assert spec["security"] == [{"bearerAuth": []}, {"sessionCookie": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    cookie = spec["components"]["securitySchemes"]["sessionCookie"]
    assert (cookie["in"], cookie["name"]) == ("cookie", "session")
    documented = documented_operations(spec)
    for key, handler in routed_operations().items():
        public = documented[key].get("security") == []
        # A handler may leave some of its methods public (POST /session logs in).
        needs_token = handler.requires_auth and key[1].upper() not in getattr(
            handler, "public_methods", ())
        assert public == (not needs_token), key
        if needs_token:
            assert "401" in documented[key]["responses"], key


def test_schema_examples_match_their_schemas(spec):
    for name, schema in spec["components"]["schemas"].items():
        if "example" in schema:
            assert_matches(spec, name, schema["example"])


@pytest.mark.gen_test
async def test_real_answers_match_the_documented_schemas(api, spec):
    created_user = await api.post(
        "/users", json_body={"username": "spec-user", "password": "correct horse"}
    )
    assert created_user.status == 201
    assert_matches(spec, "User", created_user.json)
    issued = await api.post(
        "/tokens", json_body={"username": "spec-user", "password": "correct horse"}
    )
    assert issued.status == 201
    assert_matches(spec, "Token", issued.json)
    token = issued.json["token"]

    form = await api.post(
        "/todo",
        token=token,
        body="content=buy+milk",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status == 201
    assert_matches(spec, "Todo", form.json)
    assert form.headers["Location"] == f"/todo/{form.json['id']}"
    created = await api.post("/todo", token=token, json_body={"content": "walk the dog"})
    assert created.status == 201
    finished = await api.put(f"/todo/{created.json['id']}/finish", token=token)
    assert finished.status == 200
    assert_matches(spec, "Todo", finished.json)
    assert finished.json["finished_at"] is not None

    page = await api.get("/todo?limit=1", token=token)
    assert page.status == 200
    assert_matches(spec, "TodoPage", page.json)
    assert page.json["next"].startswith("http")
    assert "cursor=" in page.json["next"]
    last = await api.get("/todo", token=token)
    assert_matches(spec, "TodoPage", last.json)
    assert last.json["next"] is None

    errors = [
        await api.get("/todo"),
        await api.get("/todo/not-an-id", token=token),
        await api.post("/todo", token=token, json_body={"content": " "}),
        await api.patch(
            f"/todo/{form.json['id']}",
            token=token,
            body="x",
            headers={"Content-Type": "text/plain"},
        ),
        await api.post("/users", json_body={"username": "spec-user", "password": "12345678"}),
        await api.get(f"/todo/{form.json['id']}/finish", token=token),
    ]
    assert [e.status for e in errors] == [401, 404, 400, 415, 409, 405]
    for error in errors:
        assert_matches(spec, "Error", error.json)
        assert error.json["error"]["status"] == error.status

    assert_matches(spec, "Health", (await api.get("/healthz")).json)
    assert_matches(spec, "Readiness", (await api.get("/readyz")).json)
    logged_out = await api.delete("/tokens/current", token=token)
    assert logged_out.status == 204
