"""The audit log (seed 003): one row per mutation, written with it, truncated field-wise,
immutable in the database, filterable, exportable as CSV."""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import psycopg
import pytest

from creep.domain.audit import AuditAction, ResourceType
from tests.api.conftest import Server


def _audit(server: Server, **params: Any) -> list[dict[str, Any]]:
    with server.admin() as admin:
        r = admin.get("/v1/audit", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


def test_every_kind_of_mutation_is_audited(server: Server) -> None:
    tenant, key = server.tenant()
    key_id = _audit(server, resource_type="apiKey", tenant_id=tenant)[0]["resource"]["identifier"]
    with server.client(key, headers={"User-Agent": "audit-test/1"}) as c:
        task = c.post("/v1/tasks", json={"task_type": "ECHO", "idempotency_key": "a"},
                      headers={"X-Request-ID": "req-create-1"})
        tid = task.json()["task_id"]
        assert c.post("/v1/tasks", json={"task_type": "ECHO", "idempotency_key": "a"}
                      ).status_code == 200  # a replay: no second row
        c.patch(f"/v1/tasks/{tid}", json={"priority": 9}, headers={"If-Match": '"1"'})
        c.post(f"/v1/tasks/{tid}/cancel")
        assert c.post(f"/v1/tasks/{tid}/cancel").status_code == 409  # refused: no row
        c.post(f"/v1/tasks/{tid}/retry")
        batch = c.post("/v1/batches", json={"title": "b", "tasks": [{"task_type": "X"}]}).json()
        c.post(f"/v1/batches/{batch['batch_id']}/cancel")
    with server.admin() as admin:
        revoke_me = server.key(tenant)
        admin.delete(f"/v1/keys/{revoke_me['key_id']}")
        admin.put("/v1/admin/log-level", json={"logger": "creep.test", "level": "DEBUG"})

    rows = _audit(server, resource_id=tid)
    assert [r["action"] for r in reversed(rows)] == ["created", "updated", "cancelled", "retried"]
    created = rows[-1]
    assert created["request_id"] == "req-create-1"
    assert created["user"] == {"uid": key_id, "username": f"key of {tenant}", "type": "service"}
    assert created["user_agent"] == "audit-test/1" and created["request_method"] == "POST"
    assert created["client_ip"] == "127.0.0.1" and created["tenant_id"] == tenant
    assert created["resource"] == {"type": "task", "identifier": tid, "data": {}}
    diff = created["diff_object"]
    assert diff["old_object"] is None and orjson.loads(diff["new_object"])["task_id"] == tid
    updated = rows[-2]["diff_object"]
    assert orjson.loads(updated["old_object"])["priority"] == 50
    assert orjson.loads(updated["new_object"])["priority"] == 9
    cancelled = rows[-3]["diff_object"]
    assert orjson.loads(cancelled["new_object"])["status"] == "CANCELLED"

    assert [r["action"] for r in _audit(server, resource_id=batch["batch_id"])] == [
        "cancelled", "created"]
    assert [r["action"] for r in _audit(server, resource_id=revoke_me["key_id"])] == [
        "revoked", "created"]
    new_key = orjson.loads(_audit(server, resource_id=revoke_me["key_id"])[1]["diff_object"][
        "new_object"])
    assert "key_hash" not in new_key and revoke_me["key"] not in str(new_key)
    assert _audit(server, resource_type="tenant", resource_id=tenant)[0]["action"] == "created"
    level = _audit(server, resource_type="instance", resource_id="creep.test")[0]
    assert level["action"] == "logLevelChanged"
    assert orjson.loads(level["diff_object"]["new_object"])["level"] == "DEBUG"
    # Filters: action, principal, time range, request id.
    assert {r["resource"]["identifier"] for r in _audit(server, principal=key_id,
                                                         action="cancelled")} == {
        tid, batch["batch_id"]}
    assert _audit(server, request_id="req-create-1")[0]["id"] == created["id"]
    assert _audit(server, resource_id=tid, **{"from": "2999-01-01T00:00:00Z"}) == []


def test_diff_objects_are_truncated_field_wise(server: Server) -> None:
    _, key = server.tenant()
    big = "x" * 100_000
    with server.client(key) as c:
        tid = c.post("/v1/tasks", json={"task_type": "BIG", "description": "kept",
                                        "input_payload": {"blob": big}}).json()["task_id"]
    row = _audit(server, resource_id=tid)[0]
    diff = row["diff_object"]
    assert diff["new_object_truncated"] is True and diff["old_object_truncated"] is False
    assert diff["truncated_fields"] == ["new_object.input_payload"]
    assert len(diff["new_object"].encode()) <= 64 * 1024
    new = orjson.loads(diff["new_object"])
    assert new["description"] == "kept" and new["task_type"] == "BIG"
    assert "truncated" in str(new["input_payload"])


def test_pagination_and_csv_export(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key) as c:
        for _ in range(5):
            c.post("/v1/tasks", json={"task_type": "PAGED"})
    all_rows = _audit(server, tenant_id=tenant, resource_type="task")
    assert len(all_rows) == 5
    with server.admin() as admin:
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"tenant_id": tenant, "resource_type": "task", "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = admin.get("/v1/audit", params=params).json()
            seen.extend(r["id"] for r in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == [r["id"] for r in all_rows]
        for how in ({"params": {"format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
            r = admin.get("/v1/audit", **how)  # type: ignore[arg-type]
            assert r.headers["content-type"].startswith("text/csv")
        r = admin.get("/v1/audit", params={"tenant_id": tenant, "resource_type": "task",
                                            "format": "csv"})
        table = list(csv.DictReader(io.StringIO(r.text)))
        assert [row["id"] for row in table] == [r["id"] for r in all_rows]
        assert orjson.loads(table[0]["user"])["type"] == "service"
        assert admin.get("/v1/audit", params={"cursor": "abc"}).status_code == 422


def _sql(server: Server, statement: str, params: tuple[Any, ...] = ()) -> None:
    if server.database_url.startswith("sqlite"):
        path = urlsplit(server.database_url).path[1:]
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(statement.replace("%s", "?"), params)
        finally:
            conn.close()
    else:
        with psycopg.connect(server.database_url, autocommit=True) as pg:
            pg.execute(statement.encode(), params)


def test_audit_rows_are_immutable_in_the_database(server: Server) -> None:
    _tenant, key = server.tenant()
    with server.client(key) as c:
        tid = c.post("/v1/tasks", json={"task_type": "X"}).json()["task_id"]
    row = _audit(server, resource_id=tid)[0]
    errors = (sqlite3.DatabaseError, psycopg.Error)
    with pytest.raises(errors, match="immutable"):
        _sql(server, "UPDATE audit_events SET action = 'deleted' WHERE id = %s", (row["id"],))
    with pytest.raises(errors, match="immutable"):
        _sql(server, "DELETE FROM audit_events WHERE id = %s", (row["id"],))
    if not server.database_url.startswith("sqlite"):
        with pytest.raises(errors, match="immutable"):
            _sql(server, "TRUNCATE audit_events")
    assert _audit(server, resource_id=tid)[0] == row
    # Retention may remove rows older than 90 days, and only those.
    old_id = str(uuid.uuid4())
    old_ms = int((time.time() - 91 * 86400) * 1000)
    created = "2000-01-01T00:00:00+00:00" if not server.database_url.startswith("sqlite") else 1
    _sql(server,
         "INSERT INTO audit_events (id, timestamp, action, resource_type, resource, "
         "resource_id, principal, principal_uid, data, created_at) VALUES "
         "(%s, %s, 'created', 'task', '{}', 'r', '{}', 'u', '{}', %s)",
         (old_id, old_ms, created))
    _sql(server, "DELETE FROM audit_events WHERE id = %s", (old_id,))
    assert _audit(server, resource_id="r") == []


def test_filters_outside_the_seed_enums_are_refused(server: Server) -> None:
    """Seed 003: "`action` 必须是有效的 Action 枚举值", "`resource_type` 必须是有效的
    ResourceType 枚举值". GET /v1/audit?action=create (or a resource_type of the wrong case)
    answered 200 with no rows, as if nothing had happened; it is a 422 naming the filter and
    listing its values, as the task, lease and ledger filters are. Every value of the enums
    still filters (CSV too)."""
    tenant, key = server.tenant()
    with server.client(key) as c:
        assert c.post("/v1/tasks", json={"task_type": "ENUMS"}).status_code == 201
    with server.admin() as admin:
        for params, field, value in (({"action": "create"}, "action", "forcePush"),
                                     ({"resource_type": "Task"}, "resource_type", "apiKey"),
                                     ({"action": "created", "resource_type": "tasks",
                                       "format": "csv"}, "resource_type", "scheduledTask")):
            r = admin.get("/v1/audit", params={"tenant_id": tenant, **params})
            assert r.status_code == 422, r.text
            [error] = r.json()["errors"]
            assert (error["field"], error["in"]) == (field, "query")
            assert value in error["rule"]
    [row] = _audit(server, tenant_id=tenant, action="created", resource_type="task")
    assert row["action"] == "created" and row["resource_type"] == "task"
    assert _audit(server, tenant_id=tenant, action="forcePush", resource_type="apiKey") == []


def test_dashboard_audit_filters_offer_the_api_enums() -> None:
    """The dashboard's audit page offers the filters' values as choices (a typed value
    outside them would be a 422): its lists are the API's enums."""
    page = Path(__file__).parents[2] / "src/creep/ui/static/js/pages/audit.js"
    text = page.read_text()
    for name, enum in (("RESOURCE_TYPES", ResourceType), ("ACTIONS", AuditAction)):
        found = re.search(rf"const {name} = \[(.*?)\];", text, re.S)
        assert found is not None, name
        assert re.findall(r'"([^"]+)"', found.group(1)) == [m.value for m in enum]
