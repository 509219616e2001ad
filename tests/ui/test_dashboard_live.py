"""The dashboard's live refresh against failures in a real Chromium and a real `creep server`
(SQLite): a page that met an API problem (a 5xx, the API unreachable) shows it and recovers
by itself once the API answers again, and a failed action's problem stays readable."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from tests.api.conftest import Server
from tests.ui.conftest import create_task, sign_in

pytestmark = pytest.mark.timeout(180)

UNAVAILABLE = {"status": 503, "content_type": "application/problem+json",
               "body": json.dumps({"title": "Service Unavailable",
                                   "detail": "the database is restarting"})}


def _fail(route: Any) -> None:
    route.fulfill(**UNAVAILABLE)


def test_task_page_recovers_after_a_failed_refresh(ui_server: Server, page: Any) -> None:
    """A refresh of the task that fails (5xx) shows the problem; the next one that succeeds
    shows the task again (it kept the problem: the task had not changed since it was last
    drawn, so it was not redrawn)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        tid = create_task(c, task_type="FLAKY_API")["task_id"]
    page.clock.install()
    sign_in(page, ui_server, key, f"tasks/{tid}")
    expect(page.locator("h1 .badge")).to_have_text("QUEUED")
    page.route(f"**/v1/tasks/{tid}", _fail)
    page.clock.run_for(3100)
    expect(page.locator("main .problem").first).to_contain_text("the database is restarting")
    page.unroute(f"**/v1/tasks/{tid}")
    page.clock.run_for(3100)
    expect(page.locator("h1 .badge")).to_have_text("QUEUED")
    expect(page.locator("main .problem")).to_have_count(0)


def test_a_page_that_failed_to_open_opens_once_the_api_answers(ui_server: Server,
                                                               page: Any) -> None:
    """A detail page whose first read fails (5xx), and the dashboard reloaded while
    /v1/whoami fails, show the problem and open by themselves once the API answers (they
    stayed on the problem until the user reloaded)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.flaky.1"})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
    page.clock.install()
    sign_in(page, ui_server, key)
    page.route(f"**/v1/assets/{asset_id}", _fail)
    page.goto(f"{ui_server.url}/ui/#/assets/{asset_id}")
    expect(page.locator("main .problem").first).to_contain_text("the database is restarting")
    page.unroute(f"**/v1/assets/{asset_id}")
    page.clock.run_for(3100)
    expect(page.locator("main h1")).to_contain_text(asset_id)
    expect(page.locator("main .problem")).to_have_count(0)

    page.route("**/v1/whoami", _fail)
    page.reload()
    expect(page.locator("main .problem")).to_contain_text("the database is restarting")
    page.unroute("**/v1/whoami")
    page.clock.run_for(3100)
    expect(page.locator("main h1")).to_contain_text(asset_id)
    expect(page.locator("#sign-out")).to_be_visible()


def test_a_failed_actions_problem_outlives_the_next_refresh(ui_server: Server,
                                                            page: Any) -> None:
    """Disable on a schedule changed since the page drew it answers 412; the problem stays on
    the page after the next refresh (which redrew the page without it within 5 s)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/schedules", json={"name": "stale-page", "type": "REPORT",
                                          "cron_expr": "30 2 * * *"})
        assert r.status_code == 201, r.text
        uid = r.json()["uid"]
        page.clock.install()
        sign_in(page, ui_server, key, f"schedules/{uid}")
        expect(page.locator("h1 .badge")).to_have_text("enabled")
        r = c.patch(f"/v1/schedules/{uid}", json={"description": "changed elsewhere"},
                    headers={"If-Match": c.get(f"/v1/schedules/{uid}").headers["ETag"]})
        assert r.status_code == 200, r.text
    page.click("button:text('Disable')")
    problem = page.locator("main .problem")
    expect(problem).to_contain_text("is at version 2, not 1")
    with page.expect_response(f"**/v1/schedules/{uid}"):
        page.clock.run_for(5100)
    expect(page.locator("dd:text('changed elsewhere')")).to_be_visible()
    expect(problem).to_contain_text("is at version 2, not 1")
    expect(page.locator("h1 .badge")).to_have_text("enabled")


def test_times_state_their_time_zone(ui_server: Server, browser: Any) -> None:
    """A browser in Tokyo shows a task's times in Tokyo time and says so (they were local
    times with no zone: "11/25/2026, 4:31:02 PM" read as UTC by an operator comparing logs)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        task = create_task(c, task_type="ZONED")
    created = datetime.fromisoformat(task["created_at"]).astimezone(ZoneInfo("Asia/Tokyo"))
    context = browser.new_context(timezone_id="Asia/Tokyo", locale="en-US")
    try:
        page = context.new_page()
        sign_in(page, ui_server, key, f"tasks/{task['task_id']}")
        shown = page.locator("dt:text-is('Created') + dd time")
        expect(shown).to_contain_text("GMT+9")
        expect(shown).to_contain_text(f"{created:%M:%S}")
        expect(shown).to_contain_text(f"{created.day}, {created.year}")
        expect(page.locator(".refresh").first).to_contain_text("GMT+9")
    finally:
        context.close()


def test_a_late_refresh_does_not_undo_an_action(ui_server: Server, page: Any) -> None:
    """A refresh of an asset sent before Ban whose answer arrives after the page drew the
    banned asset is dropped (it drew the asset READY again, with its Ban button, until the
    next refresh 5 s later)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.racy.1"})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
    page.clock.install()
    sign_in(page, ui_server, key, f"assets/{asset_id}")
    expect(page.locator("h1 .badge")).to_have_text("READY")
    page.clock.pause_at(time.time() + 1)  # the page's timers run only when the test says
    held: list[tuple[Any, Any]] = []

    def hold_the_first(route: Any) -> None:
        if held:
            route.fallback()
        else:
            held.append((route, route.fetch()))  # the asset as it is now: READY

    page.route(f"**/v1/assets/{asset_id}", hold_the_first)
    with page.expect_request(f"**/v1/assets/{asset_id}"):
        page.clock.run_for(5100)  # the timer's refresh: held
    page.click("button:text('Ban')")
    expect(page.locator("h1 .badge")).to_have_text("BANNED")
    route, stale = held[0]
    with page.expect_response(f"**/v1/assets/{asset_id}") as answered:
        route.fulfill(response=stale)
    answered.value.finished()
    page.wait_for_timeout(300)  # (real time) for the page to read and draw the answer
    # A stale draw would stay: the page's next refresh waits for the test's clock.
    expect(page.locator("h1 .badge")).to_have_text("BANNED")
    expect(page.locator("button:text('Unban')")).to_have_count(1)


def test_durations_read_in_units_that_fit(ui_server: Server, page: Any) -> None:
    """A task's timeout reads "5 min" and "1 h 30 min", not "300000 ms" (the exact
    milliseconds stay in the tooltip); an asset's cooldown "2 min", not "120 s"."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        short = create_task(c, task_type="TIMED")["task_id"]
        long = create_task(c, task_type="TIMED", timeout_ms=5_400_250)["task_id"]
        r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.cool.1",
                                       "cooldown_seconds": 120})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
    sign_in(page, ui_server, key, f"tasks/{short}")
    timeout = page.locator("dt:text-is('Timeout') + dd")
    expect(timeout).to_have_text("5 min")
    expect(timeout.locator("span")).to_have_attribute("title", "300000 ms")
    page.goto(f"{ui_server.url}/ui/#/tasks/{long}")
    expect(page.locator("main h1")).to_contain_text(long)
    expect(timeout).to_have_text("1 h 30 min")
    page.goto(f"{ui_server.url}/ui/#/assets/{asset_id}")
    expect(page.locator("dt:text-is('Cooldown') + dd")).to_have_text("2 min")


def test_markup_in_assets_events_schedules_ledger_and_batches_is_text(ui_server: Server,
                                                                       page: Any) -> None:
    """The pages not covered by the task pages' check: an asset's attributes, its events'
    messages, a schedule's name and data, a ledger description and a batch's title show
    markup as text and run none of it."""
    img = '<img src=x onerror="window.__xss=1">'
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.xss.1",
                                       "attributes": {img: img}})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
        r = c.post("/v1/events", json={"asset_id": asset_id, "event_type": "probe.ok",
                                       "message": img})
        assert r.status_code == 201, r.text
        r = c.post("/v1/schedules", json={"name": img, "type": "XSS", "cron_expr": "0 1 * * *",
                                          "data": {"k": img}})
        assert r.status_code == 201, r.text
        r = c.post("/v1/ledger", json={"entry_type": "REVENUE", "amount": "1.00",
                                       "currency": "EUR", "description": img})
        assert r.status_code == 201, r.text
        r = c.post("/v1/batches", json={"title": img, "tasks": [{"task_type": "XSS"}]})
        assert r.status_code == 201, r.text
        batch_id = r.json()["batch_id"]

    sign_in(page, ui_server, key, f"assets/{asset_id}")
    expect(page.locator("pre.json")).to_contain_text('"<img src=x onerror=\\"window.__xss=1\\">"')
    expect(page.locator(f"td:text-is('{img}')")).to_have_count(1)  # the event's message
    page.goto(f"{ui_server.url}/ui/#/schedules")
    page.click(f"a:text-is('{img}')")
    expect(page.locator("main h1 code")).to_have_text(img)
    expect(page.locator("pre.json")).to_contain_text("<img src=x")
    page.goto(f"{ui_server.url}/ui/#/ledger")
    expect(page.locator(f"td:text-is('{img}')")).to_have_count(1)
    page.goto(f"{ui_server.url}/ui/#/batches")
    expect(page.locator(f"td:text-is('{img}')")).to_have_count(1)
    page.goto(f"{ui_server.url}/ui/#/batches/{batch_id}")
    expect(page.locator(f"dd:text-is('{img}')")).to_have_count(1)
    assert page.query_selector("main img") is None
    assert page.evaluate("window.__xss") is None
