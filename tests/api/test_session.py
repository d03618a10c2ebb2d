"""The browser session: POST/GET/DELETE /session, the cookie on every route, and its CSRF defence.

One real instance on a real socket (the cookie's Secure flag over HTTPS, through nginx, is in
tests/stack/test_edge.py). A browser is played by hand: the tests send the Cookie header it
would send, with or without the X-XSRFToken, Origin and Sec-Fetch-Site headers it would add.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import pytest

from handlers.cookies import CROSS_SITE, NO_XSRF
from handlers.ws import COOKIE_FROM_ANOTHER_SITE
from server.domain.login_throttle import FAILURE_LIMIT, TOO_MANY_LOGINS, WINDOW, LoginThrottle
from tests.api.test_accounts import (  # noqa: F401
    Instance,
    instance,
    own_redis,
    own_redis_settings,
)
from tests.api.test_openapi import assert_matches
from tests.api.test_ws import SPEC, open_socket, refused
from tests.conftest import Api, Reply, error_of

PASSWORD = "correct horse"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
UNAUTHORIZED = "missing, invalid, expired or revoked bearer token"


def set_cookies(reply: Reply) -> dict[str, Any]:
    """The reply's Set-Cookie headers, by cookie name (each a parsed Morsel)."""
    found: dict[str, Any] = {}
    for header in reply.headers.get_list("Set-Cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        found.update(jar)
    return found


@dataclass
class Browser:
    """What a browser holds after logging in: the two cookies, and the page's origin."""

    api: Api
    session: str
    xsrf: str

    @property
    def origin(self) -> str:
        return self.api.base_url

    def headers(self, *, xsrf: bool = True, **extra: str) -> dict[str, str]:
        headers = {"Cookie": f"session={self.session}; _xsrf={self.xsrf}"}
        if xsrf:
            headers["X-XSRFToken"] = self.xsrf
        return {**headers, **extra}

    async def request(self, method: str, path: str, *, xsrf: bool = True,
                      headers: dict[str, str] | None = None, **kwargs: Any) -> Reply:
        return await self.api.request(method, path, headers=self.headers(xsrf=xsrf, **(
            headers or {})), **kwargs)


async def log_in(api: Api, username: str = "alice", password: str = PASSWORD) -> Reply:
    return await api.post("/session", json_body={"username": username, "password": password})


async def browser(api: Api, username: str = "alice") -> Browser:
    """A registered user logged in through POST /session."""
    created = await api.post("/users", json_body={"username": username, "password": PASSWORD})
    assert created.status == 201, created.json
    reply = await log_in(api, username)
    assert reply.status == 201, reply.json
    cookies = set_cookies(reply)
    return Browser(api, cookies["session"].value, cookies["_xsrf"].value)


async def todo_count(api: Api, token: str) -> int:
    return len((await api.get("/todo?limit=100", token=token)).json["data"])


# -- POST /session ------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_login_sets_an_httponly_lax_session_cookie_and_a_readable_strict_xsrf_cookie(
    api, services
):
    await api.post("/users", json_body={"username": "alice", "password": PASSWORD})
    reply = await log_in(api)
    assert reply.status == 201, reply.json
    assert set(reply.json) == {"username", "expires_at"}
    assert reply.json["username"] == "alice"
    assert_matches(SPEC, "Session", reply.json)
    assert reply.headers["Cache-Control"] == "no-store"
    cookies = set_cookies(reply)
    session, xsrf = cookies["session"], cookies["_xsrf"]
    assert session.value.count(".") == 1
    assert session.value not in reply.body.decode()
    assert session["httponly"] is True
    assert session["samesite"] == "Lax"
    assert session["path"] == "/"
    assert session["max-age"] == str(services.settings.token_ttl)
    assert not session["secure"]  # plain HTTP here; Secure over HTTPS: tests/stack/test_edge.py
    assert not xsrf["httponly"]  # the page's JavaScript reads it
    assert xsrf["samesite"] == "Strict"
    assert xsrf["path"] == "/"
    # The cookie's token is a bearer token like any other.
    assert (await api.get("/todo", token=session.value)).status == 200


@pytest.mark.gen_test
async def test_wrong_credentials_get_the_same_401_as_post_tokens(api):
    await api.post("/users", json_body={"username": "alice", "password": PASSWORD})
    for username, password in (("alice", "not the password"), ("nobody", PASSWORD)):
        by_session = await log_in(api, username, password)
        by_token = await api.post("/tokens", json_body={"username": username,
                                                        "password": password})
        assert by_session.status == by_token.status == 401
        assert by_session.json == by_token.json
        assert "session" not in set_cookies(by_session)
    assert error_of(await api.post("/session", body="username=alice", headers=FORM))[0] == 415


@pytest.mark.gen_test
async def test_another_sites_page_cannot_log_a_browser_in(api):
    await api.post("/users", json_body={"username": "alice", "password": PASSWORD})
    reply = await api.post("/session", json_body={"username": "alice", "password": PASSWORD},
                           headers={"Origin": "http://evil.example"})
    assert error_of(reply) == (403, CROSS_SITE)
    assert "session" not in set_cookies(reply)


# -- GET /session and reads ---------------------------------------------------------------------
@pytest.mark.gen_test
async def test_the_cookie_reads_the_session_and_the_list_and_get_session_renews_the_xsrf_cookie(
    api,
):
    page = await browser(api)
    reply = await page.request("GET", "/session", xsrf=False)
    assert reply.status == 200, reply.json
    assert set(reply.json) == {"username", "user_id", "expires_at"}
    assert_matches(SPEC, "SessionInfo", reply.json)
    assert reply.json["username"] == "alice"
    assert reply.headers["Cache-Control"] == "no-store"
    renewed = set_cookies(reply)["_xsrf"]
    assert renewed["samesite"] == "Strict"
    assert not renewed["httponly"]
    listed = await page.request("GET", "/todo", xsrf=False)
    assert listed.status == 200
    assert listed.json["data"] == []
    # A read sets no cookie: the edge's copy of the first page is the same reply.
    assert set_cookies(listed) == {}


@pytest.mark.gen_test
async def test_get_session_without_a_cookie_is_401_and_still_sets_the_xsrf_cookie(api):
    reply = await api.get("/session")
    assert error_of(reply) == (401, UNAUTHORIZED)
    assert "_xsrf" in set_cookies(reply)
    assert error_of(await api.get("/session", headers={"Cookie": "session=nonsense"}))[0] == 401


# -- writes: the CSRF defence -------------------------------------------------------------------
@pytest.mark.gen_test
async def test_a_cookie_write_needs_the_xsrf_header_equal_to_the_cookie(api):
    page = await browser(api)
    token = await api.register("alice-api", PASSWORD)
    missing = await page.request("POST", "/todo", xsrf=False, json_body={"content": "x"})
    assert error_of(missing) == (403, NO_XSRF)
    wrong = await page.request("POST", "/todo", xsrf=False, json_body={"content": "x"},
                               headers={"X-XSRFToken": "2|00000000|0000|1"})
    assert error_of(wrong) == (403, NO_XSRF)
    assert await todo_count(api, page.session) == 0
    created = await page.request("POST", "/todo", json_body={"content": "buy milk"},
                                 headers={"Origin": page.origin, "Sec-Fetch-Site": "same-origin"})
    assert created.status == 201, created.json
    path = f"/todo/{created.json['id']}"
    assert error_of(await page.request("DELETE", path, xsrf=False))[0] == 403
    assert error_of(await page.request("PATCH", path, xsrf=False,
                                       json_body={"is_finished": True}))[0] == 403
    assert (await page.request("PATCH", path, json_body={"is_finished": True})).status == 200
    assert (await page.request("DELETE", path)).status == 204
    assert await todo_count(api, token) == 0  # and the other user saw nothing of it


@pytest.mark.gen_test
@pytest.mark.parametrize("headers", [
    pytest.param({"Origin": "http://evil.example"}, id="foreign-origin"),
    pytest.param({"Origin": "null"}, id="opaque-origin"),
    pytest.param({"Origin": "https://127.0.0.1"}, id="other-scheme"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, id="cross-site"),
    pytest.param({"Sec-Fetch-Site": "same-site"}, id="same-site"),
])
async def test_a_cookie_write_from_another_origin_is_403_even_with_the_xsrf_token(api, headers):
    page = await browser(api)
    reply = await page.request("POST", "/todo", json_body={"content": "x"}, headers=headers)
    assert error_of(reply) == (403, CROSS_SITE)
    assert await todo_count(api, page.session) == 0


@pytest.mark.gen_test
async def test_a_cross_site_form_post_creates_nothing(api):
    """What another site's auto-submitted <form method=post action=/todo> makes a browser send
    (were SameSite=Lax not to keep the cookie back): the cookies, a form body, its Origin."""
    page = await browser(api)
    reply = await api.post("/todo", body="content=pwned", headers={
        **FORM, "Cookie": f"session={page.session}; _xsrf={page.xsrf}",
        "Origin": "http://127.0.0.2:9", "Sec-Fetch-Site": "cross-site",
    })
    assert error_of(reply)[0] == 403
    # Even without the headers that give it away, the form cannot carry the X-XSRFToken.
    reply = await api.post("/todo", body="content=pwned&_xsrf=guess", headers={
        **FORM, "Cookie": f"session={page.session}; _xsrf={page.xsrf}",
    })
    assert error_of(reply)[0] == 403
    assert await todo_count(api, page.session) == 0


@pytest.mark.gen_test
async def test_bearer_requests_need_no_csrf_defence_and_the_header_wins_over_the_cookie(api):
    page = await browser(api)
    token = await api.register("bob", PASSWORD)
    cross_site = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    created = await api.post("/todo", token=token, json_body={"content": "by bob"},
                             headers={**cross_site, "Cookie": f"session={page.session}"})
    assert created.status == 201, created.json
    assert await todo_count(api, token) == 1  # bob's, not alice's
    assert await todo_count(api, page.session) == 0
    bad_header = await page.request("GET", "/todo", headers={"Authorization": "Bearer nonsense"})
    assert error_of(bad_header) == (401, UNAUTHORIZED)


# -- DELETE /session ----------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_logout_needs_the_xsrf_header_then_revokes_the_token_and_clears_the_cookie(api):
    page = await browser(api)
    assert error_of(await page.request("DELETE", "/session", xsrf=False))[0] == 403
    assert error_of(await page.request("DELETE", "/session", headers={
        "Origin": "http://evil.example"}))[0] == 403
    assert (await page.request("GET", "/session")).status == 200  # still logged in
    reply = await page.request("DELETE", "/session", headers={"Origin": page.origin})
    assert reply.status == 204, reply.json
    cleared = set_cookies(reply)["session"]
    assert cleared.value == ""
    assert cleared["expires"]
    assert cleared["path"] == "/"
    for method, path in (("GET", "/session"), ("GET", "/todo"), ("DELETE", "/session"),
                         ("POST", "/todo"), ("DELETE", "/tokens/current")):
        assert error_of(await page.request(method, path))[0] == 401, (method, path)
    assert error_of(await api.get("/todo", token=page.session))[0] == 401


@pytest.mark.gen_test
async def test_delete_tokens_current_with_the_cookie_logs_the_session_out_too(api):
    page = await browser(api)
    assert (await page.request("DELETE", "/tokens/current")).status == 204
    assert error_of(await page.request("GET", "/session"))[0] == 401


# -- /ws ----------------------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=30)
async def test_the_socket_takes_the_cookie_from_this_origin_only_and_logout_closes_it(
    api, base_url
):
    page = await browser(api)
    cookie = {"Cookie": f"session={page.session}"}
    for origin in ("http://evil.example", "null"):
        assert await refused(base_url, headers={**cookie, "Origin": origin}) == (
            403, "this Origin may not open notification sockets")
    # Without an Origin (no browser sends that): the cookie alone is not enough.
    assert await refused(base_url, headers=cookie) == (403, COOKIE_FROM_ANOTHER_SITE)
    assert (await refused(base_url, headers={"Origin": page.origin}))[0] == 401
    socket = await open_socket(base_url, headers={**cookie, "Origin": page.origin})
    assert (await page.request("DELETE", "/session")).status == 204
    assert await socket.closed() == 1008
    assert (await refused(base_url, headers={**cookie, "Origin": page.origin}))[0] == 401


# -- the brute-force defence --------------------------------------------------------------------
def assert_locked_out(reply: Reply) -> None:
    assert error_of(reply) == (429, TOO_MANY_LOGINS)
    assert 1 <= int(reply.headers["Retry-After"]) <= WINDOW
    assert "session" not in set_cookies(reply)
    assert "token" not in reply.json


async def fail_logins(apis: list[Api], username: str, times: int = FAILURE_LIMIT) -> None:
    """`times` wrong passwords at once, spread over `apis`, POST /tokens and POST /session, and
    client addresses (nothing in the count depends on those)."""
    async def attempt(n: int) -> Reply:
        return await apis[n % len(apis)].post(
            ("/tokens", "/session")[n % 2], headers={"X-Real-IP": f"10.0.0.{n}"},
            json_body={"username": username, "password": f"guess {n}"},
        )

    replies = await asyncio.gather(*(attempt(n) for n in range(times)))
    assert [reply.status for reply in replies] == [401] * times


@pytest.mark.gen_test(timeout=60)
async def test_twenty_wrong_passwords_lock_that_username_only_even_for_the_right_password(
    api, services
):
    for name in ("alice", "bob"):
        await api.post("/users", json_body={"username": name, "password": PASSWORD})
    await fail_logins([api], "alice")
    for path in ("/tokens", "/session"):
        assert_locked_out(await api.post(path, json_body={"username": "alice",
                                                          "password": "wrong again"}))
        assert_locked_out(await api.post(path, json_body={"username": "alice",
                                                          "password": PASSWORD}))
    assert (await log_in(api, "bob")).status == 201
    assert (await api.post("/tokens", json_body={"username": "bob",
                                                 "password": PASSWORD})).status == 201
    # When the window has passed (shortened here, in Redis itself), the right password works.
    key = f"{services.settings.redis_prefix}login-failures:alice"
    assert 0 < await services.redis.client.ttl(key) <= WINDOW
    await services.redis.client.pexpire(key, 20)
    await asyncio.sleep(0.1)
    assert (await log_in(api, "alice")).status == 201


def lower_limit(*instances: Instance, limit: int = 4) -> None:
    """The real throttle with a lower limit: each wrong password costs a password hash."""
    for inst in instances:
        inst.services.logins = LoginThrottle(inst.services.redis, limit=limit)


@pytest.mark.gen_test(timeout=60)
async def test_the_lockout_is_shared_by_every_instance_and_unknown_usernames_count_too(services):
    async with instance(services.settings) as first, instance(services.settings) as second:
        lower_limit(first, second)
        await fail_logins([first.api, second.api], "nobody", times=4)
        for either in (first, second):
            assert_locked_out(await log_in(either.api, "nobody"))


@pytest.mark.gen_test(timeout=60)
async def test_while_redis_is_down_each_instance_still_counts_on_its_own(
    own_redis, own_redis_settings  # noqa: F811
):
    async with instance(own_redis_settings, drop_database=True) as inst:
        lower_limit(inst)
        await inst.api.post("/users", json_body={"username": "alice", "password": PASSWORD})
        own_redis.stop()
        await fail_logins([inst.api], "alice", times=4)
        assert_locked_out(await log_in(inst.api, "alice"))
        assert (await log_in(inst.api, "bob")).status == 401  # another username: not locked
