"""Dashboard follow-ups in a real Chromium and a real `creep server` (SQLite): schedule
intervals in readable units, a list whose refresh failed says its data is stale, an action
with a revoked key signs out, a detail page reads its head once when it opens (a task page
too when its events stream delivers the history an event at a time), and the first
load's /v1/whoami renders the page once however often the hash changes meanwhile."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.api.conftest import Server
from tests.ui.conftest import sign_in

pytestmark = pytest.mark.timeout(180)

UNAVAILABLE = {"status": 503, "content_type": "application/problem+json",
               "body": json.dumps({"title": "Service Unavailable",
                                   "detail": "the database is restarting"})}


def test_a_schedules_interval_reads_in_units_that_fit(ui_server: Server, page: Any) -> None:
    """An interval of 86400 s reads "every 1 d" and one of 1800 s "every 30 min" (they read
    "every 86400 s"), in the list and on the schedule's page."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        uids = []
        for name, interval in (("daily", 86400), ("half-hourly", 1800)):
            r = c.post("/v1/schedules", json={"name": name, "type": "POLL", "interval": interval})
            assert r.status_code == 201, r.text
            uids.append(r.json()["uid"])
    sign_in(page, ui_server, key, "schedules")
    expect(page.locator("tr:has(a:text-is('daily')) td").nth(3)).to_have_text("every 1 d")
    expect(page.locator("tr:has(a:text-is('half-hourly')) td").nth(3)).to_have_text(
        "every 30 min")
    page.goto(f"{ui_server.url}/ui/#/schedules/{uids[0]}")
    expect(page.locator("dt:text-is('When') + dd")).to_have_text("every 1 d")


def test_a_list_whose_refresh_failed_says_its_data_is_stale(ui_server: Server,
                                                           page: Any) -> None:
    """A list refresh that fails (503) keeps the rows last read, shows the problem and says
    when the update failed and from when the rows are (it still read "updated <last good
    time>" as if the list were fresh); the next good refresh reads "updated" again."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/tasks", json={"task_type": "STALE_LIST"})
        assert r.status_code == 201, r.text
        tid = r.json()["task_id"]
    page.clock.install()
    sign_in(page, ui_server, key, "tasks")
    row = page.locator("main tbody tr", has_text=tid)
    status = page.locator("main .refresh")
    expect(row).to_have_count(1)
    expect(status).to_contain_text("updated")
    before = status.inner_text().removeprefix("updated ")
    page.route(re.compile(r"/v1/tasks\?"), lambda route: route.fulfill(**UNAVAILABLE))
    page.clock.run_for(3100)
    expect(page.locator("main .list .problem")).to_contain_text("the database is restarting")
    expect(status).to_contain_text("update failed at")
    expect(status).to_contain_text(f"showing data from {before}")
    expect(row).to_have_count(1)
    page.unroute(re.compile(r"/v1/tasks\?"))
    page.clock.run_for(3100)
    expect(status).not_to_contain_text("failed")
    expect(status).to_contain_text("updated")
    expect(page.locator("main .problem")).to_have_count(0)
    expect(row).to_have_count(1)


def test_an_action_with_a_revoked_key_signs_out_at_once(ui_server: Server, page: Any) -> None:
    """Ban clicked after the key was revoked signs out and says why on the sign-in form, as a
    refresh does (it showed "Unauthorized" beside the buttons of a page it could no longer
    read, until the next refresh 5 s later signed out)."""
    tenant_id, _ = ui_server.tenant()
    made = ui_server.key(tenant_id)
    with ui_server.client(made["key"]) as c:
        r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.revoked.1"})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
    page.clock.install()
    sign_in(page, ui_server, made["key"], f"assets/{asset_id}")
    expect(page.locator("h1 .badge")).to_have_text("READY")
    page.clock.pause_at(time.time() + 1)  # no timed refresh: only the click meets the 401
    with ui_server.admin() as admin:
        assert admin.delete(f"/v1/keys/{made['key_id']}").status_code == 200
    page.click("button:text('Ban')")
    expect(page.locator("#sign-in-message .problem")).to_contain_text(
        "unknown or revoked API key")
    expect(page.locator("#sign-out")).to_have_count(0)
    expect(page.locator("#api-key")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('creep.apiKey')") is None


def test_a_detail_page_reads_its_head_once_when_it_opens(ui_server: Server,
                                                         page: Any) -> None:
    """Opening a task, asset, batch or schedule page reads it once (each read it twice: the
    page read it, then its refresh loop read it again at once; a task page read it once more
    per status event of the history its events stream replays)."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/batches", json={"title": "once", "tasks": [{"task_type": "ONCE"}]})
        assert r.status_code == 201, r.text
        batch_id = r.json()["batch_id"]
        task_id = c.get("/v1/tasks", params={"batch_id": batch_id}).json()["items"][0]["task_id"]
        r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.once.1"})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
        r = c.post("/v1/schedules", json={"name": "once", "type": "ONCE", "interval": 60})
        assert r.status_code == 201, r.text
        uid = r.json()["uid"]
    page.clock.install()
    sign_in(page, ui_server, key)
    page.clock.pause_at(time.time() + 1)  # no timed refresh: only the opening reads count
    seen: list[str] = []
    page.on("request", lambda req: seen.append(req.url))
    for path, title in ((f"tasks/{task_id}", task_id), (f"assets/{asset_id}", asset_id),
                        (f"batches/{batch_id}", batch_id), (f"schedules/{uid}", "once")):
        seen.clear()
        page.evaluate(f"location.hash = '#/{path}'")
        expect(page.locator("main h1")).to_contain_text(title)
        if path.startswith("tasks/"):  # its events (replayed when the stream opens) are in
            expect(page.locator("#events li")).to_have_count(2)
        # A request the page sends once the head is drawn: any read sent before it has
        # been seen by then.
        with page.expect_request("**/ui/?marker=*"):
            page.evaluate("fetch('/ui/?marker=1')")
        reads = [u for u in seen if u.split("?")[0].endswith(f"/v1/{path}")]
        assert len(reads) == 1, (path, reads)


# The page's fetch of a task's events stream, its body handed on one event per chunk: as a
# network may deliver the events the server writes one by one.
EVENT_PER_CHUNK = """
(() => {
  const real = window.fetch;
  window.fetch = async (input, init) => {
    const response = await real(input, init);
    if (!String(input.url || input).includes("/events/stream") || !response.body) return response;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    const pieces = [];
    let buffer = "";
    const body = new ReadableStream({
      async pull(controller) {
        while (!pieces.length) {
          const { value, done } = await reader.read();
          if (done) { controller.close(); return; }
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\\n\\n")) >= 0) {
            pieces.push(buffer.slice(0, end + 2));
            buffer = buffer.slice(end + 2);
          }
        }
        controller.enqueue(encoder.encode(pieces.shift()));
      },
      cancel: (reason) => reader.cancel(reason),
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
})();
"""


def test_a_task_page_reads_its_head_once_when_its_history_arrives_an_event_at_a_time(
        ui_server: Server, page: Any) -> None:
    """The events stream replays a QUEUED task's history (created -> PENDING, queued ->
    QUEUED) when the page opens; delivered an event at a time, the first piece ended on
    PENDING, not the QUEUED drawn, and the page read the task again (about one opening in
    15 on a busy machine). An event the drawn task already shows reads nothing."""
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/tasks", json={"task_type": "ONCE_PER_EVENT"})
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
    page.add_init_script(EVENT_PER_CHUNK)
    page.clock.install()
    sign_in(page, ui_server, key)
    page.clock.pause_at(time.time() + 1)  # no timed refresh: only the opening reads count
    seen: list[str] = []
    page.on("request", lambda req: seen.append(req.url))
    page.evaluate(f"location.hash = '#/tasks/{task_id}'")
    expect(page.locator("main h1")).to_contain_text(task_id)
    expect(page.locator("#events li")).to_have_count(2)
    with page.expect_request("**/ui/?marker=*"):
        page.evaluate("fetch('/ui/?marker=1')")
    assert any("/events/stream" in u for u in seen), seen  # the stream was read through it
    reads = [u for u in seen if u.split("?")[0].endswith(f"/v1/tasks/{task_id}")]
    assert len(reads) == 1, reads
    # A change after the page drew the task comes by the stream (no timed refresh runs) and
    # reads it once more.
    with ui_server.client(key) as c:
        assert c.post(f"/v1/tasks/{task_id}/cancel", json={}).status_code == 200
    expect(page.locator("h1 .badge")).to_have_text("CANCELLED")
    expect(page.locator("#events li")).to_have_count(3)
    with page.expect_request("**/ui/?marker=*"):
        page.evaluate("fetch('/ui/?marker=2')")
    reads = [u for u in seen if u.split("?")[0].endswith(f"/v1/tasks/{task_id}")]
    assert len(reads) == 2, reads


def test_page_changes_during_the_first_whoami_render_the_page_once(ui_server: Server,
                                                                   page: Any) -> None:
    """Two hash changes while the dashboard's first /v1/whoami (after a reload) is pending
    ask for it once and draw only the last page, once (each change asked again, and every
    answer drew the page: the assets list was read three times)."""
    _, key = ui_server.tenant()
    page.clock.install()
    sign_in(page, ui_server, key)
    held: list[Any] = []
    released = False

    def hold(route: Any) -> None:
        if released:
            route.continue_()
        else:
            held.append(route)

    seen: list[str] = []
    page.on("request", lambda req: seen.append(req.url))
    page.route("**/v1/whoami", hold)
    with page.expect_request("**/v1/whoami"):
        page.reload()
    page.clock.pause_at(time.time() + 1)  # no timed refresh: only the opening reads count
    page.evaluate("location.hash = '#/tasks'")
    page.evaluate("location.hash = '#/assets'")
    released = True
    for route in held:
        route.continue_()
    expect(page.locator("main h1")).to_have_text("Assets")
    expect(page.locator("main .refresh")).to_contain_text("updated")
    with page.expect_request("**/ui/?marker=*"):
        page.evaluate("fetch('/ui/?marker=1')")
    asked = [u for u in seen if "/v1/whoami" in u]
    assert len(asked) == 1, asked
    reads = [u for u in seen if "/v1/assets?" in u]
    assert len(reads) == 1, reads
