"""A person's whole visit, in the order they would do it: register, log in, add, edit, finish,
filter, delete, page through 25 todos, log out; and the same screens checked by axe-core, used
with the keyboard alone, and photographed at desktop and phone widths."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import (
    PASSWORD,
    api_user,
    axe_violations,
    call,
    log_in,
    new_context,
    screenshot,
    unique_name,
    watched,
)


def item(page, text):
    return page.locator("#todo-list li", has_text=text)


def test_register_log_in_add_edit_finish_filter_delete_page_and_log_out(page, origin):
    p = page.page
    username = unique_name("journey")
    p.goto(origin + "/")
    p.get_by_label("Username").fill(username)
    p.get_by_label("Password").fill(PASSWORD)
    p.get_by_role("button", name="Create account").click()
    expect(p.get_by_text(f"Signed in as {username}")).to_be_visible()
    p.get_by_role("button", name="Log out").click()
    expect(p.get_by_role("heading", name="Log in")).to_be_visible()
    log_in(p, origin, username)

    # Add, with the keyboard: the new-todo field has the focus after logging in.
    expect(p.get_by_label("New todo")).to_be_focused()
    p.keyboard.type("buy milk")
    p.keyboard.press("Enter")
    expect(p.locator("#todo-list li.pending")).to_have_count(0)
    expect(item(p, "buy milk")).to_have_count(1)

    # Edit in place; the change is the server's (it survives a reload).
    p.get_by_role("button", name="Edit “buy milk”").click()
    editor = p.get_by_label("Edit todo")
    expect(editor).to_be_focused()
    editor.fill("buy oat milk")
    editor.press("Enter")
    expect(item(p, "buy oat milk")).to_have_count(1)
    # The keyboard's place is kept: back on the todo's Edit button; Escape leaves an edit.
    edit = p.get_by_role("button", name="Edit “buy oat milk”")
    expect(edit).to_be_focused()
    p.keyboard.press("Enter")
    p.keyboard.type(" and bread")
    p.keyboard.press("Escape")
    expect(edit).to_be_focused()
    expect(item(p, "buy oat milk")).to_have_count(1)
    p.reload()
    expect(item(p, "buy oat milk")).to_have_count(1)

    # Finish, then filter.
    p.get_by_label("New todo").fill("call mum")
    p.get_by_label("New todo").press("Enter")
    expect(item(p, "call mum")).to_have_count(1)
    p.get_by_role("checkbox", name="buy oat milk").check()
    expect(item(p, "buy oat milk")).to_have_class(re.compile("finished"))
    p.get_by_role("radio", name="Open").check()
    expect(item(p, "call mum")).to_have_count(1)
    expect(item(p, "buy oat milk")).to_have_count(0)
    p.get_by_role("radio", name="Finished").check()
    expect(item(p, "buy oat milk")).to_have_count(1)
    expect(item(p, "call mum")).to_have_count(0)
    p.get_by_role("radio", name="All").check()
    expect(p.locator("#todo-list li")).to_have_count(2)

    # Delete; gone for the server too.
    p.get_by_role("button", name="Delete “call mum”").click()
    expect(item(p, "call mum")).to_have_count(0)
    p.reload()
    expect(p.locator("#todo-list li")).to_have_count(1)

    # 25 more through the API, then page through them: 10, 10, 6 (with "buy oat milk").
    issued = call(origin, "POST", "/tokens", {"username": username, "password": PASSWORD})[1]
    token = issued["token"]
    for number in range(25):
        assert call(origin, "POST", "/todo", {"content": f"item {number:02}"}, token)[0] == 201
    p.reload()
    rows = p.locator("#todo-list li .content")
    expect(rows).to_have_count(10)
    expect(rows.first).to_have_text("item 24")
    expect(p.get_by_role("button", name="← Newer")).to_be_disabled()
    p.get_by_role("button", name="Older →").click()
    expect(rows.first).to_have_text("item 14")
    expect(rows).to_have_count(10)
    p.get_by_role("button", name="Older →").click()
    expect(rows).to_have_count(6)
    expect(rows.last).to_have_text("buy oat milk")
    expect(p.get_by_role("button", name="Older →")).to_be_disabled()
    p.get_by_role("button", name="← Newer").click()
    expect(rows.first).to_have_text("item 14")
    p.get_by_role("button", name="← Newer").click()
    expect(rows.first).to_have_text("item 24")

    # Log out: the list is gone, and going back shows nothing private.
    p.get_by_role("button", name="Log out").click()
    expect(p.get_by_role("heading", name="Log in")).to_be_visible()
    expect(p.locator("#todo-list li")).to_have_count(0)
    p.go_back()
    p.wait_for_load_state()
    expect(p.get_by_role("heading", name="Log in")).to_be_visible()
    assert "item 2" not in p.content()
    assert username not in p.locator("body").inner_text()
    p.reload()
    expect(p.get_by_role("heading", name="Log in")).to_be_visible()
    assert not page.errors
    assert not page.dialogs


def test_main_screens_are_accessible_and_fit_a_phone(browser, origin):
    username, token = api_user(origin, "a11y")
    for number, content in enumerate(["water the plants", "book the dentist", "renew passport"]):
        created = call(origin, "POST", "/todo", {"content": content}, token)[1]
        if number == 0:
            call(origin, "PUT", f"/todo/{created['id']}/finish", token=token)
    for name, size in (("desktop", {"width": 1280, "height": 800}),
                       ("phone-360", {"width": 360, "height": 740})):
        context = new_context(browser, viewport=size)
        page = watched(context.new_page())
        p = page.page
        p.goto(origin + "/")
        expect(p.get_by_role("heading", name="Log in")).to_be_visible()
        assert axe_violations(p) == [], f"login screen at {name}"
        screenshot(p, f"login-{name}")
        log_in(p, origin, username)
        expect(p.locator("#todo-list li")).to_have_count(3)
        assert axe_violations(p) == [], f"list screen at {name}"
        # Nothing wider than the screen: no sideways scrolling at 360 px.
        assert p.evaluate("document.documentElement.scrollWidth") <= size["width"]
        screenshot(p, f"list-{name}")
        assert not page.errors, page.errors
        context.close()
