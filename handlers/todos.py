"""The todo routes, keeping the original paths and inputs (`/todo`, form field `content`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from urllib.parse import urlencode

from server.domain import validation
from server.domain.tokens import Principal
from server.domain.validation import DEFAULT_LIMIT, ListQuery

from .base import APIHandler


class TodoListHandler(APIHandler):
    def redis_keys_to_read(self) -> Callable[[Principal], Sequence[str]] | None:
        # No query at all: the default first page, which is read from the cache.
        if self.request.method == "GET" and not self.request.query_arguments:
            return lambda principal: self.todos.first_page_keys(principal.user_id)
        return None

    async def get(self) -> None:
        """The caller's todos, newest first, with a link to the next page."""
        query = validation.list_query(self.request.query_arguments)
        page = await self.todos.list_page(
            owner=self.user_id, query=query, read=self.redis_read, asked_at=self.arrived_at
        )
        next_link = json.dumps(self._next_link(query, page.next_cursor)).encode()
        # The page is already JSON (as cached): wrap it rather than decode and encode it again.
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(b'{"data": ' + page.todos_json + b', "next": ' + next_link + b"}")

    async def post(self) -> None:
        """Create a todo from `content` (form or JSON); a repeated Idempotency-Key replays."""
        key = validation.idempotency_key(self.request.headers)
        fields = validation.parse_fields(self.body, self.request.headers)
        new = validation.todo_create(fields)
        created = await self.todos.create(
            owner=self.user_id, content=new.content, idempotency_key=key
        )
        # A replay answers exactly as the first request did (201 + Location), so a client
        # retrying after a lost reply needs no second code path; the header tells them apart.
        self.set_status(201)
        self.set_header("Location", f"/todo/{created.todo['id']}")
        if created.replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.write(created.todo)

    def _next_link(self, query: ListQuery, cursor: str | None) -> str | None:
        if cursor is None:
            return None
        params: dict[str, str] = {}
        if query.limit != DEFAULT_LIMIT:
            params["limit"] = str(query.limit)
        if query.finished is not None:
            params["finished"] = "true" if query.finished else "false"
        params["cursor"] = cursor
        return f"{self.request.protocol}://{self.request.host}/todo?{urlencode(params)}"


class TodoHandler(APIHandler):
    async def get(self, todo_id: str) -> None:
        """One todo of the caller's."""
        self.write(await self.todos.get(owner=self.user_id, todo_id=validation.object_id(todo_id)))

    async def patch(self, todo_id: str) -> None:
        """Change content and/or is_finished; fields left out stay as they are."""
        oid = validation.object_id(todo_id)
        fields = validation.parse_json_object(self.body, self.request.headers.get("Content-Type"))
        changes = validation.todo_update(fields)
        self.write(await self.todos.update(owner=self.user_id, todo_id=oid, changes=changes))

    async def delete(self, todo_id: str) -> None:
        """Delete one todo of the caller's."""
        await self.todos.delete(owner=self.user_id, todo_id=validation.object_id(todo_id))
        self.set_status(204)


class TodoFinishHandler(APIHandler):
    async def put(self, todo_id: str) -> None:
        """Mark a todo finished; finishing it again changes nothing."""
        oid = validation.object_id(todo_id)
        self.write(await self.todos.finish(owner=self.user_id, todo_id=oid))


default_handlers = [
    (r"/todo", TodoListHandler),
    (r"/todo/(?P<todo_id>[^/]+)", TodoHandler),
    (r"/todo/(?P<todo_id>[^/]+)/finish", TodoFinishHandler),
]
