"""Jobs from the page: an export whose downloaded file holds the rows the list shows, an
import whose two bad rows are shown by their line in the file, and a progress bar that moves."""

from __future__ import annotations

import csv
import io

from playwright.sync_api import expect

from tests.browser.conftest import api_user, call, log_in

JOB_MS = 30_000  # a Celery worker picks the job up and runs it


def test_export_downloads_the_rows_the_list_shows(page, origin):
    username, token = api_user(origin, "export")
    for number in range(4):
        created = call(origin, "POST", "/todo", {"content": f"export me, {number}"}, token)[1]
    call(origin, "PUT", f"/todo/{created['id']}/finish", token=token)
    p = page.page
    log_in(p, origin, username)
    shown = p.locator("#todo-list li .content")
    expect(shown).to_have_count(4)
    p.get_by_label("Export all todos as").select_option("csv")
    p.get_by_role("button", name="Export", exact=True).click()
    link = p.get_by_role("link", name="Download")
    expect(link).to_be_visible(timeout=JOB_MS)
    expect(p.locator("#export-status")).to_have_text("Export ready: 4 todos.")
    assert p.locator("#export-progress").evaluate("bar => bar.value === bar.max")
    with p.expect_download() as started:
        link.click()
    download = started.value
    assert download.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(download.path().read_text(encoding="utf-8"))))
    assert [row["content"] for row in rows] == shown.all_text_contents()
    assert [row["is_finished"] for row in rows] == ["true", "false", "false", "false"]


def test_import_shows_the_rejected_rows_by_line(page, origin, tmp_path):
    username, token = api_user(origin, "import")
    p = page.page
    log_in(p, origin, username)
    text = ("content,is_finished\n"
            "water the plants,false\n"
            ",false\n"                      # line 3: empty content
            "book the dentist,true\n"
            f"{'x' * 1001},false\n")        # line 5: too long
    p.get_by_label("Import a JSON or CSV file").set_input_files(
        files=[{"name": "todos.csv", "mimeType": "text/csv", "buffer": text.encode()}])
    p.get_by_role("button", name="Import", exact=True).click()
    status = p.locator("#import-status")
    expect(status).to_have_text("Imported 2, 0 already there, 2 rejected.", timeout=JOB_MS)
    rejected = p.get_by_role("list", name="Rejected rows").locator("li")
    expect(rejected).to_have_count(2)
    expect(rejected.nth(0)).to_contain_text("Line 3 (row 2)")
    expect(rejected.nth(1)).to_contain_text("Line 5 (row 4)")
    # The list hears of the import ("todos" message) and shows the two new todos.
    expect(p.locator("#todo-list li .content")).to_have_text(["water the plants",
                                                              "book the dentist"])
    assert call(origin, "GET", "/todo", token=token)[1]["data"][1]["is_finished"] is True


def test_the_import_progress_bar_moves_through_the_rows(page, origin):
    username, _ = api_user(origin, "progress")
    p = page.page
    log_in(p, origin, username)
    # Every change of the bar, as (value, max): the worker reports after each 1,000 rows.
    p.evaluate("""() => {
        const bar = document.getElementById("import-progress");
        window.seenProgress = [];
        new MutationObserver(() => window.seenProgress.push([bar.value, bar.max]))
            .observe(bar, { attributes: true, attributeFilter: ["value", "max"] });
    }""")
    rows = 5000
    text = "content\n" + "".join(f"row {number}\n" for number in range(rows))
    p.get_by_label("Import a JSON or CSV file").set_input_files(
        files=[{"name": "many.csv", "mimeType": "text/csv", "buffer": text.encode()}])
    p.get_by_role("button", name="Import", exact=True).click()
    expect(p.locator("#import-status")).to_have_text(
        f"Imported {rows}, 0 already there, 0 rejected.", timeout=JOB_MS)
    seen = p.evaluate("window.seenProgress")
    of_rows = [value for value, top in seen if top == rows]
    assert any(0 < value < rows for value in of_rows), seen
    assert of_rows == sorted(of_rows)
