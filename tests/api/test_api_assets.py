"""/v1/assets, /v1/leases, /v1/events and /v1/ledger over HTTP against a real server (SQLite
and PostgreSQL): imports, status changes, leases taken by a real claim, reported events with
auto-ban and causation chains, the ledger with budgets and summaries, CSV exports, tenant
isolation on every route and one audit row per mutation."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from creep import Creep
from tests.api.conftest import Server


def _audit(server: Server, **params: Any) -> list[dict[str, Any]]:
    with server.admin() as admin:
        r = admin.get("/v1/audit", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


def _fields(r: httpx.Response) -> set[str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return {e["field"] for e in r.json().get("errors") or []}


def _asset(c: httpx.Client, **fields: Any) -> dict[str, Any]:
    r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.uk.1", **fields})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


@pytest.fixture
def py(server: Server) -> Iterator[Creep]:
    """The Python API on the server's database (to claim tasks and set ban policies)."""
    app = Creep(server.database_url)
    yield app
    app.close()


def _claim(py: Creep, task_type: str) -> None:
    claimed = py.store.task_claim("test-worker", [task_type], 10, datetime.now(UTC), 60.0)
    assert claimed, "the task was not claimed"


def test_assets_import_list_and_status_changes(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key) as c:
        one = c.post("/v1/assets", json={
            "sku_category": "RAW_NET", "sku_code": "ip.uk.1", "attributes": {"geo": "uk"},
            "max_concurrency": 2, "cost_per_lease": "0.25", "currency": "EUR"})
        assert one.status_code == 201, one.text
        a = one.json()
        assert a["tenant_id"] == tenant and a["status"] == "READY" and a["version"] == 1
        assert a["cost_per_lease"] == "0.25" and one.headers["ETag"] == '"1"'
        many = c.post("/v1/assets", json=[
            {"sku_category": "RAW_NET", "sku_code": "ip.us.1"},
            {"sku_category": "GPU", "sku_code": "gpu.a100.1", "status": "NEW"}])
        assert many.status_code == 201 and len(many.json()["items"]) == 2
        assert c.get(f"/v1/assets/{a['asset_id']}").json() == a

        def ids(**params: Any) -> list[str]:
            r = c.get("/v1/assets", params=params)
            assert r.status_code == 200, r.text
            return [x["sku_code"] for x in r.json()["items"]]

        assert sorted(ids()) == ["gpu.a100.1", "ip.uk.1", "ip.us.1"]
        assert sorted(ids(sku_category="RAW_NET")) == ["ip.uk.1", "ip.us.1"]
        assert ids(sku_code="ip.uk.*") == ["ip.uk.1"] and ids(status="NEW") == ["gpu.a100.1"]
        seen: list[str] = []
        cursor = None
        while True:  # pages of one
            params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/assets", params=params).json()
            seen += [x["asset_id"] for x in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == 3 == len(set(seen))

        aid = a["asset_id"]
        banned = c.post(f"/v1/assets/{aid}/ban", json={"reason": "abuse report"})
        assert banned.status_code == 200 and banned.json()["status"] == "BANNED"
        assert c.post(f"/v1/assets/{aid}/ban").status_code == 409  # BANNED -> BANNED
        assert c.post(f"/v1/assets/{aid}/unban").json()["status"] == "READY"
        archived = c.post(f"/v1/assets/{aid}/archive")
        assert archived.json()["status"] == "ARCHIVED" and archived.json()["version"] == 4
        assert c.post(f"/v1/assets/{aid}/unban").status_code == 409
        events = c.get(f"/v1/assets/{aid}/events").json()["items"]
        assert [e["event_type"] for e in events] == ["IMPORTED", "BANNED", "UNBANNED", "ARCHIVED"]
        assert events[1]["message"] == "abuse report" or "abuse report" in str(events[1])


def test_asset_validation_names_the_field(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        assert "sku_category" in _fields(c.post("/v1/assets", json={"sku_code": "x"}))
        assert "[1].max_concurrency" in _fields(c.post("/v1/assets", json=[
            {"sku_category": "A", "sku_code": "a"},
            {"sku_category": "A", "sku_code": "b", "max_concurrency": 0}]))
        assert "cost_per_lease" in _fields(c.post("/v1/assets", json={
            "sku_category": "A", "sku_code": "a", "cost_per_lease": "-1"}))
        assert "sku_code" in _fields(c.post("/v1/assets", json={
            "sku_category": "A", "sku_code": "a.*"}))
        assert "asset_id" in _fields(c.post("/v1/assets", json={
            "sku_category": "A", "sku_code": "a", "asset_id": "nope"}))
        assert "status" in _fields(c.post("/v1/assets", json={
            "sku_category": "A", "sku_code": "a", "status": "BANNED"}))
        assert "body" in _fields(c.post("/v1/assets", json=[]))
        taken = _asset(c)["asset_id"]
        other = c.post("/v1/assets", json={"sku_category": "A", "sku_code": "a",
                                           "asset_id": taken})
        assert other.status_code == 409, other.text  # another asset under that id
        assert [e["field"] for e in other.json()["errors"]] == ["asset_id"]
        assert "cursor" in _fields(c.get("/v1/assets", params={"cursor": "zz"}))
        assert c.get("/v1/assets").json()["items"][0]["asset_id"] == taken  # nothing else


def test_leases_from_a_real_claim_and_release(server: Server, py: Creep) -> None:
    tenant, key = server.tenant()
    with server.client(key) as c:
        aid = _asset(c, cost_per_lease="1.5")["asset_id"]
        kind = f"LEASED-{uuid.uuid4().hex[:8]}"  # claim this test's task only
        task = c.post("/v1/tasks", json={
            "task_type": kind, "resource_hints": [{"sku_category": "RAW_NET"}],
            "constraints": {"keep_leases": True}}).json()
        _claim(py, kind)
        leases = c.get("/v1/leases", params={"task_id": task["task_id"]}).json()["items"]
        assert len(leases) == 1
        lease = leases[0]
        assert lease["asset_id"] == aid and lease["status"] == "ACTIVE"
        assert lease["cost"] == "1.5" and "claim_token" not in lease
        assert c.get("/v1/leases", params={"asset_id": aid, "status": "ACTIVE"}).json()[
            "items"] == [lease]
        assert c.get("/v1/leases", params={"status": "RELEASED"}).json()["items"] == []
        assert c.get(f"/v1/assets/{aid}").json()["current_concurrency"] == 1
        # The lease cost is in the ledger, tied to the task.
        entries = c.get("/v1/ledger", params={"task_id": task["task_id"]}).json()["items"]
        assert [(e["entry_type"], e["amount"]) for e in entries] == [("COST", "1.5")]

        released = c.post(f"/v1/leases/{lease['lease_id']}/release")
        assert released.status_code == 200, released.text
        assert released.json()["status"] == "RELEASED"
        assert c.post(f"/v1/leases/{lease['lease_id']}/release").status_code == 409
        assert c.get(f"/v1/assets/{aid}").json()["current_concurrency"] == 0
        assert c.post(f"/v1/leases/{uuid.uuid4()}/release").status_code == 404
    rows = _audit(server, resource_type="lease", tenant_id=tenant)
    assert [r["action"] for r in rows] == ["released"]
    assert orjson.loads(rows[0]["diff_object"]["old_object"])["status"] == "ACTIVE"
    assert orjson.loads(rows[0]["diff_object"]["new_object"])["status"] == "RELEASED"
    assert "claim_token" not in rows[0]["diff_object"]["old_object"]


def test_reported_events_auto_ban_chain_and_timeline(server: Server, py: Creep) -> None:
    tenant, key = server.tenant()
    py.set_ban_policy("RAW_NET", max_failures=2, window_seconds=600, tenant_id=tenant)
    with server.client(key) as c:
        aid = _asset(c)["asset_id"]
        first = c.post("/v1/events", json={
            "asset_id": aid, "event_type": "HTTP_PROBE_FAIL", "severity": "WARN",
            "http_status": 503, "latency_ms": 1200, "retryable": True,
            "correlation_id": "req-42", "provider_status": "down", "context": {"try": 1}})
        assert first.status_code == 201, first.text
        assert first.json()["caused"] == []
        root = first.json()["event"]
        assert root["http_status"] == 503 and root["tenant_id"] == tenant
        second = c.post("/v1/events", json={
            "asset_id": aid, "event_type": "HTTP_PROBE_FAIL", "correlation_id": "req-42",
            "causation_id": root["event_id"]}).json()
        [banned] = second["caused"]
        assert banned["event_type"] == "ASSET_BANNED"
        assert banned["causation_id"] == second["event"]["event_id"]
        assert c.get(f"/v1/assets/{aid}").json()["status"] == "BANNED"
        chain = c.get(f"/v1/events/{banned['event_id']}/chain").json()["items"]
        assert [e["event_id"] for e in chain] == [
            banned["event_id"], second["event"]["event_id"], root["event_id"]]
        timeline = c.get("/v1/events", params={"correlation_id": "req-42"}).json()
        assert [e["event_id"] for e in timeline["items"]] == [  # the ban carries it too
            root["event_id"], second["event"]["event_id"], banned["event_id"]]
        by_asset = c.get("/v1/events", params={"asset_id": aid}).json()["items"]
        assert [e["event_type"] for e in by_asset] == [
            "IMPORTED", "HTTP_PROBE_FAIL", "HTTP_PROBE_FAIL", "ASSET_BANNED"]
        # Pages of two, then CSV (every row, both ways of asking).
        page = c.get("/v1/events", params={"asset_id": aid, "limit": 2}).json()
        rest = c.get("/v1/events", params={"asset_id": aid, "limit": 2,
                                           "cursor": page["next_cursor"]}).json()
        assert [e["event_id"] for e in page["items"] + rest["items"]] == [
            e["event_id"] for e in by_asset]
        for how in ({"params": {"asset_id": aid, "format": "csv"}},
                    {"params": {"asset_id": aid}, "headers": {"Accept": "text/csv"}}):
            r = c.get("/v1/events", **how)  # type: ignore[arg-type]
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            table = list(csv.DictReader(io.StringIO(r.text)))
            assert [row["event_id"] for row in table] == [e["event_id"] for e in by_asset]
        assert table[1]["http_status"] == "503"
        assert orjson.loads(table[1]["context"]) == {"try": 1}

        # Validation: seed 001's ranges, each problem naming its field.
        assert "http_status" in _fields(c.post("/v1/events", json={
            "asset_id": aid, "event_type": "X", "http_status": 99}))
        assert "latency_ms" in _fields(c.post("/v1/events", json={
            "asset_id": aid, "event_type": "X", "latency_ms": -1}))
        assert "severity" in _fields(c.post("/v1/events", json={
            "asset_id": aid, "event_type": "X", "severity": "LOUD"}))
        assert "causation_id" in _fields(c.post("/v1/events", json={
            "asset_id": aid, "event_type": "X", "causation_id": "nope"}))
        assert "event_type" in _fields(c.post("/v1/events", json={"asset_id": aid}))
        assert c.post("/v1/events", json={"asset_id": str(uuid.uuid4()),
                                          "event_type": "X"}).status_code == 404
        assert "cursor" in _fields(c.get("/v1/events", params={"cursor": "x"}))
    reported = _audit(server, resource_type="assetEvent", tenant_id=tenant)
    assert [r["resource"]["identifier"] for r in reversed(reported)] == [
        root["event_id"], second["event"]["event_id"]]
    assert {r["action"] for r in reported} == {"reported"}


def _pages(c: httpx.Client, path: str, key: str, **params: Any) -> list[str]:
    """`key` of every item of every page (pages of two), following next_cursor."""
    out: list[str] = []
    cursor = None
    while True:
        r = c.get(path, params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        out += [item[key] for item in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return out


def test_events_and_leases_newest_first_in_pages(server: Server, py: Creep) -> None:
    """`order=newest` lists an asset's events (GET /v1/events, its CSV export, GET
    /v1/assets/{id}/events) and leases (GET /v1/leases) newest first, so a client can show
    the latest without reading them all; `next_cursor` pages on in the order asked, and a
    cursor of the other order is a 422 naming `cursor`."""
    _, key = server.tenant()
    with server.client(key) as c:
        aid = _asset(c, max_concurrency=10)["asset_id"]
        for i in range(4):
            assert c.post("/v1/events", json={
                "asset_id": aid, "event_type": "PROBE", "message": f"p{i}"}).status_code == 201
        oldest = [e["event_id"] for e in c.get("/v1/events", params={
            "asset_id": aid}).json()["items"]]
        assert len(oldest) == 5  # IMPORTED and the four probes
        assert _pages(c, "/v1/events", "event_id", asset_id=aid) == oldest
        assert _pages(c, "/v1/events", "event_id", asset_id=aid, order="newest") == oldest[::-1]
        r = c.get("/v1/events", params={"asset_id": aid, "order": "newest", "format": "csv"})
        assert [row["event_id"] for row in csv.DictReader(io.StringIO(r.text))] == oldest[::-1]
        latest = c.get(f"/v1/assets/{aid}/events", params={"order": "newest", "limit": 2})
        assert [e["event_id"] for e in latest.json()["items"]] == oldest[:-3:-1]
        assert [e["event_id"] for e in c.get(f"/v1/assets/{aid}/events").json()[
            "items"]] == oldest
        for first, other in (({}, {"order": "newest"}), ({"order": "newest"}, {})):
            cursor = c.get("/v1/events", params={"asset_id": aid, "limit": 2, **first}).json()[
                "next_cursor"]
            assert "cursor" in _fields(c.get("/v1/events", params={
                "asset_id": aid, "cursor": cursor, **other}))
        assert "order" in _fields(c.get("/v1/events", params={"order": "sideways"}))
        assert "order" in _fields(c.get(f"/v1/assets/{aid}/events", params={"order": "up"}))

        # Three leases of the asset, taken by three claims one after the other.
        kind = f"LEASED-{uuid.uuid4().hex[:8]}"
        tasks = []
        for _ in range(3):
            tasks.append(c.post("/v1/tasks", json={
                "task_type": kind, "resource_hints": [{"sku_category": "RAW_NET"}]}).json()[
                "task_id"])
            _claim(py, kind)
        listed = c.get("/v1/leases", params={"asset_id": aid}).json()
        assert [x["task_id"] for x in listed["items"]] == tasks
        assert listed["next_cursor"] is None
        leases = [x["lease_id"] for x in listed["items"]]
        assert _pages(c, "/v1/leases", "lease_id", asset_id=aid) == leases
        assert _pages(c, "/v1/leases", "lease_id", asset_id=aid, order="newest") == leases[::-1]
        assert _pages(c, "/v1/leases", "lease_id", order="newest") == leases[::-1]  # the tenant's
        newest = c.get("/v1/leases", params={"order": "newest", "limit": 1}).json()
        assert [x["task_id"] for x in newest["items"]] == tasks[-1:]
        assert "cursor" in _fields(c.get("/v1/leases", params={"cursor": newest["next_cursor"]}))
        assert "cursor" in _fields(c.get("/v1/leases", params={"cursor": "x"}))
        assert "order" in _fields(c.get("/v1/leases", params={"order": "sideways"}))


def test_ledger_summary_groups_repeated_amounts_exactly(server: Server) -> None:
    """The grouped summary adds equal amounts up in SQL (SQLite: one row per distinct
    amount, multiplied out exactly), and counts every entry."""
    _, key = server.tenant()
    with server.client(key) as c:
        for project, entry_type, amount in [
            ("p1", "REVENUE", "1.10"), ("p1", "REVENUE", "1.10"), ("p1", "REVENUE", "1.10"),
            ("p1", "REFUND", "0.05"), ("p1", "REFUND", "0.05"), ("p2", "REVENUE", "0.1"),
            ("p2", "ADJUSTMENT", "0.2"), ("p2", "ADJUSTMENT", "0.2"),
        ]:
            r = c.post("/v1/ledger", json={"currency": "EUR", "project_id": project,
                                           "entry_type": entry_type, "amount": amount})
            assert r.status_code == 201, r.text
        s = c.get("/v1/ledger/summary", params={"group_by": "project_id"}).json()["items"]
        assert [(i["project_id"], i["cost"], i["revenue"], i["margin"], i["entries"])
                for i in s] == [("p1", "-0.10", "3.30", "3.40", 5),
                                ("p2", "0.4", "0.1", "-0.3", 3)]


def test_ledger_entries_budget_summary_and_csv(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key) as c:
        task = c.post("/v1/tasks", json={"task_type": "PAID", "project_id": "p1",
                                         "max_total_cost": "5.00", "currency": "EUR"}).json()
        tid = task["task_id"]

        def post(**body: Any) -> httpx.Response:
            return c.post("/v1/ledger", json={"currency": "EUR", **body})

        rev = post(entry_type="REVENUE", amount="10.10", task_id=tid, description="sale")
        assert rev.status_code == 201, rev.text
        assert rev.json()["amount"] == "10.10" and rev.json()["project_id"] == "p1"
        assert post(entry_type="ADJUSTMENT", amount="4.00", task_id=tid).status_code == 201
        over = post(entry_type="ADJUSTMENT", amount="1.01", task_id=tid)
        assert over.status_code == 409 and over.json()["type"].endswith("budget-exceeded")
        assert post(entry_type="REFUND", amount="0.50", task_id=tid).status_code == 201
        assert post(entry_type="ADJUSTMENT", amount="-0.25", project_id="p2").status_code == 201
        assert post(entry_type="REVENUE", amount="3", project_id="p2").status_code == 201
        assert c.post("/v1/ledger", json={"entry_type": "REVENUE", "amount": "1",
                                          "currency": "USD", "project_id": "p3"}
                      ).status_code == 201

        # Validation: COST is creep's own, amounts exact and positive, currency the task's.
        assert "entry_type" in _fields(post(entry_type="COST", amount="1"))
        assert "amount" in _fields(post(entry_type="REVENUE", amount="0"))
        assert "amount" in _fields(post(entry_type="REVENUE", amount="1.0000001"))
        assert "currency" in _fields(c.post("/v1/ledger", json={
            "entry_type": "REVENUE", "amount": "1", "currency": "USD", "task_id": tid}))
        assert "task_id" in _fields(post(entry_type="REVENUE", amount="1",
                                         task_id=str(uuid.uuid4())))
        assert "from" in _fields(c.get("/v1/ledger", params={"from": "2026-01-01T00:00:00"}))
        assert "group_by" in _fields(c.get("/v1/ledger/summary",
                                           params={"group_by": "asset_id"}))

        entries = c.get("/v1/ledger").json()["items"]
        assert [e["amount"] for e in entries] == ["10.10", "4.00", "0.50", "-0.25", "3", "1"]
        assert [e["amount"] for e in c.get("/v1/ledger", params={"task_id": tid}).json()[
            "items"]] == ["10.10", "4.00", "0.50"]
        page = c.get("/v1/ledger", params={"limit": 4}).json()
        rest = c.get("/v1/ledger", params={"limit": 4, "cursor": page["next_cursor"]}).json()
        assert [e["entry_id"] for e in page["items"] + rest["items"]] == [
            e["entry_id"] for e in entries]
        r = c.get("/v1/ledger", params={"format": "csv", "entry_type": "ADJUSTMENT"})
        table = list(csv.DictReader(io.StringIO(r.text)))
        assert [row["amount"] for row in table] == ["4.00", "-0.25"]

        s = c.get("/v1/ledger/summary", params={"group_by": "project_id,currency"}).json()
        assert s["group_by"] == ["project_id", "currency"]
        got = {(i["project_id"], i["currency"]): (i["cost"], i["revenue"], i["margin"])
               for i in s["items"]}
        assert got == {("p1", "EUR"): ("3.50", "10.10", "6.60"),
                       ("p2", "EUR"): ("-0.25", "3", "3.25"),
                       ("p3", "USD"): ("0", "1", "1")}
        total = c.get("/v1/ledger/summary").json()["items"]
        assert [(i["currency"], i["margin"], i["entries"]) for i in total] == [
            ("EUR", "9.85", 5), ("USD", "1", 1)]
        future = c.get("/v1/ledger/summary", params={"from": "2999-01-01T00:00:00Z"}).json()
        assert future["items"] == []
    rows = _audit(server, resource_type="ledgerEntry", tenant_id=tenant)
    assert len(rows) == 6 and {r["action"] for r in rows} == {"created"}  # refused: no row
    new = orjson.loads(rows[-1]["diff_object"]["new_object"])
    assert new["entry_id"] == rev.json()["entry_id"]


def test_tenant_isolation_on_every_asset_route(server: Server, py: Creep) -> None:
    tenant_a, key_a = server.tenant()
    _, key_b = server.tenant()
    with server.client(key_a) as a, server.client(key_b) as b:
        aid = _asset(a, sku_code="secret.1")["asset_id"]
        kind = f"ISO-{uuid.uuid4().hex[:8]}"
        task = a.post("/v1/tasks", json={
            "task_type": kind, "resource_hints": [{"sku_category": "RAW_NET"}],
            "constraints": {"keep_leases": True}, "project_id": "secret-project"}).json()
        _claim(py, kind)
        [lease] = a.get("/v1/leases", params={"task_id": task["task_id"]}).json()["items"]
        event = a.post("/v1/events", json={"asset_id": aid, "event_type": "PROBE_OK",
                                           "correlation_id": "secret-corr"}).json()["event"]
        a.post("/v1/ledger", json={"entry_type": "REVENUE", "amount": "7", "currency": "USD",
                                   "project_id": "secret-project"})
        missing = str(uuid.uuid4())
        probes = [
            ("GET", "/v1/assets/{}"), ("POST", "/v1/assets/{}/ban"),
            ("POST", "/v1/assets/{}/unban"), ("POST", "/v1/assets/{}/archive"),
            ("GET", "/v1/assets/{}/events"),
        ]
        for method, template in probes:
            foreign = b.request(method, template.format(aid))
            absent = b.request(method, template.format(missing))
            assert foreign.status_code == absent.status_code == 404, (template, foreign.text)
            assert foreign.json()["detail"].replace(aid, "ID") == absent.json()[
                "detail"].replace(missing, "ID")
        for method, path, other in (
            ("POST", f"/v1/leases/{lease['lease_id']}/release", f"/v1/leases/{missing}/release"),
            ("GET", f"/v1/events/{event['event_id']}/chain", f"/v1/events/{missing}/chain"),
        ):
            foreign, absent = b.request(method, path), b.request(method, other)
            assert foreign.status_code == absent.status_code == 404, (path, foreign.text)
            assert foreign.json()["type"] == absent.json()["type"]
        # Lists, filters and exports: nothing of A's, whatever B asks for.
        lists = [
            ("/v1/assets", {}), ("/v1/assets", {"tenant_id": tenant_a}),
            ("/v1/assets", {"sku_code": "secret.*"}), ("/v1/leases", {}),
            ("/v1/leases", {"asset_id": aid}), ("/v1/leases", {"task_id": task["task_id"]}),
            ("/v1/events", {}), ("/v1/events", {"asset_id": aid}),
            ("/v1/events", {"correlation_id": "secret-corr"}),
            ("/v1/events", {"task_id": task["task_id"]}), ("/v1/events", {"tenant_id": tenant_a}),
            ("/v1/ledger", {}), ("/v1/ledger", {"project_id": "secret-project"}),
            ("/v1/ledger", {"tenant_id": tenant_a}),
        ]
        for path, params in lists:
            r = b.get(path, params=params)
            assert r.status_code == 200 and r.json()["items"] == [], (path, params, r.text)
            exported = b.get(path, params={**params, "format": "csv"})
            if path in ("/v1/events", "/v1/ledger"):
                assert exported.text.count("\n") == 1, (path, exported.text)  # the header only
        for params in ({}, {"group_by": "tenant_id,project_id"}, {"tenant_id": tenant_a}):
            assert b.get("/v1/ledger/summary", params=params).json()["items"] == []
        # Writes that name A's objects: refused without saying whose they are.
        assert b.post("/v1/events", json={"asset_id": aid, "event_type": "X"}).status_code == 404
        r = b.post("/v1/ledger", json={"entry_type": "REVENUE", "amount": "1",
                                       "currency": "USD", "task_id": task["task_id"]})
        assert "task_id" in _fields(r) and "secret" not in r.text
        assert "tenant_id" in _fields(b.post("/v1/assets", json={
            "sku_category": "A", "sku_code": "a", "tenant_id": tenant_a}))
        # A's objects are untouched.
        assert a.get(f"/v1/assets/{aid}").json()["status"] == "IN_USE"
        assert len(a.get("/v1/events", params={"asset_id": aid}).json()["items"]) == 3
    with server.admin() as admin:  # an admin sees every tenant's and must name one to write
        assert admin.get(f"/v1/assets/{aid}").status_code == 200
        assert admin.get("/v1/ledger", params={"tenant_id": tenant_a}).json()["items"]
        assert "tenant_id" in _fields(admin.post("/v1/assets", json={
            "sku_category": "A", "sku_code": "a"}))
        made = admin.post("/v1/assets", json={"sku_category": "A", "sku_code": "a",
                                              "tenant_id": tenant_a})
        assert made.status_code == 201 and made.json()["tenant_id"] == tenant_a


def test_every_asset_mutation_is_audited(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key, headers={"X-Request-ID": "assets-audit"}) as c:
        ids = [a["asset_id"] for a in c.post("/v1/assets", json=[
            {"sku_category": "A", "sku_code": "a1"}, {"sku_category": "A", "sku_code": "a2"},
        ]).json()["items"]]
        c.post(f"/v1/assets/{ids[0]}/ban", json={"reason": "fraud"})
        assert c.post(f"/v1/assets/{ids[0]}/ban").status_code == 409  # refused: no row
        c.post(f"/v1/assets/{ids[0]}/unban")
        c.post(f"/v1/assets/{ids[0]}/archive")
        assert c.post("/v1/assets", json=[{"sku_category": "A", "sku_code": "ok"},
                                          {"sku_category": "A"}]).status_code == 422
    rows = _audit(server, resource_type="asset", tenant_id=tenant)
    assert sorted(r["resource"]["identifier"] for r in rows if r["action"] == "created") == \
        sorted(ids)
    first = [r for r in rows if r["resource"]["identifier"] == ids[0]]
    assert [r["action"] for r in reversed(first)] == ["created", "banned", "unbanned",
                                                     "archived"]
    assert all(r["request_id"] == "assets-audit" for r in rows)
    created, banned = first[-1], first[-2]
    assert created["diff_object"]["old_object"] is None
    assert orjson.loads(created["diff_object"]["new_object"])["sku_code"] == "a1"
    assert orjson.loads(banned["diff_object"]["old_object"])["status"] == "READY"
    assert orjson.loads(banned["diff_object"]["new_object"])["status"] == "BANNED"
    assert banned["data"] == {"reason": "fraud"}
    assert len(rows) == 5


def test_unban_of_an_asset_that_is_not_banned_is_a_409_and_changes_nothing(
    server: Server,
) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        new = _asset(c, status="NEW")
        r = c.post(f"/v1/assets/{new['asset_id']}/unban")
        assert r.status_code == 409, r.text
        assert "is NEW, not BANNED" in r.json()["detail"]
        assert c.get(f"/v1/assets/{new['asset_id']}").json() == new
        kinds = [e["event_type"] for e in c.get(f"/v1/assets/{new['asset_id']}/events")
                 .json()["items"]]
        assert kinds == ["IMPORTED"]
    assert [a["action"] for a in _audit(server, resource_id=new["asset_id"])] == ["created"]


def _patch(
    c: httpx.Client, aid: str, if_match: int | str | None, /, **body: Any
) -> httpx.Response:
    """PATCH with If-Match: a version (sent quoted, as an ETag) or the header as given."""
    value = f'"{if_match}"' if isinstance(if_match, int) else if_match
    headers = {} if value is None else {"If-Match": value}
    return c.patch(f"/v1/assets/{aid}", json=body, headers=headers)


def _kinds(c: httpx.Client, aid: str) -> list[str]:
    return [e["event_type"] for e in c.get(f"/v1/assets/{aid}/events").json()["items"]]


def test_patch_changes_an_asset_and_activates_a_new_one(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        new = _asset(c, status="NEW", project_id="p1", cost_per_lease="0.25")
        aid = new["asset_id"]
        assert c.get(f"/v1/assets/{aid}").headers["ETag"] == '"1"'
        missing = _patch(c, aid, None, status="READY")
        assert missing.status_code == 428 and missing.json()["type"].endswith(
            "precondition-required")
        assert "If-Match" in _fields(_patch(c, aid, "v1", status="READY"))
        # Every refused change names its field and writes nothing.
        for body, field in (
            ({"health_score": 101}, "health_score"), ({"max_concurrency": 0}, "max_concurrency"),
            ({"max_concurrency": None}, "max_concurrency"), ({"status": None}, "status"),
            ({"cost_per_lease": "-1"}, "cost_per_lease"), ({"currency": "eur"}, "currency"),
            ({"sku_code": "ip.*"}, "sku_code"), ({"attributes": [1]}, "attributes"),
            ({"status": "IN_USE"}, "status"), ({"status": "LIVE"}, "status"),
            ({"current_concurrency": 1}, "current_concurrency"),
            ({"sku_category": "GPU"}, "sku_category"), ({"version": 5}, "version"),
        ):
            assert field in _fields(_patch(c, aid, 1, **body)), body
        stale = _patch(c, aid, 7, status="READY")
        assert stale.status_code == 412, stale.text
        assert stale.json()["current_version"] == 1 and stale.json()["type"].endswith(
            "stale-version")
        assert c.get(f"/v1/assets/{aid}").json() == new
        assert _kinds(c, aid) == ["IMPORTED"]

        # NEW -> READY with fields in one change (a weak ETag is read too).
        r = _patch(c, aid, 'W/"1"', status="READY", health_score=80, cost_per_lease="0.5",
                   attributes={"geo": "uk"}, project_id=None, cooldown_seconds=5)
        assert r.status_code == 200, r.text
        a = r.json()
        assert (a["status"], a["health_score"], a["cost_per_lease"], a["attributes"],
                a["project_id"], a["cooldown_seconds"], a["version"]) == (
            "READY", 80, "0.5", {"geo": "uk"}, None, 5, 2)
        assert r.headers["ETag"] == '"2"' and c.get(f"/v1/assets/{aid}").json() == a
        assert _kinds(c, aid) == ["IMPORTED", "UPDATED", "STATUS_READY"]
        # Nothing to change: the asset as it is, nothing written (the version still checked).
        assert _patch(c, aid, 2).json() == a
        assert _patch(c, aid, 1).status_code == 412
        # An illegal status change is a 409 and the fields sent with it are not written.
        illegal = _patch(c, aid, 2, status="NEW", health_score=10)
        assert illegal.status_code == 409 and illegal.json()["type"].endswith(
            "illegal-transition")
        assert c.get(f"/v1/assets/{aid}").json() == a
        sold = _patch(c, aid, 2, status="SOLD")
        assert sold.status_code == 200 and sold.json()["status"] == "SOLD"
        assert _patch(c, aid, 3, status="READY").status_code == 409
        assert _kinds(c, aid)[-1] == "SOLD"
        unknown = _patch(c, str(uuid.uuid4()), 1, health_score=1)
        assert unknown.status_code == 404
    rows = _audit(server, resource_id=aid)
    assert [r["action"] for r in reversed(rows)] == ["created", "updated", "updated"]
    activated = rows[1]["diff_object"]
    assert orjson.loads(activated["old_object"])["status"] == "NEW"
    assert orjson.loads(activated["new_object"])["status"] == "READY"
    assert orjson.loads(activated["new_object"])["health_score"] == 80


def test_bulk_patch_is_all_or_nothing_and_names_the_item(server: Server, py: Creep) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        kind = f"BULK-{uuid.uuid4().hex[:8]}"
        cat = f"CAT-{uuid.uuid4().hex[:6]}"
        one = _asset(c, sku_category=cat, status="NEW")
        two = _asset(c, sku_category=cat, max_concurrency=3)
        ids = [one["asset_id"], two["asset_id"]]

        def bulk(*items: dict[str, Any]) -> httpx.Response:
            return c.patch("/v1/assets", json={"items": list(items)})

        def unchanged() -> None:
            assert [c.get(f"/v1/assets/{i}").json() for i in ids] == [one, two]

        r = bulk({"asset_id": ids[0], "expected_version": 1, "status": "READY"},
                 {"asset_id": ids[1], "expected_version": 1, "health_score": -1})
        assert _fields(r) == {"items[1].health_score"}
        r = bulk({"asset_id": ids[0], "expected_version": 1},
                 {"asset_id": ids[1], "expected_version": "1", "health_score": 5})
        assert _fields(r) == {"items[1].expected_version"}
        r = bulk({"asset_id": ids[0], "expected_version": 1, "max_concurrency": None},
                 {"asset_id": ids[1], "expected_version": 1, "sku_code": "x.*"})
        assert _fields(r) == {"items[0].max_concurrency", "items[1].sku_code"}
        r = bulk({"asset_id": ids[0], "expected_version": 1, "health_score": 1},
                 {"asset_id": ids[0], "expected_version": 1, "env": "x"})
        assert _fields(r) == {"items[1].asset_id"}
        assert "items" in _fields(c.patch("/v1/assets", json={"items": []}))
        stale = bulk({"asset_id": ids[0], "expected_version": 1, "status": "READY"},
                     {"asset_id": ids[1], "expected_version": 4, "health_score": 5})
        assert stale.status_code == 409, stale.text
        assert stale.json()["current_version"] == 1 and stale.json()["asset_id"] == ids[1]
        assert "items[1]" in stale.json()["detail"]
        illegal = bulk({"asset_id": ids[0], "expected_version": 1, "health_score": 5},
                       {"asset_id": ids[1], "expected_version": 1, "status": "NEW"})
        assert illegal.status_code == 409, illegal.text
        assert illegal.json()["detail"].startswith(f"items[1]: asset {ids[1]}: ")
        assert illegal.json()["asset_id"] == ids[1]
        r = bulk({"asset_id": ids[1], "expected_version": 1, "health_score": 5},
                 {"asset_id": ids[0], "expected_version": 1, "status": "IN_USE"})
        assert _fields(r) == {"items[1].status"}
        assert bulk({"asset_id": ids[0], "expected_version": 1, "health_score": 5},
                    {"asset_id": str(uuid.uuid4()), "expected_version": 1,
                     "health_score": 5}).status_code == 404
        # Two leases on the second asset: lowering its max_concurrency below them is refused
        # (by the store, under the row lock) and named by item.
        for _ in range(2):
            c.post("/v1/tasks", json={"task_type": kind, "constraints": {"keep_leases": True},
                                      "resource_hints": [{"sku_category": cat}]})
        _claim(py, kind)
        two = c.get(f"/v1/assets/{ids[1]}").json()
        assert two["current_concurrency"] == 2
        r = bulk({"asset_id": ids[0], "expected_version": 1, "status": "READY"},
                 {"asset_id": ids[1], "expected_version": two["version"], "max_concurrency": 1})
        assert _fields(r) == {"items[1].max_concurrency"}
        r = bulk({"asset_id": ids[0], "expected_version": 1, "health_score": 9},
                 {"asset_id": ids[1], "expected_version": two["version"], "status": "READY"})
        assert _fields(r) == {"items[1].status"}  # IN_USE follows the leases
        unchanged()
        before = len(_audit(server, resource_type="asset", action="updated"))

        done = bulk({"asset_id": ids[0], "expected_version": 1, "status": "READY",
                     "attributes": {"tier": 1}},
                    {"asset_id": ids[1], "expected_version": two["version"],
                     "max_concurrency": 2, "cost_per_lease": 0.75})
        assert done.status_code == 200, done.text
        got = done.json()["items"]
        assert [(a["asset_id"], a["status"], a["version"]) for a in got] == [
            (ids[0], "READY", 2), (ids[1], "IN_USE", two["version"] + 1)]
        assert got[0]["attributes"] == {"tier": 1} and got[1]["max_concurrency"] == 2
        assert got[1]["cost_per_lease"] == "0.75"
        assert [c.get(f"/v1/assets/{i}").json() for i in ids] == got
    updated = _audit(server, resource_type="asset", action="updated")
    assert len(updated) == before + 2
    assert {r["resource"]["identifier"] for r in updated[:2]} == set(ids)


def test_patch_is_tenant_scoped_and_refused_to_read_only_keys(server: Server) -> None:
    tenant_a, key_a = server.tenant()
    _, key_b = server.tenant()
    read_only = server.key(tenant_a, read_only=True)["key"]
    with server.client(key_a) as a, server.client(key_b) as b, \
            server.client(read_only) as ro:
        aid = _asset(a, status="NEW")["asset_id"]
        missing = str(uuid.uuid4())
        foreign, absent = _patch(b, aid, 1, status="READY"), _patch(b, missing, 1, status="READY")
        assert foreign.status_code == absent.status_code == 404, foreign.text
        assert foreign.json()["detail"].replace(aid, "ID") == absent.json()["detail"].replace(
            missing, "ID")
        assert _patch(b, aid, 9, status="READY").status_code == 404  # no version leaks out
        r = b.patch("/v1/assets", json={"items": [
            {"asset_id": aid, "expected_version": 1, "status": "READY"}]})
        assert r.status_code == 404, r.text
        assert _patch(ro, aid, 1, status="READY").status_code == 403
        assert ro.patch("/v1/assets", json={"items": [
            {"asset_id": aid, "expected_version": 1, "status": "READY"}]}).status_code == 403
        assert a.get(f"/v1/assets/{aid}").json()["status"] == "NEW"
    with server.admin() as admin:  # an admin changes any tenant's asset
        r = _patch(admin, aid, 1, status="READY")
        assert r.status_code == 200 and r.json()["tenant_id"] == tenant_a


def test_patch_of_a_sold_or_archived_asset_is_a_409_naming_the_status(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        sold = _asset(c)
        archived = _asset(c)
        ready = _asset(c)
        assert _patch(c, sold["asset_id"], 1, status="SOLD").status_code == 200
        assert c.post(f"/v1/assets/{archived['asset_id']}/archive").status_code == 200
        for a, status in ((sold, "SOLD"), (archived, "ARCHIVED")):
            aid = a["asset_id"]
            before = c.get(f"/v1/assets/{aid}").json()
            r = _patch(c, aid, 2, health_score=5)
            assert r.status_code == 409, r.text
            assert f"asset {aid} is {status}" in r.json()["detail"]
            r = c.patch("/v1/assets", json={"items": [
                {"asset_id": ready["asset_id"], "expected_version": 1, "health_score": 7},
                {"asset_id": aid, "expected_version": 2, "attributes": {"buyer": "x"}}]})
            assert r.status_code == 409, r.text
            assert r.json()["detail"].startswith(f"items[1]: asset {aid} is {status}")
            assert r.json()["asset_id"] == aid
            assert c.get(f"/v1/assets/{aid}").json() == before
        assert c.get(f"/v1/assets/{ready['asset_id']}").json() == ready
        assert _patch(c, sold["asset_id"], 2, status="ARCHIVED").status_code == 200


def test_listing_by_a_code_pattern_with_no_prefix_is_a_422(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        a = _asset(c)
        for bad in (".*", "ip*", "ip.*.*"):
            assert _fields(c.get("/v1/assets", params={"sku_code": bad})) == {"sku_code"}
        items = c.get("/v1/assets", params={"sku_code": "ip.*"}).json()["items"]
        assert [x["asset_id"] for x in items] == [a["asset_id"]]
