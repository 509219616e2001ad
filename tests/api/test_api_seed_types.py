"""The seeds' field rules over REST, against a real server on SQLite and PostgreSQL.

Seed 001 §3.2 (AssetEvent): POST /v1/events may name the TaskOrder that caused the event
(`task_id`) and the lease it is tied to (`lease_id`); both must be the tenant's and agree with
the event's asset."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from creep import Creep
from tests.api.conftest import Server


@pytest.fixture
def py(server: Server) -> Iterator[Creep]:
    """The Python API on the server's database (to claim tasks)."""
    app = Creep(server.database_url)
    yield app
    app.close()


def _errors(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return [e["field"] for e in r.json().get("errors") or []]


def _asset(c: httpx.Client, code: str) -> str:
    r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": code})
    assert r.status_code == 201, r.text
    asset_id: str = r.json()["asset_id"]
    return asset_id


def _leased(c: httpx.Client, py: Creep) -> tuple[dict[str, Any], dict[str, Any]]:
    """A claimed task holding one lease on a fresh asset: (task, lease)."""
    kind = f"LEASED-{uuid.uuid4().hex[:8]}"
    _asset(c, f"ip.{kind}")
    r = c.post("/v1/tasks", json={
        "task_type": kind, "resource_hints": [{"sku_category": "RAW_NET",
                                               "sku_code": f"ip.{kind}"}]})
    assert r.status_code == 201, r.text
    task: dict[str, Any] = r.json()
    assert py.store.task_claim("test-worker", [kind], 10, datetime.now(UTC), 60.0)
    [lease] = c.get("/v1/leases", params={"task_id": task["task_id"]}).json()["items"]
    return task, lease


def test_post_event_carries_the_task_that_caused_it(server: Server, py: Creep) -> None:
    """Seed 001 §3.2: "**task_id** (`uuid`, optional) — 若该事件是由某个 Task 引发，则挂上
    `TaskOrder.task_id`". POST /v1/events takes task_id (it answered 422 "Extra inputs are
    not permitted") or derives it from the lease named; the event carries the task's
    correlation_id and GET /v1/events?task_id= lists it. An unknown task is a 422 on task_id."""  # noqa: RUF002
    _, key = server.tenant()
    _, other_key = server.tenant()
    with server.client(key) as c, server.client(other_key) as other:
        task, lease = _leased(c, py)
        body = {"asset_id": lease["asset_id"], "event_type": "HTTP_PROBE_FAIL",
                "http_status": 403, "retryable": True}
        named = c.post("/v1/events", json={**body, "task_id": task["task_id"],
                                           "lease_id": lease["lease_id"]})
        assert named.status_code == 201, named.text
        derived = c.post("/v1/events", json={**body, "lease_id": lease["lease_id"]})
        assert derived.status_code == 201, derived.text
        for r in (named, derived):
            event = r.json()["event"]
            assert (event["task_id"], event["correlation_id"]) == (
                task["task_id"], task["correlation_id"])
        listed = c.get("/v1/events", params={"task_id": task["task_id"]}).json()["items"]
        ids = {e["event_id"] for e in listed}
        assert {named.json()["event"]["event_id"], derived.json()["event"]["event_id"]} <= ids
        theirs = other.post("/v1/tasks", json={"task_type": "T"}).json()["task_id"]
        for task_id in (str(uuid.uuid4()), theirs):
            assert _errors(c.post("/v1/events", json={**body, "task_id": task_id})) == [
                "task_id"]


def test_post_event_must_name_a_lease_of_its_asset_and_tenant(server: Server, py: Creep) -> None:
    """Seed 001 §3.2: `asset_id` is "此事件对应的资产 ID" and `lease_id` the lease the event
    is tied to. POST /v1/events naming a lease held on another asset, one that does not
    exist, or another tenant's answered 201; each is a 422 on lease_id."""
    _, key = server.tenant()
    _, other_key = server.tenant()
    with server.client(key) as c, server.client(other_key) as other:
        _task, lease = _leased(c, py)
        _their_task, their_lease = _leased(other, py)
        elsewhere = _asset(c, "ip.elsewhere")
        for asset_id, lease_id in ((elsewhere, lease["lease_id"]),
                                   (lease["asset_id"], str(uuid.uuid4())),
                                   (lease["asset_id"], their_lease["lease_id"])):
            r = c.post("/v1/events", json={"asset_id": asset_id, "lease_id": lease_id,
                                           "event_type": "HTTP_PROBE_FAIL"})
            assert _errors(r) == ["lease_id"]
        events = c.get("/v1/events", params={"asset_id": elsewhere}).json()["items"]
        assert [e["event_type"] for e in events] == ["IMPORTED"]


# -- bug: REST bodies coerced strings and booleans into the seeds' typed fields -----------------


#: (path, body, field, bad, good): `bad` is a JSON type the field's seed type is not, `good`
#: the JSON-natural value (ISO 8601 text for a timestamp, a JSON number or decimal text for
#: money: the bodies carry some of those too).
_TYPED: list[tuple[str, dict[str, Any], str, Any, Any]] = [
    # Seed 000: priority an integer 0-100, timeout_ms an integer. POST /v1/tasks answers a plain
    # order on its fast path and anything else through the model: both are covered.
    ("/v1/tasks", {"task_type": "T"}, "priority", True, 90),
    ("/v1/tasks", {"task_type": "T"}, "priority", "90", 90),
    ("/v1/tasks", {"task_type": "T"}, "priority", 90.0, 90),
    ("/v1/tasks", {"task_type": "T"}, "timeout_ms", "1000", 1000),
    ("/v1/tasks", {"task_type": "T", "max_total_cost": "5.25", "business_value_hint": 3},
     "priority", False, 0),
    ("/v1/tasks", {"task_type": "T", "resource_hints": [{"sku_category": "RAW_NET"}]},
     "resource_hints[0].min_count", "2", 2),
    ("/v1/tasks", {"task_type": "T"}, "run_after", 60, "2030-01-01T00:00:00Z"),
    ("/v1/tasks", {"task_type": "T"}, "run_after", "60", "2030-01-01T00:00:00+00:00"),
    ("/v1/batches", {"title": "b", "tasks": [{"task_type": "T"}]}, "tasks[0].priority",
     "5", 5),
    # Seed 001: http_status an integer 100-599, latency_ms an integer, retryable a boolean,
    # occurred_at a timestamp.
    ("/v1/events", {}, "retryable", "true", True),
    ("/v1/events", {}, "retryable", 1, False),
    ("/v1/events", {}, "http_status", "403", 403),
    ("/v1/events", {}, "latency_ms", "850", 850),
    ("/v1/events", {}, "occurred_at", 1767225600, "2026-01-01T00:00:00+00:00"),
    # Seed 003: ScheduledTask's interval, enabled, priority, max_retries.
    ("/v1/schedules", {"type": "T"}, "interval", "60", 60),
    ("/v1/schedules", {"type": "T", "interval": 60, "max_total_cost": 2}, "enabled",
     "false", False),
    ("/v1/schedules", {"type": "T", "interval": 60}, "priority", True, 1),
    ("/v1/schedules", {"type": "T", "interval": 60}, "max_retries", "3", 3),
    # The asset's numbers (PRODUCT.md's AssetSnapshot).
    ("/v1/assets", {"sku_category": "RAW_NET", "sku_code": "ip.1", "cost_per_lease": 0.5},
     "health_score", "50", 50),
    ("/v1/assets", {"sku_category": "RAW_NET", "sku_code": "ip.1", "cost_per_lease": "0.5"},
     "max_concurrency", True, 1),
]


@pytest.mark.parametrize(("path", "body", "field", "bad", "good"), _TYPED,
                         ids=[f"{p.rsplit('/', 1)[1]}-{f}-{i}"
                              for i, (p, _, f, _b, _g) in enumerate(_TYPED)])
def test_rest_bodies_take_only_json_types_in_seed_fields(
    server: Server, path: str, body: dict[str, Any], field: str, bad: Any, good: Any
) -> None:
    """Seed 000: `priority` is "整数 0–100"; seed 001: `retryable` is `boolean`, `http_status`
    `integer 100–599`; seed 003 types ScheduledTask's fields the same way. The request models
    parsed leniently: `true` became priority 1, "90" 90, "true" retryable True, "403" 403,
    60 or "60" a run_after of 1970 (201 each), where the Python API refuses the same values. Each is
    a 422 naming the field, on every route (the fast path of POST /v1/tasks too), and nothing
    is created; the JSON-natural value of the same field is taken."""  # noqa: RUF002
    _, key = server.tenant()
    with server.client(key) as c:
        if path == "/v1/events":
            body = {"asset_id": _asset(c, "ip.typed"), "event_type": "HTTP_PROBE_FAIL", **body}
        if path == "/v1/schedules":
            body = {"name": f"s-{uuid.uuid4().hex[:8]}", **body}

        def send(value: Any) -> httpx.Response:
            if field.startswith("tasks[0]."):
                return c.post(path, json={**body, "tasks": [{**body["tasks"][0], "priority":
                                                              value}]})
            if field.startswith("resource_hints[0]."):
                hint = {**body["resource_hints"][0], "min_count": value}
                return c.post(path, json={**body, "resource_hints": [hint]})
            return c.post(path, json={**body, field: value})

        assert _errors(send(bad)) == [field]
        if path == "/v1/tasks":
            assert c.get("/v1/tasks").json()["items"] == []
        r = send(good)
        assert r.status_code == 201, r.text


def test_rest_patch_and_worker_bodies_take_only_json_types(server: Server) -> None:
    """Seed 000: `priority` "整数 0–100" (PATCH /v1/tasks/{id}); seed 004: `progress`
    "0~100 的进度百分比" (the HTTP worker's progress); the HTTP worker's claim takes a count
    and seconds. A string or a boolean in any of them is a 422 naming the field; the task is
    left as it was, and JSON numbers (an integer for seconds too) are taken."""  # noqa: RUF002
    _, key = server.tenant()
    with server.client(key) as c:
        kind = f"TYPED-{uuid.uuid4().hex[:8]}"
        task = c.post("/v1/tasks", json={"task_type": kind}).json()
        tid = task["task_id"]
        r = c.patch(f"/v1/tasks/{tid}", json={"priority": "5"},
                    headers={"If-Match": f'"{task["task_version"]}"'})
        assert _errors(r) == ["priority"]
        assert c.get(f"/v1/tasks/{tid}").json()["priority"] == task["priority"]
        for claim, field in (({"task_types": [kind], "max_tasks": "1"}, "max_tasks"),
                             ({"task_types": [kind], "claim_ttl": "30"}, "claim_ttl"),
                             ({"task_types": [kind], "wait": True}, "wait")):
            assert _errors(c.post("/v1/workers/claim", json=claim)) == [field]
        claimed = c.post("/v1/workers/claim", json={"task_types": [kind], "max_tasks": 1,
                                                    "claim_ttl": 30, "wait": 0})
        assert claimed.status_code == 200, claimed.text
        token = claimed.json()["items"][0]["claim_token"]
        r = c.post(f"/v1/tasks/{tid}/progress", json={"claim_token": token, "progress": "50"})
        assert _errors(r) == ["progress"]
        assert c.get(f"/v1/tasks/{tid}").json()["progress"] == 0
        r = c.post(f"/v1/tasks/{tid}/progress", json={"claim_token": token, "progress": 50})
        assert r.status_code == 200, r.text


def test_rest_admin_bodies_take_only_json_types(server: Server) -> None:
    """A tenant's limits are numbers and a key's read_only a boolean: "5" or "false" (which
    the lax model read as False: a writing key) is a 422 naming the field; JSON numbers (an
    integer for a rate too) and booleans are taken."""
    with server.admin() as admin:
        name = f"t-{uuid.uuid4().hex[:8]}"
        for body, field in (({"tenant_id": name, "max_active_tasks": "5"}, "max_active_tasks"),
                            ({"tenant_id": name, "rate_limit_per_second": "2.5"},
                             "rate_limit_per_second"),
                            ({"tenant_id": name, "rate_limit_burst": True}, "rate_limit_burst")):
            assert _errors(admin.post("/v1/tenants", json=body)) == [field]
        assert admin.get(f"/v1/tenants/{name}").status_code == 404
        r = admin.post("/v1/tenants", json={"tenant_id": name, "max_active_tasks": 5,
                                            "rate_limit_per_second": 2, "rate_limit_burst": 4})
        assert r.status_code == 201, r.text
        r = admin.post("/v1/keys", json={"name": "k", "tenant_id": name, "read_only": "false"})
        assert _errors(r) == ["read_only"]
        r = admin.post("/v1/keys", json={"name": "k", "tenant_id": name, "read_only": True})
        assert r.status_code == 201 and r.json()["read_only"] is True, r.text
