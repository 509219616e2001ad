"""The dashboard in a real Chromium against a real `creep server` (SQLite; one PostgreSQL run):
sign in, overview counts, task filters, live events, Cancel / Retry, Ban, schedule Trigger /
Disable, tenant scoping, a bad key, and user strings shown as text (no XSS)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.api.conftest import Server, start_server, stop_server
from tests.ui.conftest import create_task, require_chromium, screenshot_dir, sign_in

pytestmark = pytest.mark.timeout(180)


def _claim(c: httpx.Client, task_type: str) -> dict[str, Any]:
    r = c.post("/v1/workers/claim", json={"task_types": [task_type], "worker_id": "ui-test"})
    assert r.status_code == 200, r.text
    (item,) = r.json()["items"]
    data: dict[str, Any] = item
    return data


def _rows(page: Any) -> list[str]:
    return [r.inner_text() for r in page.query_selector_all("table.grid tbody tr")]


def test_overview_counts_and_task_filters(ui_server: Server, page: Any) -> None:
    tenant, key = ui_server.tenant()
    with ui_server.client(key) as c:
        for i in range(3):
            create_task(c, task_type="EMAIL", tags=["red"] if i == 0 else ["blue"])
        create_task(c, task_type="SMS", tags=["red"])
        cancelled = create_task(c, task_type="SMS")
        assert c.post(f"/v1/tasks/{cancelled['task_id']}/cancel").status_code == 200

    sign_in(page, ui_server, key)
    assert f"tenant {tenant}" in page.inner_text("#who")
    expect(page.locator("#count-total .n")).to_have_text("5")
    assert page.inner_text("#count-QUEUED .n") == "4"
    assert page.inner_text("#count-CANCELLED .n") == "1"
    assert page.inner_text("#queue-depth .n") == "4"
    assert page.inner_text("#count-FAILED .n") == "0"
    expect(page.locator("main")).to_contain_text("No failed tasks.")

    # A count links to the task list filtered by that status.
    page.click("#count-CANCELLED")
    page.wait_for_url(re.compile(r"#/tasks\?status=CANCELLED$"))
    # (Retrying assertions: the table read may still be the page the click left.)
    expect(page.locator("table.grid tbody tr")).to_have_count(1)
    expect(page.locator("table.grid tbody tr").first).to_contain_text(cancelled["task_id"])

    # Filter by type and tag through the form.
    page.select_option("select[name=status]", "")
    page.fill("input[name=task_type]", "EMAIL")
    page.fill("input[name=tag]", "red")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"task_type=EMAIL"))
    # The CANCELLED list had one row too: wait for this list's row, not just for one row.
    row = page.locator("table.grid tbody tr")
    expect(row.first).to_contain_text("EMAIL")
    expect(row).to_have_count(1)
    expect(row.first).to_contain_text("red")

    page.fill("input[name=task_type]", "NO_SUCH_TYPE")
    page.click("form.filters button[type=submit]")
    page.wait_for_selector("text=No tasks match.")


def test_task_list_pages_with_the_cursor(ui_server: Server, page: Any) -> None:
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        ids = [create_task(c, task_type="PAGED")["task_id"] for _ in range(53)]
    sign_in(page, ui_server, key, "tasks?task_type=PAGED")
    expect(page.locator("table.grid tbody tr")).to_have_count(50)
    page.click("button.next")
    page.wait_for_url(re.compile(r"cursor="))
    expect(page.locator("table.grid tbody tr")).to_have_count(3)
    shown = " ".join(_rows(page))
    assert all(i in shown for i in ids[:3])  # newest first: the oldest three come last


def test_task_detail_follows_events_live_and_cancel_button(ui_server: Server,
                                                           page: Any) -> None:
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        task = create_task(c, task_type="LIVE", tags=["watch"])
        tid = task["task_id"]
        sign_in(page, ui_server, key, f"tasks/{tid}")
        page.wait_for_selector("h1 .badge:text('QUEUED')")
        page.wait_for_selector("#events-state:text('Live')")

        claimed = _claim(c, "LIVE")
        token = claimed["claim_token"]
        page.wait_for_selector("h1 .badge:text('RUNNING')")
        r = c.post(f"/v1/tasks/{tid}/progress",
                   json={"claim_token": token, "progress": 40, "message": "frame 4 of 10"})
        assert r.status_code == 200, r.text
        r = c.post(f"/v1/tasks/{tid}/events", json={
            "claim_token": token, "event_type": "log.line", "payload": {"line": "frame 4"}})
        assert r.status_code == 201, r.text
        # The SSE stream brings the event into the timeline without a reload.
        page.wait_for_selector("#events .event:has-text('log.line')")
        assert "frame 4" in page.inner_text("#events")
        page.wait_for_selector("text=frame 4 of 10")

        # Cancel a RUNNING task: it is asked to stop.
        page.click("button:text('Cancel')")
        page.wait_for_selector("text=cancel requested")
        assert c.get(f"/v1/tasks/{tid}").json()["cancel_requested"] is True

        # A QUEUED one ends CANCELLED at once; Retry queues it again.
        other = create_task(c, task_type="LIVE2")["task_id"]
        page.goto(f"{ui_server.url}/ui/#/tasks/{other}")
        page.wait_for_selector("h1 .badge:text('QUEUED')")
        page.click("button:text('Cancel')")
        page.wait_for_selector("h1 .badge:text('CANCELLED')")
        assert c.get(f"/v1/tasks/{other}").json()["status"] == "CANCELLED"
        page.wait_for_selector("#events .event:has-text('CANCELLED')")
        page.click("button:text('Retry')")
        page.wait_for_selector("h1 .badge:text('QUEUED')")
        assert c.get(f"/v1/tasks/{other}").json()["status"] == "QUEUED"


def test_ban_and_unban_an_asset_with_the_buttons(ui_server: Server, page: Any) -> None:
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.uk.1"})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
        sign_in(page, ui_server, key, "assets")
        page.wait_for_selector(f"a:has-text('{asset_id}')")
        page.click(f"a:has-text('{asset_id}')")
        page.wait_for_selector("h1 .badge:text('READY')")
        page.click("button:text('Ban')")
        page.wait_for_selector("h1 .badge:text('BANNED')")
        assert c.get(f"/v1/assets/{asset_id}").json()["status"] == "BANNED"
        page.wait_for_selector("text=banned from the dashboard")  # the asset event's message
        page.click("button:text('Unban')")
        page.wait_for_selector("h1 .badge:text('READY')")
        assert c.get(f"/v1/assets/{asset_id}").json()["status"] == "READY"
        page.goto(f"{ui_server.url}/ui/#/assets?status=BANNED")
        page.wait_for_selector("text=No assets match.")


def test_trigger_and_disable_a_schedule(ui_server: Server, page: Any) -> None:
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        r = c.post("/v1/schedules", json={"name": "nightly-report", "type": "REPORT",
                                          "cron_expr": "30 2 * * *"})
        assert r.status_code == 201, r.text
        uid = r.json()["uid"]
        sign_in(page, ui_server, key, "schedules")
        page.click("a:text('nightly-report')")
        page.wait_for_selector("text=No executions yet.")
        page.click("button:text('Trigger now')")
        page.wait_for_selector("table.grid td:text('manual')")
        executions = c.get(f"/v1/schedules/{uid}/executions").json()["items"]
        assert [e["trigger_type"] for e in executions] == ["manual"]
        assert executions[0]["task_id"]

        page.click("button:text('Disable')")
        page.wait_for_selector("h1 .badge:text('disabled')")
        assert c.get(f"/v1/schedules/{uid}").json()["enabled"] is False
        page.click("button:text('Enable')")
        page.wait_for_selector("h1 .badge:text('enabled')")
        assert c.get(f"/v1/schedules/{uid}").json()["enabled"] is True


def test_a_tenant_key_sees_only_its_tenant(ui_server: Server, page: Any) -> None:
    tenant_a, key_a = ui_server.tenant()
    tenant_b, key_b = ui_server.tenant()
    with ui_server.client(key_a) as c:
        mine = create_task(c, task_type="TENANT_A_JOB")["task_id"]
    with ui_server.client(key_b) as c:
        theirs = create_task(c, task_type="TENANT_B_JOB")["task_id"]

    sign_in(page, ui_server, key_a, "tasks")
    page.wait_for_selector(f"a:has-text('{mine}')")
    shown = page.inner_text("main")
    assert "TENANT_A_JOB" in shown and "TENANT_B_JOB" not in shown
    assert "Audit" not in page.inner_text("#nav")  # admin only
    # Another tenant's task reads as missing, and its filter as empty.
    page.goto(f"{ui_server.url}/ui/#/tasks/{theirs}")
    page.wait_for_selector(".problem:has-text('Not found')")
    page.goto(f"{ui_server.url}/ui/#/tasks?task_type=TENANT_B_JOB")
    page.wait_for_selector("text=No tasks match.")

    # An admin sees both tenants, and the audit log.
    page.click("#sign-out")
    sign_in(page, ui_server, ui_server.admin_key, f"tasks?tenant_id={tenant_b}")
    page.wait_for_selector(f"a:has-text('{theirs}')")
    assert "admin (all tenants)" in page.inner_text("#who")
    page.click("#nav a:text('Audit')")
    page.fill("input[name=resource_id]", theirs)
    page.select_option("select[name=resource_type]", "task")  # the API's enum, as choices
    page.click("form.filters button[type=submit]")
    page.wait_for_selector("table.grid td:text('created')")
    assert f"task {theirs}" in page.inner_text("table.grid")
    assert tenant_a not in page.inner_text("table.grid")


def test_bad_key_shows_the_problem_and_sign_out_forgets_the_key(ui_server: Server,
                                                                page: Any) -> None:
    page.goto(f"{ui_server.url}/")  # / redirects to the dashboard
    page.wait_for_url(re.compile(r"/ui/"))
    page.fill("#api-key", "not-a-real-key")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-in-message .problem")
    message = page.inner_text("#sign-in-message")
    assert "Unauthorized" in message and "unknown or revoked API key" in message
    assert page.evaluate("sessionStorage.getItem('creep.apiKey')") is None

    _, key = ui_server.tenant()
    sign_in(page, ui_server, key)
    assert page.evaluate("sessionStorage.getItem('creep.apiKey')") == key
    page.click("#sign-out")
    page.wait_for_selector("#api-key")
    assert page.evaluate("sessionStorage.getItem('creep.apiKey')") is None
    page.reload()
    page.wait_for_selector("#api-key")  # still signed out


def test_user_strings_are_shown_as_text_never_run(ui_server: Server, page: Any) -> None:
    payload = '<img src=x onerror="window.__xss=1">'
    script = "<script>window.__xss=2</script>"
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        tid = create_task(c, task_type="XSS", tags=[payload], description=script,
                    input_payload={"html": payload + script})["task_id"]
    sign_in(page, ui_server, key, "tasks?task_type=XSS")
    page.wait_for_selector(f"table.grid .tag:text-is('{payload}')")
    page.click(f"a:has-text('{tid}')")
    page.wait_for_selector(f"dd:text-is('{script}')")
    assert '<img src=x onerror=\\"window.__xss=1\\">' + script in page.inner_text("pre.json")
    assert page.query_selector("main img") is None and page.query_selector("main script") is None
    assert page.evaluate("window.__xss") is None
    # A tag filter carrying markup is text in the form and the URL.
    page.goto(f"{ui_server.url}/ui/#/tasks?tag={payload}")
    page.wait_for_selector(f"table.grid .tag:text-is('{payload}')")
    assert page.input_value("input[name=tag]") == payload
    assert page.evaluate("window.__xss") is None


def test_ledger_and_leases_pages_show_entries(ui_server: Server, page: Any) -> None:
    _, key = ui_server.tenant()
    with ui_server.client(key) as c:
        tid = create_task(c, task_type="BILLED", currency="EUR")["task_id"]
        r = c.post("/v1/ledger", json={"entry_type": "REVENUE", "amount": "2.50",
                                       "currency": "EUR", "task_id": tid,
                                       "description": "invoice 7"})
        assert r.status_code == 201, r.text
    sign_in(page, ui_server, key, "ledger")
    page.wait_for_selector("table.grid td:text('invoice 7')")
    page.wait_for_selector("#ledger-summary td:text('EUR')")
    assert "2.50" in page.inner_text("#ledger-summary")
    page.click("#nav a:text('Leases')")
    page.wait_for_selector("text=No leases match.")
    page.goto(f"{ui_server.url}/ui/#/tasks/{tid}")
    page.wait_for_selector("section:has(h2:text('Ledger entries')) td:text('invoice 7')")


def test_overview_on_postgres_and_a_screenshot(
    pg_schema_url: str, tmp_path: Path, page: Any
) -> None:
    require_chromium()
    server = start_server(pg_schema_url, tmp_path / "server.log")
    try:
        with server.admin() as c:
            tenant = f"t-{uuid.uuid4().hex[:8]}"
            assert c.post("/v1/tenants", json={"tenant_id": tenant}).status_code == 201
            for i in range(4):
                create_task(c, tenant_id=tenant, task_type=f"JOB_{i % 2}", tags=["nightly"],
                      description=f"render scene {i}")
            failed = create_task(c, tenant_id=tenant, task_type="FLAKY")["task_id"]
            token = _claim(c, "FLAKY")["claim_token"]
            r = c.post(f"/v1/tasks/{failed}/fail", json={
                "claim_token": token, "kind": "failed", "message": "upstream said 503"})
            assert r.status_code == 200, r.text
        sign_in(page, server, server.admin_key)
        expect(page.locator("#count-total .n")).to_have_text("5")
        assert page.inner_text("#queue-depth .n") == "4"
        page.wait_for_selector(f"table.grid a:has-text('{failed}')")
        shots = screenshot_dir()
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "overview.png"), full_page=True)
        page.click("#nav a:text('Tasks')")
        expect(page.locator("table.grid tbody tr")).to_have_count(5)
        page.screenshot(path=str(shots / "tasks.png"), full_page=True)
        page.click("#nav a:text('Overview')")
        page.click(f"table.grid a:has-text('{failed}')")
        page.wait_for_selector("#events .event")
        page.screenshot(path=str(shots / "task.png"), full_page=True)
        page.click("button:text('Retry')")
        page.wait_for_selector("h1 .badge:text('QUEUED')")
        with server.admin() as c:
            assert c.get(f"/v1/tasks/{failed}").json()["status"] == "QUEUED"
    finally:
        stop_server(server)
