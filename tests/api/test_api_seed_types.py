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
