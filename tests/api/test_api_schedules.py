"""/v1/schedules over HTTP against a real server (SQLite and PostgreSQL): CRUD with If-Match,
validation problems, a manual trigger creating an execution and its task, the execution
history, tenant isolation and one audit row per mutation."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from tests.api.conftest import Server


def _audit(server: Server, **params: Any) -> list[dict[str, Any]]:
    with server.admin() as admin:
        r = admin.get("/v1/audit", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


def _fields(problem: dict[str, Any]) -> set[str]:
    return {e["field"] for e in problem.get("errors") or []}


def test_schedule_crud_with_if_match(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key) as c:
        r = c.post("/v1/schedules", json={
            "name": "nightly", "type": "REPORT", "cron_expr": "30 2 * * *",
            "data": {"region": "eu"}, "labels": {"team": "ops"}, "max_total_cost": "1.50",
            "currency": "EUR", "resource_hints": [{"sku_category": "RAW_NET"}],
        })
        assert r.status_code == 201, r.text
        sched = r.json()
        uid = sched["uid"]
        assert r.headers["ETag"] == '"1"' and r.headers["Location"] == f"/v1/schedules/{uid}"
        assert sched["tenant_id"] == tenant and sched["is_recurring"] is True
        assert sched["data"] == {"region": "eu"} and sched["max_total_cost"] == "1.50"
        assert sched["next_run"].endswith("02:30:00+00:00") and sched["enabled"] is True

        assert c.get(f"/v1/schedules/{uid}").json() == sched
        assert c.get("/v1/schedules/nightly").json()["uid"] == uid  # its own, by name
        c.post("/v1/schedules", json={"name": "other", "type": "PING", "interval": 60})
        assert [s["name"] for s in c.get("/v1/schedules").json()["items"]] == ["nightly", "other"]
        assert [s["name"] for s in c.get("/v1/schedules", params={"type": "PING"}).json()[
            "items"]] == ["other"]

        # PATCH needs If-Match: missing -> 428, stale -> 412, current -> 200 and version + 1.
        patch = {"enabled": False, "description": "paused"}
        assert c.patch(f"/v1/schedules/{uid}", json=patch).status_code == 428
        stale = c.patch(f"/v1/schedules/{uid}", json=patch, headers={"If-Match": '"7"'})
        assert stale.status_code == 412 and stale.json()["current_version"] == 1
        ok = c.patch(f"/v1/schedules/{uid}", json=patch, headers={"If-Match": '"1"'})
        assert ok.status_code == 200, ok.text
        assert ok.json()["version"] == 2 and ok.headers["ETag"] == '"2"'
        assert ok.json()["enabled"] is False and ok.json()["next_run"] is None
        assert [s["name"] for s in c.get("/v1/schedules", params={"enabled": "false"}).json()[
            "items"]] == ["nightly"]
        # Switching to an interval clears the cron expression.
        sw = c.patch(f"/v1/schedules/{uid}", json={"interval": 300, "enabled": True},
                     headers={"If-Match": '"2"'}).json()
        assert sw["cron_expr"] is None and sw["interval"] == 300 and sw["next_run"] is not None

        assert c.delete(f"/v1/schedules/{uid}").status_code == 204
        assert c.get(f"/v1/schedules/{uid}").status_code == 404
        assert c.delete(f"/v1/schedules/{uid}").status_code == 404


def test_validation_problems_name_the_field(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"name": "x", "type": "T", "cron_expr": "61 * * * *"}, "cron_expr"),
            ({"name": "x", "type": "T", "interval": 60, "data": {"b": "x" * 11_000}}, "data"),
            ({"name": "x", "type": "T", "interval": 60, "max_duration_seconds": 10,
              "timeout_grace_period": 10}, "timeout_grace_period"),
            ({"name": "x", "type": "T"}, "cron_expr"),  # no timing at all
            ({"name": "x", "type": "T", "interval": 0}, "interval"),
            ({"name": "x", "type": "T", "interval": 60, "misfire_policy": "sometimes"},
             "misfire_policy"),
            ({"name": "x", "type": "T", "interval": 60, "colour": "red"}, "colour"),
            ({"type": "T", "interval": 60}, "name"),
            # The TaskOrder template follows the task order's rules (it was accepted, and
            # every firing then failed as an invalid task order).
            ({"name": "x", "type": "T", "interval": 60, "tags": ["t" * 129]}, "tags[0]"),
            ({"name": "x", "type": "T", "interval": 60, "max_total_cost": "0.12345678901"},
             "max_total_cost"),
            ({"name": "x", "type": "T", "interval": 60, "project_id": "p" * 129},
             "project_id"),
            ({"name": "x", "type": "T" * 129, "interval": 60}, "type"),
            # A '/' would make the schedule unreachable by its REST paths.
            ({"name": "nightly/eu", "type": "T", "interval": 60}, "name"),
            ({"uid": "a/b", "name": "x", "type": "T", "interval": 60}, "uid"),
        ]
        for body, field in cases:
            r = c.post("/v1/schedules", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert field in _fields(r.json()), (field, r.json())
        big = c.post("/v1/schedules", json=cases[1][0]).json()
        assert "10 KB" in big["detail"]
        made = c.post("/v1/schedules", json={"name": "dup", "type": "T", "interval": 60})
        uid = made.json()["uid"]
        again = c.post("/v1/schedules", json={"name": "dup", "type": "T", "interval": 60})
        assert again.status_code == 409 and again.json()["status"] == 409
        bad = c.patch(f"/v1/schedules/{uid}", json={"cron_expr": "nope"},
                      headers={"If-Match": '"1"'})
        assert bad.status_code == 422 and "cron_expr" in _fields(bad.json())
        bad = c.patch(f"/v1/schedules/{uid}", json={"tags": ["ok", "t" * 129]},
                      headers={"If-Match": '"1"'})
        assert bad.status_code == 422 and "tags[1]" in _fields(bad.json())
        bad = c.patch(f"/v1/schedules/{uid}", json={"max_total_cost": "1e15"},
                      headers={"If-Match": '"1"'})
        assert bad.status_code == 422 and "max_total_cost" in _fields(bad.json())
        bad = c.patch(f"/v1/schedules/{uid}", json={"name": "dup/2"},
                      headers={"If-Match": '"1"'})
        assert bad.status_code == 422 and "name" in _fields(bad.json())
        bad = c.patch(f"/v1/schedules/{uid}", json={"max_retries": 1},
                      headers={"If-Match": "one"})
        assert bad.status_code == 422 and "If-Match" in _fields(bad.json())
        assert c.get(f"/v1/schedules/{uid}/executions",
                     params={"cursor": "garbage"}).status_code == 422
        assert c.get(f"/v1/schedules/{uid}/executions",
                     params={"started_from": "2026-01-01T00:00:00"}).status_code == 422
    with server.admin() as admin:  # an admin must name an existing tenant
        r = admin.post("/v1/schedules", json={"name": "a", "type": "T", "interval": 60})
        assert r.status_code == 422 and "tenant_id" in _fields(r.json())
        r = admin.post("/v1/schedules", json={"name": "a", "type": "T", "interval": 60,
                                              "tenant_id": "no-such-tenant"})
        assert r.status_code == 422 and "tenant_id" in _fields(r.json())


def test_manual_trigger_creates_an_execution_and_a_task(server: Server) -> None:
    tenant, key = server.tenant()
    key_id = _audit(server, resource_type="apiKey", tenant_id=tenant)[0]["resource"]["identifier"]
    with server.client(key) as c:
        uid = c.post("/v1/schedules", json={
            "name": "manual", "type": "SYNC", "interval": 3600, "max_concurrent": 1,
            "priority": 70, "max_duration_seconds": 120, "data": {"full": True},
            "tags": ["sched"],
        }).json()["uid"]
        r = c.post(f"/v1/schedules/{uid}/trigger")
        assert r.status_code == 201, r.text
        execution = r.json()
        assert execution["trigger_type"] == "manual" and execution["trigger_by"] == key_id
        assert execution["state"] == "pending" and execution["task_uid"] == uid
        task = c.get(f"/v1/tasks/{execution['task_id']}")
        assert task.status_code == 200, task.text
        t = task.json()
        assert t["tenant_id"] == tenant and t["task_type"] == "SYNC" and t["priority"] == 70
        assert t["timeout_ms"] == 120_000 and t["input_payload"] == {"full": True}
        assert t["tags"] == ["sched"] and t["status"] == "QUEUED"

        # max_concurrent=1 and the first still pending: the second is recorded, not run.
        second = c.post(f"/v1/schedules/{uid}/trigger").json()
        assert second["state"] == "cancelled" and second["task_id"] is None
        assert "max_concurrent" in second["error_message"]

        history = c.get(f"/v1/schedules/{uid}/executions").json()
        assert [e["execution_uid"] for e in history["items"]] == [
            second["execution_uid"], execution["execution_uid"]]
        assert history["next_cursor"] is None
        only = c.get(f"/v1/schedules/{uid}/executions", params={"state": "cancelled"}).json()
        assert [e["execution_uid"] for e in only["items"]] == [second["execution_uid"]]
        assert c.get(f"/v1/schedules/{uid}/executions",
                     params={"trigger_type": "scheduled"}).json()["items"] == []
        # Pages of one, by cursor.
        page = c.get(f"/v1/schedules/{uid}/executions", params={"limit": 1}).json()
        assert page["items"][0]["execution_uid"] == second["execution_uid"]
        rest = c.get(f"/v1/schedules/{uid}/executions",
                     params={"limit": 1, "cursor": page["next_cursor"]}).json()
        assert rest["items"][0]["execution_uid"] == execution["execution_uid"]
        assert c.get(f"/v1/schedules/{uid}").json()["last_executed_at"] is not None


def test_tenant_isolation_on_every_schedule_route(server: Server) -> None:
    tenant_a, key_a = server.tenant()
    _tenant_b, key_b = server.tenant()
    with server.client(key_a) as a, server.client(key_b) as b:
        uid = a.post("/v1/schedules", json={"name": "secret-sched", "type": "T",
                                            "interval": 60}).json()["uid"]
        a.post(f"/v1/schedules/{uid}/trigger")
        missing = str(uuid.uuid4())
        probes: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
            ("GET", "/v1/schedules/{}", None, {}),
            ("PATCH", "/v1/schedules/{}", {"priority": 1}, {"If-Match": '"1"'}),
            ("DELETE", "/v1/schedules/{}", None, {}),
            ("POST", "/v1/schedules/{}/trigger", None, {}),
            ("GET", "/v1/schedules/{}/executions", None, {}),
        ]
        for method, template, body, headers in probes:
            for key in (uid, "secret-sched"):  # by uid and by A's name
                foreign = b.request(method, template.format(key), json=body, headers=headers)
                absent = b.request(method, template.format(missing), json=body,
                                   headers=headers)
                assert foreign.status_code == absent.status_code == 404, (template, foreign.text)
                assert foreign.json()["type"] == absent.json()["type"]
                assert foreign.json()["detail"].replace(key, "ID") == absent.json()[
                    "detail"].replace(missing, "ID")
                assert "secret-sched" not in foreign.text.replace(key, "ID")
        assert b.get("/v1/schedules").json()["items"] == []
        assert b.get("/v1/schedules", params={"tenant_id": tenant_a}).json()["items"] == []
        r = b.post("/v1/schedules", json={"name": "x", "type": "T", "interval": 60,
                                          "tenant_id": tenant_a})
        assert r.status_code == 422
        # B may use the same name in its own tenant.
        assert b.post("/v1/schedules", json={"name": "secret-sched", "type": "T",
                                             "interval": 60}).status_code == 201
        # A's schedule is untouched and has exactly its own one execution.
        assert a.get(f"/v1/schedules/{uid}").json()["version"] == 1
        assert len(a.get(f"/v1/schedules/{uid}/executions").json()["items"]) == 1
    with server.admin() as admin:  # an admin sees both tenants'
        names = [s["tenant_id"] for s in admin.get("/v1/schedules").json()["items"]
                 if s["name"] == "secret-sched"]
        assert tenant_a in names and len(names) >= 2
        assert admin.get(f"/v1/schedules/{uid}").status_code == 200


def test_a_name_equal_to_another_tenants_uid_names_the_own_schedule(server: Server) -> None:
    """A tenant key names its schedule by uid or by name: another tenant's schedule whose
    uid is that name reads as missing, so the key's own schedule of that name answers."""
    _, key_a = server.tenant()
    _, key_b = server.tenant()
    with server.client(key_a) as a, server.client(key_b) as b:
        uid_a = a.post("/v1/schedules", json={"name": "a", "type": "T", "interval": 60}
                       ).json()["uid"]
        own = b.post("/v1/schedules", json={"name": uid_a, "type": "T", "interval": 60})
        assert own.status_code == 201, own.text
        uid_b = own.json()["uid"]
        got = b.get(f"/v1/schedules/{uid_a}")
        assert got.status_code == 200, got.text
        assert got.json()["uid"] == uid_b
        patched = b.patch(f"/v1/schedules/{uid_a}", json={"priority": 7},
                          headers={"If-Match": '"1"'})
        assert patched.status_code == 200 and patched.json()["uid"] == uid_b
        assert b.post(f"/v1/schedules/{uid_a}/trigger").status_code == 201
        assert len(b.get(f"/v1/schedules/{uid_a}/executions").json()["items"]) == 1
        assert b.delete(f"/v1/schedules/{uid_a}").status_code == 204
        # A's schedule was never touched.
        mine = a.get(f"/v1/schedules/{uid_a}").json()
        assert mine["version"] == 1 and mine["priority"] != 7
        assert a.get(f"/v1/schedules/{uid_a}/executions").json()["items"] == []


def test_read_only_keys_cannot_change_schedules(server: Server) -> None:
    tenant, key = server.tenant()
    read_only = server.key(tenant, read_only=True)
    with server.client(key) as c, server.client(read_only["key"]) as ro:
        uid = c.post("/v1/schedules", json={"name": "ro", "type": "T", "interval": 60}
                     ).json()["uid"]
        assert ro.get(f"/v1/schedules/{uid}").status_code == 200
        assert ro.post("/v1/schedules", json={"name": "x", "type": "T", "interval": 60}
                       ).status_code == 403
        assert ro.post(f"/v1/schedules/{uid}/trigger").status_code == 403
        assert ro.delete(f"/v1/schedules/{uid}").status_code == 403


def test_every_schedule_mutation_is_audited(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key) as c:
        uid = c.post("/v1/schedules", json={"name": "aud", "type": "T", "interval": 60},
                     headers={"X-Request-ID": "sched-create"}).json()["uid"]
        assert c.post("/v1/schedules", json={"name": "aud", "type": "T", "interval": 60}
                      ).status_code == 409  # refused: no row
        c.patch(f"/v1/schedules/{uid}", json={"priority": 90}, headers={"If-Match": '"1"'})
        assert c.patch(f"/v1/schedules/{uid}", json={"priority": 91},
                       headers={"If-Match": '"1"'}).status_code == 412  # no row
        execution = c.post(f"/v1/schedules/{uid}/trigger").json()
        assert c.delete(f"/v1/schedules/{uid}").status_code == 204
    rows = _audit(server, resource_type="scheduledTask", tenant_id=tenant)
    assert [r["action"] for r in reversed(rows)] == ["created", "updated", "triggered",
                                                     "deleted"]
    assert {r["resource"]["identifier"] for r in rows} == {uid}
    created, updated, triggered, deleted = reversed(rows)
    assert created["request_id"] == "sched-create" and created["request_method"] == "POST"
    assert orjson.loads(created["diff_object"]["new_object"])["name"] == "aud"
    assert orjson.loads(updated["diff_object"]["old_object"])["priority"] == orjson.loads(
        created["diff_object"]["new_object"])["priority"]
    assert orjson.loads(updated["diff_object"]["new_object"])["priority"] == 90
    assert triggered["resource"]["data"] == {"execution_uid": execution["execution_uid"]}
    assert orjson.loads(triggered["diff_object"]["new_object"])["task_id"] == execution[
        "task_id"]
    assert deleted["diff_object"]["new_object"] is None
    assert orjson.loads(deleted["diff_object"]["old_object"])["version"] == 2
