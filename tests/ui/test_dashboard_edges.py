"""The dashboard's edges in a real Chromium against a real `creep server` (SQLite): pagers on
detail pages, the newest asset events and leases, and a task event whose type is the
stream's own closing word."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from creep.storage import open_store
from tests.api.conftest import Server
from tests.ui.conftest import create_task, sign_in

pytestmark = pytest.mark.timeout(180)


def _rows(page: Any, scope: str = "") -> list[str]:
    return [r.inner_text() for r in page.query_selector_all(f"{scope} table.grid tbody tr")]


def _claim(c: httpx.Client, task_type: str, max_tasks: int = 1) -> list[dict[str, Any]]:
    r = c.post("/v1/workers/claim", json={"task_types": [task_type], "worker_id": "ui-edges",
                                          "max_tasks": max_tasks})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


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


def test_batch_detail_lists_only_its_tenants_tasks(ui_server: Server, page: Any) -> None:
    """An admin's batch page lists the batch's tasks, not another tenant's task that names
    the same batch_id (a free field of a task): the counts and the cancel leave it out too."""
    _, key_a = ui_server.tenant()
    _, key_b = ui_server.tenant()
    with ui_server.client(key_a) as c:
        r = c.post("/v1/batches", json={"title": "mine", "tasks": [
            {"task_type": "OWN_TASK"}]})
        assert r.status_code == 201, r.text
        batch_id = r.json()["batch_id"]
    with ui_server.client(key_b) as c:
        create_task(c, task_type="INTRUDER", batch_id=batch_id)
    sign_in(page, ui_server, ui_server.admin_key, f"batches/{batch_id}")
    expect(page.locator("table.grid tbody tr")).to_have_count(1)
    expect(page.locator("table.grid tbody tr")).to_contain_text("OWN_TASK")
    assert "INTRUDER" not in page.inner_text("main")


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


# -- the newest asset events and leases --------------------------------------------------------


def test_asset_page_shows_the_newest_events(ui_server: Server, page: Any) -> None:
    """An asset's page lists its events newest first, so the ban that made it BANNED is on
    the first page even after more than 100 earlier events, and "Next page" goes back to the
    older ones (the page used to show only the oldest 100)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.many.1"})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
        for i in range(101):
            r = c.post("/v1/events", json={"asset_id": asset_id, "event_type": "probe.ok",
                                           "severity": "INFO", "message": f"probe {i}"})
            assert r.status_code == 201, r.text
        r = c.post(f"/v1/assets/{asset_id}/ban", json={"reason": "the final ban"})
        assert r.status_code == 200, r.text
    sign_in(page, ui_server, key, f"assets/{asset_id}")
    page.wait_for_selector("h1 .badge:text('BANNED')")
    events = page.locator("section:has(h2:text('Events'))")
    expect(events.locator("table.grid tbody tr").first).to_contain_text("the final ban")
    expect(events.locator("table.grid tbody tr").nth(1)).to_contain_text("probe 100")
    # Paging back through the older events (50 a page): the asset's first is on the last.
    events.locator("button.next").click()
    page.wait_for_url(re.compile(r"events_cursor="))
    assert f"#/assets/{asset_id}?" in page.url, page.url
    expect(events.locator("table.grid tbody tr").first).to_contain_text("probe 51")
    events.locator("button.next").click()
    expect(events.locator("table.grid tbody tr")).to_have_count(3)
    expect(events.locator("table.grid tbody tr").last).to_contain_text("IMPORTED")
    expect(events.locator("button.next")).to_have_count(0)


def test_leases_page_and_asset_page_show_the_newest_leases(ui_server: Server,
                                                           page: Any) -> None:
    """The Leases page and an asset's page list leases newest first, in pages: the newest
    lease shows at the top even with more than 200 older ones (the pages used to show only
    the oldest 200, or 100 on the asset page)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/assets", json={"sku_category": "POOL", "sku_code": "pool.1",
                                       "max_concurrency": 1000})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
        hinted = {"task_type": "LEASED", "resource_hints": [{"sku_category": "POOL"}]}
        r = c.post("/v1/batches", json={"title": "old", "tasks": [hinted] * 200})
        assert r.status_code == 201, r.text
        assert len(_claim(c, "LEASED", max_tasks=1000)) == 200
        newest = create_task(c, **hinted)["task_id"]
        [claimed] = _claim(c, "LEASED")
        assert claimed["task"]["task_id"] == newest
    sign_in(page, ui_server, key, "leases")
    expect(page.locator("table.grid tbody tr")).to_have_count(50)
    expect(page.locator("table.grid tbody tr").first).to_contain_text(newest)
    page.click("button.next")
    page.wait_for_url(re.compile(r"#/leases\?cursor="))
    expect(page.locator("table.grid tbody tr")).to_have_count(50)
    assert newest not in page.inner_text("table.grid")

    page.goto(f"{ui_server.url}/ui/#/assets/{asset_id}")
    leases = page.locator("section:has(h2:text('Leases'))")
    expect(leases.locator("table.grid tbody tr").first).to_contain_text(newest)


# -- a task event named `end` ------------------------------------------------------------------


def test_a_task_event_named_end_is_shown_in_the_timeline(ui_server: Server,
                                                         page: Any) -> None:
    """The stream's close is the `end` event without an `id:` line; a task event of type
    `end` (a worker could post one before the name was reserved) carries an id, so the
    timeline shows it and keeps following the task until it really ends (the dashboard used
    to take it for the close and drop it)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        tid = create_task(c, task_type="ENDER")["task_id"]
        sign_in(page, ui_server, key, f"tasks/{tid}")
        page.wait_for_selector("#events-state:text('Live')")
        [claimed] = _claim(c, "ENDER")
        token = claimed["claim_token"]
        page.wait_for_selector("h1 .badge:text('RUNNING')")
        # An `end` event written before the name was reserved: straight into the database.
        store = open_store(ui_server.database_url)
        try:
            assert store.task_event_append(tid, token, "end", {"line": "end of part one"},
                                           datetime.now(UTC)) is not None
        finally:
            store.close()
        r = c.post(f"/v1/tasks/{tid}/events", json={
            "claim_token": token, "event_type": "log.line", "payload": {"line": "part two"}})
        assert r.status_code == 201, r.text
        page.wait_for_selector("#events .event:has-text('part two')")
        assert page.inner_text("#events-state") == "Live"
        r = c.post(f"/v1/tasks/{tid}/complete", json={"claim_token": token, "result": {}})
        assert r.status_code == 200, r.text
        page.wait_for_selector("#events-state:text('The task finished; no more events.')")
        listed = [e["event_type"] for e in c.get(f"/v1/tasks/{tid}/events").json()["items"]]
        assert listed.count("end") == 1 and listed[-1] == "succeeded", listed
        shown = page.locator("#events .event strong").all_inner_texts()
        assert shown == listed, (shown, listed)
        assert "end of part one" in page.inner_text("#events")


# -- the overview's recent failures ------------------------------------------------------------


def test_overview_lists_recent_failures_latest_to_fail_first(ui_server: Server,
                                                              page: Any) -> None:
    """"Recent failures" are listed latest to fail first (README), and their "When" column
    is the finish time: the page sorted by updated_at, which a later change (a PATCH of tags,
    say) moves, so a failure retagged afterwards was listed above later failures."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        first, second = (create_task(c, task_type="FLAKY")["task_id"] for _ in range(2))
        tokens = {t["task"]["task_id"]: t["claim_token"] for t in _claim(c, "FLAKY", 2)}
        for task_id in (first, second):  # the first task fails first
            r = c.post(f"/v1/tasks/{task_id}/fail", json={
                "claim_token": tokens[task_id], "kind": "failed", "message": "503"})
            assert r.status_code == 200, r.text
        done = {t: c.get(f"/v1/tasks/{t}").json() for t in (first, second)}
        assert done[first]["finished_at"] < done[second]["finished_at"]
        r = c.patch(f"/v1/tasks/{first}", json={"tags": ["looked-at"]},
                    headers={"If-Match": f'"{done[first]["task_version"]}"'})
        assert r.status_code == 200, r.text
        assert r.json()["updated_at"] > done[second]["updated_at"]

    sign_in(page, ui_server, key)
    expect(page.locator("table.grid tbody tr")).to_have_count(2)
    rows = _rows(page)
    assert second in rows[0] and first in rows[1], rows
