"""The dashboard's edges in a real Chromium against a real `creep server` (SQLite): pagers on
detail pages."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.api.conftest import Server
from tests.ui.conftest import sign_in

pytestmark = pytest.mark.timeout(180)


def _task(c: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"task_type": "RENDER", "input_payload": {"n": 1}, **fields}
    r = c.post("/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def _rows(page: Any, scope: str = "") -> list[str]:
    return [r.inner_text() for r in page.query_selector_all(f"{scope} table.grid tbody tr")]


# -- pagers on detail pages --------------------------------------------------------------------


def test_batch_detail_next_page_stays_on_the_batch(ui_server: Server, page: Any) -> None:
    """A batch's task list pages within the batch: "Next page" goes to
    `#/batches/<id>?cursor=…` and shows the batch's tasks after the first 50 (it used to
    leave for the batch list, so they could never be seen)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/batches", json={"title": "big", "tasks": [
            {"task_type": "BATCHED", "input_payload": {"i": i}} for i in range(53)]})
        assert r.status_code == 201, r.text
        batch_id = r.json()["batch_id"]
        ids = {t["task_id"] for t in c.get("/v1/tasks", params={
            "batch_id": batch_id, "limit": 100}).json()["items"]}
        assert len(ids) == 53
    sign_in(page, ui_server, key, f"batches/{batch_id}")
    expect(page.locator("table.grid tbody tr")).to_have_count(50)
    first = {m for row in _rows(page) for m in ids if m in row}
    page.click("button.next")
    page.wait_for_url(re.compile(r"cursor="))
    assert f"#/batches/{batch_id}?" in page.url, page.url
    expect(page.locator("table.grid tbody tr")).to_have_count(3)
    rest = {m for row in _rows(page) for m in ids if m in row}
    assert first | rest == ids
    page.click("button:text('First page')")
    page.wait_for_url(re.compile(rf"#/batches/{batch_id}$"))
    expect(page.locator("table.grid tbody tr")).to_have_count(50)


def test_schedule_executions_next_page_stays_on_the_schedule(ui_server: Server,
                                                             page: Any) -> None:
    """A schedule's executions page within the schedule (`#/schedules/<uid>?cursor=…`), the
    oldest execution on the second page, instead of leaving for the schedule list."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/schedules", json={"name": "busy", "type": "BUSY",
                                          "cron_expr": "0 3 * * *"})
        assert r.status_code == 201, r.text
        uid = r.json()["uid"]
        for _ in range(51):
            assert c.post(f"/v1/schedules/{uid}/trigger").status_code == 201
        executions = c.get(f"/v1/schedules/{uid}/executions", params={"limit": 100}).json()
        assert len(executions["items"]) == 51
    sign_in(page, ui_server, key, f"schedules/{uid}")
    expect(page.locator("table.grid tbody tr")).to_have_count(50)
    page.click("button.next")
    page.wait_for_url(re.compile(r"cursor="))
    assert f"#/schedules/{uid}?" in page.url, page.url
    expect(page.locator("table.grid tbody tr")).to_have_count(1)
    expect(page.locator("h1")).to_contain_text("busy")
