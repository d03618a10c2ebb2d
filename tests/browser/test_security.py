"""Where XSS and CSRF become real: hostile todo content stays text, a form on another origin
cannot change anything with the session cookie, page script never sees that cookie, and every
reply nginx sends, whoever made it, carries the security headers."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import api_user, call, fetch, log_in, new_context, watched

HOSTILE = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>"]


def test_hostile_content_is_shown_as_text(page, origin):
    username, token = api_user(origin, "xss")
    for content in HOSTILE:
        assert call(origin, "POST", "/todo", {"content": content}, token)[0] == 201
    p = page.page
    log_in(p, origin, username)
    for content in HOSTILE:
        expect(p.locator("#todo-list .content", has_text=content)).to_have_text(content)
    # Through the page's own editor too.
    p.get_by_label("New todo").fill('"><svg onload=alert(2)>')
    p.get_by_label("New todo").press("Enter")
    expect(p.locator("#todo-list .content").first).to_have_text('"><svg onload=alert(2)>')
    p.wait_for_timeout(300)  # an onerror/onload would have fired by now
    assert p.locator("#todo-list img, #todo-list script, #todo-list svg").count() == 0
    assert p.evaluate("document.querySelectorAll('img[src=x], svg').length") == 0
    assert page.dialogs == []
    assert page.errors == []


class _AttackPage(http.server.BaseHTTPRequestHandler):
    """Another origin's page: a form that posts to the app's /todo as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        body = (f'<form id="f" method="post" action="{self.target}/todo">'
                '<input name="content" value="planted by another site"></form>'
                '<script>document.getElementById("f").submit()</script>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def attacker(origin) -> Iterator[str]:
    """The attack page, served on another loopback port (the same site, another origin)."""
    handler = type("Attack", (_AttackPage,), {"target": origin})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_form_on_another_origin_changes_nothing(page, origin, attacker):
    username, token = api_user(origin, "csrf")
    p = page.page
    log_in(p, origin, username)
    # The session cookie is HttpOnly: page script cannot read it (the _xsrf token it may).
    cookies = p.evaluate("document.cookie")
    assert "session=" not in cookies.replace("_xsrf=", "")
    assert any(c["name"] == "session" and c["httpOnly"] for c in p.context.cookies())

    def planted(response):
        return response.url.endswith("/todo") and response.request.method == "POST"

    with p.expect_response(planted) as sent:
        p.goto(attacker)
    assert sent.value.status == 403
    status, listed = call(origin, "GET", "/todo", token=token)
    assert status == 200
    assert listed["data"] == []


def test_every_reply_carries_the_security_headers(stack):
    index = (stack.webapp_root / "index.html").read_text()
    script = index.split('<script type="module" src="')[1].split('"')[0]
    assert script.startswith("/assets/main.")
    too_big = b"x" * (stack.max_body_size + 1)
    _, token = api_user(stack.base_url, "headers")
    bearer = {"Authorization": f"Bearer {token}"}
    requests = [
        ("/todo", "GET", None, bearer, 200),                     # the edge, once cached
        ("/todo?limit=3", "GET", None, bearer, 200),             # an instance's
        ("/", "GET", None, {}, 200),
        (script, "GET", None, {}, 200),
        ("/assets/no-such.0000.js", "GET", None, {}, 404),
        ("/", "POST", b"", {}, 405),
        ("/todo", "GET", None, {}, 401),                         # the edge's or an instance's
        ("/todo", "POST", too_big, {"Content-Type": "text/plain"}, 413),  # nginx's own
        ("/jobs", "GET", None, {}, 401),
        ("/ws", "GET", None, {}, 400),                           # not a WebSocket handshake
        ("/no/such/route", "GET", None, {}, 404),
        ("/readyz", "GET", None, {}, 200),
    ]
    for scheme, port in (("http", stack.http_port), ("https", stack.https_port)):
        for path, method, data, extra, wanted in requests:
            status, headers, _ = fetch(f"{scheme}://127.0.0.1:{port}{path}", method, data, extra)
            where = f"{method} {scheme} {path}"
            assert status == wanted, where
            csp = headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp, where
            assert "script-src 'self';" in csp, where
            assert "unsafe-inline" not in csp, where
            assert headers["x-content-type-options"] == "nosniff", where
            assert headers["referrer-policy"] == "no-referrer", where
            assert ("strict-transport-security" in headers) == (scheme == "https"), where
            cache = headers.get("cache-control", "")
            if path == "/" and status == 200:
                assert cache == "no-cache"
            elif path == script:
                assert cache == "public, max-age=31536000, immutable"
                assert headers["content-type"].startswith("application/javascript")
            else:
                assert "immutable" not in cache, where


def test_the_app_works_over_https_with_a_secure_cookie(browser, stack):
    origin = f"https://127.0.0.1:{stack.https_port}"
    username, _ = api_user(origin, "https")
    context = new_context(browser, ignore_https_errors=True)  # the stack's self-signed cert
    try:
        page = watched(context.new_page())
        p = page.page
        log_in(p, origin, username)
        session = next(c for c in context.cookies() if c["name"] == "session")
        assert session["secure"]
        assert session["httpOnly"]
        p.get_by_label("New todo").fill("over TLS")
        p.get_by_label("New todo").press("Enter")
        expect(p.locator("#todo-list li:not(.pending)", has_text="over TLS")).to_have_count(1)
        p.reload()  # the server has it, and the socket (wss) reconnects
        expect(p.locator("#todo-list li", has_text="over TLS")).to_have_count(1)
        assert page.errors == []
    finally:
        context.close()
