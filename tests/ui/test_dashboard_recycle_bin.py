"""The dashboard's recycle bin in a real Chromium against a real `creep server` (SQLite): a
finished task's Delete button, the deleted task's page (badge, Deleted time, only Restore),
the overview's counts leaving it out, the tasks list's Deleted filter, and Restore."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.api.conftest import Server
from tests.ui.conftest import create_task, sign_in

pytestmark = pytest.mark.timeout(180)


def test_delete_and_restore_a_task_from_its_page(ui_server: Server, page: Any) -> None:
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        queued = create_task(c, task_type="BIN")["task_id"]
        done = create_task(c, task_type="BIN")["task_id"]
        assert c.post(f"/v1/tasks/{done}/cancel").status_code == 200

        # An unfinished task has no Delete button.
        sign_in(page, ui_server, key, f"tasks/{queued}")
        page.wait_for_selector("h1 .badge:text('QUEUED')")
        expect(page.locator("button:text('Cancel')")).to_be_visible()
        expect(page.locator("button:text('Delete')")).to_have_count(0)

        page.goto(f"{ui_server.url}/ui/#/tasks/{done}")
        page.wait_for_selector("h1 .badge:text('CANCELLED')")
        page.click("button:text('Delete')")  # the confirmation is accepted (conftest)
        page.wait_for_selector("h1 #deleted")
        assert c.get(f"/v1/tasks/{done}").json()["deleted_at"] is not None
        # Deleted: only Restore; the timeline follows on to the `deleted` event.
        expect(page.locator("button:text('Retry')")).to_have_count(0)
        expect(page.locator("button:text('Delete')")).to_have_count(0)
        expect(page.locator(".fields dt:text('Deleted')")).to_have_count(1)
        page.wait_for_selector("#events .event:has-text('deleted')")

        # The overview counts what the list shows: the deleted task is left out.
        page.goto(f"{ui_server.url}/ui/#/")
        expect(page.locator("#count-total .n")).to_have_text("1")
        expect(page.locator("#count-QUEUED .n")).to_have_text("1")
        expect(page.locator("#count-CANCELLED .n")).to_have_text("0")

        # The list leaves it out; the Deleted filter shows it.
        page.goto(f"{ui_server.url}/ui/#/tasks?task_type=BIN")
        rows = page.locator("table.grid tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text(queued)
        page.select_option("select[name=deleted]", "true")
        page.click("form.filters button[type=submit]")
        page.wait_for_url(re.compile(r"deleted=true"))
        expect(page.locator("h1")).to_have_text("Deleted tasks")
        expect(rows.first).to_contain_text(done)
        expect(rows).to_have_count(1)
        expect(page.locator("table.grid thead")).to_contain_text("Deleted")

        page.click(f"table.grid a:has-text('{done}')")
        page.wait_for_selector("h1 #deleted")
        page.click("button:text('Restore')")
        expect(page.locator("h1 #deleted")).to_have_count(0)
        expect(page.locator("button:text('Retry')")).to_be_visible()
        page.wait_for_selector("#events .event:has-text('restored')")
        assert c.get(f"/v1/tasks/{done}").json()["deleted_at"] is None


def test_a_read_only_key_sees_no_delete_or_restore(ui_server: Server, page: Any) -> None:
    tenant, key = ui_server.tenant()
    reader = ui_server.key(tenant, read_only=True)["key"]
    with ui_server.client(key) as c:
        done = create_task(c, task_type="BIN")["task_id"]
        c.post(f"/v1/tasks/{done}/cancel")
        sign_in(page, ui_server, reader, f"tasks/{done}")
        page.wait_for_selector("h1 .badge:text('CANCELLED')")
        expect(page.locator("button:text('Delete')")).to_have_count(0)
        assert c.delete(f"/v1/tasks/{done}").status_code == 200
        page.reload()
        page.wait_for_selector("h1 #deleted")
        expect(page.locator("button:text('Restore')")).to_have_count(0)
