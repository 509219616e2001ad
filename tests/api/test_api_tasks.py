"""Tasks over HTTP: create/replay/conflict, list filters and pagination, cancel, retry,
PATCH with If-Match, events, the idempotency race, SSE resume, problem documents."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.api.conftest import Server, read_sse


def _task(**fields: Any) -> dict[str, Any]:
    return {"task_type": "ECHO", "idempotency_key": uuid.uuid4().hex, **fields}


def test_create_replay_and_conflict(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key) as c:
        body = _task(priority=70, tags=["a"], input_payload={"x": 1}, max_total_cost="1.50")
        first = c.post("/v1/tasks", json=body)
        assert first.status_code == 201, first.text
        task = first.json()
        assert task["tenant_id"] == tenant and task["status"] == "QUEUED"
        assert task["max_total_cost"] == "1.50" and task["priority"] == 70
        assert first.headers["etag"] == '"1"'
        assert first.headers["location"] == f"/v1/tasks/{task['task_id']}"
        assert "idempotent-replayed" not in first.headers

        replay = c.post("/v1/tasks", json=body)
        assert replay.status_code == 200
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["task_id"] == task["task_id"]

        conflict = c.post("/v1/tasks", json={**body, "priority": 71})
        assert conflict.status_code == 409
        assert conflict.headers["content-type"] == "application/problem+json"
        problem = conflict.json()
        assert problem["status"] == 409 and problem["task_id"] == task["task_id"]
        assert problem["instance"] == conflict.headers["x-request-id"]

        got = c.get(f"/v1/tasks/{task['task_id']}")
        assert got.status_code == 200 and got.json() == task


def test_validation_problems_name_fields(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        r = c.post("/v1/tasks", json={
            "task_type": "ECHO", "priority": 101, "resource_hints": [{"sku_category": "X",
                                                                      "min_count": 0}],
            "bogus": 1,
        })
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        fields = {e["field"] for e in r.json()["errors"]}
        assert {"priority", "resource_hints[0].min_count", "bogus"} <= fields
        # Domain rules (past the schema) name their field too.
        r = c.post("/v1/tasks", json=_task(run_after="2030-01-01T00:00:00",
                                           constraints={"max_retries": -1}))
        assert r.status_code == 422
        fields = {e["field"] for e in r.json()["errors"]}
        assert fields == {"run_after", "constraints.max_retries"}
        # Text no database can store (PostgreSQL refuses NUL) is the caller's mistake.
        r = c.post("/v1/tasks", json=_task(input_payload={"a": ["ok", "nul\u0000"]}))
        assert r.status_code == 422 and "input_payload.a[1]" in r.text
        assert c.get("/v1/tasks", params={"task_type": "x\u0000"}).status_code == 422
        # An integer JSON cannot carry here (beyond 64 bits), anywhere in any body: a 422
        # naming it, never a 500 (a \u escape sends the body through the model, which keeps
        # such an integer as it is).
        big = b"108276620678037795504128"
        for path, body, field in (
            ("/v1/tasks", b'{"task_type": "\\u0041", "resource_hints": [{"sku_category": '
                          b'"X", "attributes": {"a": %s}}]}' % big,
             "resource_hints[0].attributes.a"),
            ("/v1/tasks", b'{"task_type": "\\u0041", "constraints": {"k": [1, -%s]}}' % big,
             "constraints.k[1]"),
            ("/v1/assets", b'{"sku_category": "X", "sku_code": "x.1", "attributes": {"a": %s}}'
             % big, "attributes.a"),
        ):
            r = c.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422 and field in r.text, (path, r.text)
        # Not JSON at all.
        r = c.post("/v1/tasks", content=b"{nope", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["type"].endswith("/validation")


def test_list_filters_and_cursor(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        made = [c.post("/v1/tasks", json=_task(task_type="LIST", tags=[f"n{i % 2}"],
                                               project_id="p1")).json() for i in range(7)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"task_type": "LIST", "limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/v1/tasks", params=params).json()
            seen.extend(t["task_id"] for t in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert sorted(seen) == sorted(t["task_id"] for t in made)
        assert len(seen) == len(set(seen))
        tagged = c.get("/v1/tasks", params={"tag": "n0", "task_type": "LIST"}).json()["items"]
        assert len(tagged) == 4
        assert c.get("/v1/tasks", params={"status": "SUCCESS", "task_type": "LIST"}).json()[
            "items"] == []
        assert c.get("/v1/tasks", params={"cursor": "garbage!"}).status_code == 422
        assert c.get("/v1/tasks", params={"status": "NOPE"}).status_code == 422


def test_cancel_retry_patch_and_events(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        task = c.post("/v1/tasks", json=_task()).json()
        tid = task["task_id"]
        # PATCH needs If-Match; a stale version is 412.
        assert c.patch(f"/v1/tasks/{tid}", json={"priority": 5}).status_code == 428
        ok = c.patch(f"/v1/tasks/{tid}", json={"priority": 5}, headers={"If-Match": '"1"'})
        assert ok.status_code == 200 and ok.json()["priority"] == 5
        assert ok.headers["etag"] == '"2"'
        stale = c.patch(f"/v1/tasks/{tid}", json={"priority": 6}, headers={"If-Match": '"1"'})
        assert stale.status_code == 412 and stale.json()["current_version"] == 2
        assert c.patch(f"/v1/tasks/{tid}", json={"priority": None},
                       headers={"If-Match": '"2"'}).status_code == 422
        assert c.patch(f"/v1/tasks/{tid}", json={"status": "SUCCESS"},
                       headers={"If-Match": '"2"'}).status_code == 422

        # Retry is only for finished tasks.
        assert c.post(f"/v1/tasks/{tid}/retry").status_code == 409
        cancelled = c.post(f"/v1/tasks/{tid}/cancel", json={"reason": "no longer needed"})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
        assert c.post(f"/v1/tasks/{tid}/cancel").status_code == 409
        retried = c.post(f"/v1/tasks/{tid}/retry")
        assert retried.status_code == 200 and retried.json()["status"] == "QUEUED"

        events = c.get(f"/v1/tasks/{tid}/events").json()
        types = [e["event_type"] for e in events["items"]]
        assert types == ["created", "queued", "updated", "cancelled", "queued"]
        # After a cursor, PostgreSQL shows an event once no older transaction can still
        # commit (other sessions on the server may hold that back for a moment).
        deadline = time.monotonic() + 20
        while True:
            after = c.get(f"/v1/tasks/{tid}/events",
                          params={"after": events["items"][2]["cursor"]}).json()
            if len(after["items"]) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [e["event_type"] for e in after["items"]] == ["cancelled", "queued"]
        assert c.get(f"/v1/tasks/{uuid.uuid4()}").status_code == 404
        assert c.get("/v1/tasks/not-a-uuid").status_code == 404


def test_idempotency_race_50_concurrent_posts(server: Server) -> None:
    _, key = server.tenant()
    body = _task(input_payload={"race": True})
    barrier = threading.Barrier(50)

    def post(_: int) -> httpx.Response:
        with server.client(key) as c:
            barrier.wait()
            return c.post("/v1/tasks", json=body)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(post, range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 49 + [201], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["task_id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 49
    with server.client(key) as c:
        listed = c.get("/v1/tasks", params={"limit": 500}).json()["items"]
        assert len([t for t in listed if t["idempotency_key"] == body["idempotency_key"]]) == 1


def test_concurrent_creates_fail_alone(server: Server) -> None:
    """Concurrent creates are written together; one bad request must not sink the others."""
    _, key = server.tenant()
    bodies = [_task(input_payload={"i": i}) for i in range(20)]
    bodies[7] = _task(depends_on=[str(uuid.uuid4())])  # unknown dependency: 422
    bodies[13] = {**bodies[3], "priority": 1}  # bodies[3]'s key, another body: 409 or 201
    barrier = threading.Barrier(len(bodies))

    def post(body: dict[str, Any]) -> httpx.Response:
        with server.client(key) as c:
            barrier.wait()
            return c.post("/v1/tasks", json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(post, bodies))
    assert responses[7].status_code == 422
    assert sorted([responses[3].status_code, responses[13].status_code]) == [201, 409]
    others = [r for i, r in enumerate(responses) if i not in (3, 7, 13)]
    assert {r.status_code for r in others} == {201}
    with server.client(key) as c:
        listed = c.get("/v1/tasks", params={"limit": 500}).json()["items"]
    assert len(listed) == 18


def test_sse_stream_resumes_with_last_event_id(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        tid = c.post("/v1/tasks", json=_task()).json()["task_id"]
        with c.stream("GET", f"/v1/tasks/{tid}/events/stream") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            first = read_sse(r, stop_after=2)
        assert [e["event"] for e in first] == ["created", "queued"]
        last_id = first[-1]["id"]
        c.post(f"/v1/tasks/{tid}/cancel")
        with c.stream("GET", f"/v1/tasks/{tid}/events/stream",
                      headers={"Last-Event-ID": last_id}) as r:
            rest = read_sse(r)
        assert [e["event"] for e in rest] == ["cancelled", "end"]
        assert rest[0]["id"] != last_id
        bad = c.get(f"/v1/tasks/{tid}/events/stream", headers={"Last-Event-ID": "x.y"})
        assert bad.status_code == 422


def test_problems_for_auth_and_unknown_routes(server: Server) -> None:
    with server.client() as anonymous:
        r = anonymous.get("/v1/tasks")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["status"] == 401
        assert anonymous.get("/v1/tasks", headers={"Authorization": "Bearer nope"}
                             ).status_code == 401
    with server.admin() as c:
        r = c.get("/v1/nothing-here")
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        r = c.get("/v1/tasks", headers={"X-Request-ID": "my-request-42"})
        assert r.headers["x-request-id"] == "my-request-42"
        # An admin must say which tenant a task is for.
        r = c.post("/v1/tasks", json=_task())
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tenant_id"
        r = c.post("/v1/tasks", json=_task(tenant_id="no-such-tenant"))
        assert r.status_code == 422
