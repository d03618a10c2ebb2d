"""Two tabs of one person (two browser contexts, two sessions): what one does appears in the
other within a second, without a reload, through /ws."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import api_user, log_in, new_context, watched

LIVE_MS = 1500  # "within a second", and a little room for a loaded CI machine


def test_a_change_in_one_tab_appears_in_the_other(browser, origin):
    username, _ = api_user(origin, "live")
    contexts = [new_context(browser), new_context(browser)]
    try:
        one, other = (watched(c.new_page()).page for c in contexts)
        for page in (one, other):
            log_in(page, origin, username)
            page.wait_for_function("() => window.performance.getEntriesByType('resource')"
                                   ".some(e => e.name.endsWith('/todo?limit=10'))")
        # Both sockets are subscribed once their hello arrived: the list is loaded by then.
        one.wait_for_timeout(300)
        one.get_by_label("New todo").fill("seen from the other tab")
        one.get_by_label("New todo").press("Enter")
        there = other.locator("#todo-list li", has_text="seen from the other tab")
        expect(there).to_have_count(1, timeout=LIVE_MS)

        other.get_by_role("checkbox", name="seen from the other tab").check()
        here = one.locator("#todo-list li", has_text="seen from the other tab")
        expect(here).to_have_class(re.compile("finished"), timeout=LIVE_MS)

        one.get_by_role("button", name="Delete “seen from the other tab”").click()
        expect(there).to_have_count(0, timeout=LIVE_MS)
    finally:
        for context in contexts:
            context.close()
