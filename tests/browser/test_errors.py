"""When the API refuses, the page says so in a sentence and undoes what it showed: a 503 on a
finish, a 429 on an add, a network that is gone, and a session that ended elsewhere. The
refusals are made by intercepting the page's requests (the real API would need an outage)."""

from __future__ import annotations

import json
import re

from playwright.sync_api import expect

from tests.browser.conftest import api_user, call, log_in


def refuse(status: int, message: str, retry_after: int):
    body = json.dumps({"error": {"status": status, "message": message}})

    def handler(route):
        route.fulfill(status=status, body=body, content_type="application/json",
                      headers={"Retry-After": str(retry_after)})

    return handler


def test_refusals_are_sentences_and_roll_back(page, origin):
    username, token = api_user(origin, "errors")
    call(origin, "POST", "/todo", {"content": "stay open"}, token)
    p = page.page
    log_in(p, origin, username)
    alert = p.get_by_role("alert")
    checkbox = p.get_by_role("checkbox", name="stay open")

    p.route("**/todo/*/finish", refuse(503, "database unavailable, try again shortly", 3))
    checkbox.click()
    expect(alert).to_contain_text("The service is briefly unavailable, so we could not finish "
                                  "the todo. Try again in 3 seconds. The change was undone.")
    expect(checkbox).not_to_be_checked()
    p.unroute("**/todo/*/finish")

    p.route("**/todo", refuse(429, "too many requests, slow down", 7))
    p.get_by_label("New todo").fill("one too many")
    p.get_by_label("New todo").press("Enter")
    expect(alert).to_contain_text("Too many requests, so we could not add the todo. "
                                  "Try again in 7 seconds.")
    expect(p.locator("#todo-list li")).to_have_count(1)
    expect(p.get_by_label("New todo")).to_have_value("one too many")  # nothing typed is lost
    p.unroute("**/todo")

    p.context.set_offline(True)
    p.get_by_role("button", name="Delete “stay open”").click()
    expect(alert).to_contain_text("You are offline, so we could not delete the todo.")
    expect(p.locator("#todo-list li")).to_have_count(1)
    with p.expect_response(lambda r: "/todo?" in r.url):  # back online, the page refetches
        p.context.set_offline(False)

    # The session is gone (as after its expiry): back to the login form, the list forgotten.
    p.context.clear_cookies()
    checkbox.click()
    expect(p.get_by_role("heading", name="Log in")).to_be_visible()
    expect(alert).to_contain_text("Your session has ended. Please log in again.")
    expect(p.locator("#todo-list li")).to_have_count(0)
    assert page.dialogs == []
    assert page.errors == []


def test_a_locked_username_is_told_when_to_try_again(page, origin):
    username, _ = api_user(origin, "locked")
    for _ in range(20):  # the throttle's allowance of wrong passwords for one username
        status, _reply = call(origin, "POST", "/tokens",
                              {"username": username, "password": "not the password"})
        assert status == 401
    p = page.page
    p.goto(origin + "/")
    p.get_by_label("Username").fill(username)
    p.get_by_label("Password").fill("correct horse battery")  # right, but locked all the same
    p.get_by_role("button", name="Log in").click()
    expect(p.get_by_role("alert")).to_contain_text(
        re.compile(r"Too many attempts to log in\. Try again in \d+ seconds?\."))
    expect(p.get_by_role("heading", name="Log in")).to_be_visible()
