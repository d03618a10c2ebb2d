"""The web app in a real browser: Debian's Chromium, headless, driven by Playwright's sync API,
against the session's stack through nginx (tests/conftest.py's `nginx_stack`), exactly as a
person reaches it. Nothing is skipped: without Chromium or axe-core these tests fail, with the
command that installs what is missing (scripts/bootstrap test).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from scripts.stack.config import StackConfig

CHROMIUM = os.environ.get("TODO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
HERE = Path(__file__).resolve().parent
AXE = HERE / "node_modules" / "axe-core" / "axe.min.js"
# Screenshots of the run (gitignored); docs/screenshots/ keeps the one the README shows.
ARTIFACTS = Path(os.environ.get("TODO_TEST_ARTIFACTS", HERE.parents[1] / "test-artifacts"))
PASSWORD = "correct horse battery"
# Waits in the browser: generous for a loaded CI machine, never reached when all is well.
TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)


# Package scope, not session: while Playwright's sync API runs, its asyncio loop is the
# thread's running loop, and the tests after these (on Tornado's IOLoop) need the thread free.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/bootstrap test "
                    "(it installs Debian's chromium)")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def stack(nginx_stack: StackConfig) -> StackConfig:
    return nginx_stack


@pytest.fixture(scope="session")
def origin(stack: StackConfig) -> str:
    return stack.base_url


def new_context(browser: Browser, **options: Any) -> BrowserContext:
    context = browser.new_context(accept_downloads=True, **options)
    context.set_default_timeout(TIMEOUT_MS)
    return context


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = new_context(browser)
    yield context
    context.close()


@dataclass
class Watched:
    """A page with what it said on the side: console errors, dialogs, failed requests."""

    page: Page
    errors: list[str]
    dialogs: list[str]


def watched(page: Page) -> Watched:
    result = Watched(page, [], [])
    # A refused request is logged as an error by Chromium itself ("Failed to load resource"):
    # the app expects some (401 before logging in); only the page's own errors count.
    page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load")
            and result.errors.append(m.text))
    page.on("pageerror", lambda exc: result.errors.append(str(exc)))

    def dialog(d: Any) -> None:
        result.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    return result


@pytest.fixture
def page(context: BrowserContext) -> Watched:
    return watched(context.new_page())


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def fetch(url: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request as a script makes it (not the page): status, headers (lower-case), body."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(url)
    request = urllib.request.Request(url, data=body, method=method,  # noqa: S310 - checked
                                     headers=headers or {})
    # The stack's certificate is self-signed.
    context = ssl._create_unverified_context()  # noqa: S323
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as reply:  # noqa: S310
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def call(origin: str, method: str, path: str, body: Any = None,
         token: str | None = None) -> tuple[int, Any]:
    """An API call with a JSON body and a bearer token: status and parsed reply."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    status, _, raw = fetch(origin + path, method, data, headers)
    return status, json.loads(raw) if raw else None


def api_user(origin: str, prefix: str) -> tuple[str, str]:
    """A user registered through the API, and a bearer token for it."""
    username = unique_name(prefix)
    status, _ = call(origin, "POST", "/users", {"username": username, "password": PASSWORD})
    assert status == 201
    status, issued = call(origin, "POST", "/tokens", {"username": username, "password": PASSWORD})
    assert status == 201
    return username, issued["token"]


def log_in(page: Page, origin: str, username: str) -> None:
    page.goto(origin + "/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text(f"Signed in as {username}").wait_for()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Serious and critical accessibility violations axe-core finds on the page as it is.
    Evaluated through the DevTools protocol, which the page's CSP does not restrict."""
    if not AXE.exists():
        pytest.fail(f"no axe-core at {AXE}: run scripts/bootstrap test (npm ci in tests/browser)")
    page.evaluate(AXE.read_text())
    results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"],
         "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in results["violations"] if v["impact"] in ("serious", "critical")
    ]
