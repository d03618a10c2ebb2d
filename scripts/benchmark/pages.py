"""A benchmark user: registered through the API, seeded, and the paths of its pages."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from scripts.benchmark.api import Api
from scripts.benchmark.seeding import seed_up_to
from scripts.stack.config import StackConfig

PASSWORD = "bench password"  # noqa: S105 - a throwaway local account
DEEP_PAGE = 500
OFFSET_STARTS = (10, 5000)


@dataclass(frozen=True)
class UserPages:
    username: str
    todos: int
    token: str
    first_page: bytes  # GET /todo exactly as the service answers it
    cursor_page_2: str  # path
    deep_page: int  # page number reached by following `next` (DEEP_PAGE, or the last one)
    deep_cursor: str  # path


def prepare(cfg: StackConfig, api: Api, todos: int) -> UserPages:
    username = f"bench-{todos}"
    token = api.token(username, PASSWORD)
    seed_up_to(cfg, username, todos)
    first = api.get("/todo", token)
    path, page, second = _next_path(first), 1, ""
    deep = "/todo"
    # Page 500 as a client reaches it: by following `next` links (499 requests).
    while path is not None and page < DEEP_PAGE:
        deep, page = path, page + 1
        second = second or path
        path = _next_path(api.get(path, token))
    return UserPages(username=username, todos=todos, token=token, first_page=first,
                     cursor_page_2=second or "/todo", deep_page=page, deep_cursor=deep)


def _next_path(body: bytes) -> str | None:
    link = json.loads(body)["next"]
    if link is None:
        return None
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"
