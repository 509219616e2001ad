"""POST /v1/tasks is answered by the request-context middleware, not FastAPI's router: the
same contract must hold there (problems, request ids, metrics label, other methods)."""

from __future__ import annotations

import uuid

from tests.api.conftest import Server


def test_fast_route_problems_request_ids_and_metrics(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        ok = c.post("/v1/tasks", json={"task_type": "ECHO"}, headers={"X-Request-ID": "fast-1"})
        assert ok.status_code == 201 and ok.headers["x-request-id"] == "fast-1"

        bad_json = c.post("/v1/tasks", content=b"{not json",
                          headers={"Content-Type": "application/json"})
        assert bad_json.status_code == 422
        assert bad_json.headers["content-type"] == "application/problem+json"
        problem = bad_json.json()
        assert problem["instance"] == bad_json.headers["x-request-id"] and problem["errors"]

        bad_field = c.post("/v1/tasks", json={"task_type": "ECHO", "priority": 1000})
        assert bad_field.status_code == 422
        assert any("priority" in str(e.get("field", e.get("loc", "")))
                   for e in bad_field.json()["errors"]), bad_field.text

        # Generated request ids are distinct.
        ids = {c.post("/v1/tasks", json={"task_type": "ECHO"}).headers["x-request-id"]
               for _ in range(3)}
        assert len(ids) == 3

    with server.client(None) as anonymous:
        unauthorized = anonymous.post("/v1/tasks", json={"task_type": "ECHO"})
        assert unauthorized.status_code == 401
        assert unauthorized.json()["type"].endswith("unauthorized")

    with server.client(key) as c:
        # Only POST takes the fast route; other methods still go through the router.
        assert c.get("/v1/tasks").status_code == 200
        assert c.put("/v1/tasks", json={}).status_code == 405
        metrics = c.get("/metrics").text
        assert 'route="/v1/tasks",status="201"' in metrics
        assert 'route="/v1/tasks",status="422"' in metrics
        assert uuid.UUID(ok.json()["task_id"]).version == 7  # task ids are time-ordered (domain/ids.py)


def test_batched_creates_audit_each_new_task_once_with_its_state(server: Server) -> None:
    """Concurrent creates are written in groups (create_batcher.py); each new task gets one
    audit row whose new object is the task as stored, a replay gets none, and a task with a
    dependency records the status its dependency gave it."""
    from concurrent.futures import ThreadPoolExecutor

    import orjson

    tenant, key = server.tenant()
    with server.client(key) as c:
        parent = c.post("/v1/tasks", json={"task_type": "PARENT"}).json()["task_id"]
    bodies = [{"task_type": "ECHO", "priority": i % 10, "tags": [f"t{i % 10}"],
               "input_payload": {"i": i % 10}, "idempotency_key": f"k{i % 10}"}
              for i in range(30)]  # each body three times: one create, two replays
    bodies.append({"task_type": "CHILD", "depends_on": [parent]})

    def post(body: dict[str, object]) -> tuple[int, dict[str, object]]:
        with server.client(key) as c:
            r = c.post("/v1/tasks", json=body)
            return r.status_code, r.json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, bodies))
    statuses = [s for s, _ in answers]
    assert statuses.count(201) == 11 and statuses.count(200) == 20, statuses
    created = {str(t["task_id"]) for s, t in answers if s == 201}

    with server.admin() as admin:
        rows = admin.get("/v1/audit", params={"tenant_id": tenant, "resource_type": "task",
                                               "limit": 1000}).json()["items"]
    by_task: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_task.setdefault(row["resource"]["identifier"], []).append(row)
    assert set(by_task) == created | {parent}
    with server.client(key) as c:
        for task_id in created:
            assert len(by_task[task_id]) == 1
            new = orjson.loads(by_task[task_id][0]["diff_object"]["new_object"])
            stored = c.get(f"/v1/tasks/{task_id}").json()
            for name in ("task_id", "tenant_id", "status", "priority", "tags", "input_payload",
                         "idempotency_key", "depends_on", "task_version", "queued_at"):
                assert (new[name] is None) == (stored[name] is None), name
                if name != "queued_at":
                    assert new[name] == stored[name], name
            if stored["task_type"] == "CHILD":
                assert new["status"] == stored["status"] == "PENDING"


def test_plain_create_bodies_skip_the_model_only_when_it_would_agree() -> None:
    """POST /v1/tasks parses common bodies without TaskOrderIn; the fields must be what the
    model gives, and anything the model would refuse (or normalise) must go through it."""
    import orjson

    from creep.api.routes.tasks import TASK_ORDER_IN, plain_order_fields
    from creep.domain.task_spec import Limits

    same = [
        {"task_type": "ECHO"},
        {"task_type": "BENCH", "priority": 60, "tags": ["bench"], "input_payload": {"n": 1}},
        {"task_type": "A", "tenant_id": "t1", "env": "prod", "idempotency_key": "k",
         "description": None, "timeout_ms": 5, "input_payload": [1, 2.5, "ü", None]},
    ]
    for body in same:
        raw = orjson.dumps(body)
        assert plain_order_fields(raw, Limits()) == TASK_ORDER_IN.validate_json(raw).fields()
    to_model = [
        {"task_type": "A", "idempotency_key": ""},  # the model's min_length
        {"task_type": "A", "priority": 5.0},  # the model coerces
        {"task_type": "A", "input_payload": "nul\u0000"},  # unstorable text
        {"task_type": "A", "tags": [""]},  # the domain's rule, with its message
        {"task_type": "A", "unknown": 1},
        {"task_type": " "},
        ["not", "an", "object"],
    ]
    for bad in to_model:
        assert plain_order_fields(orjson.dumps(bad), Limits()) is None
    assert plain_order_fields(b"{not json", Limits()) is None
    assert plain_order_fields(b'{"task_type": "A", "input_payload": "\\ud800"}', Limits()) is None


def test_plain_orders_are_checked_once_and_built_as_the_domain_would() -> None:
    """The route builds a plain order's spec from plain_order's answer (fast_build), without
    running the fast check a second time: the spec must equal validate_task_spec's."""
    from datetime import UTC, datetime

    import orjson

    from creep.api.routes.tasks import plain_order
    from creep.domain import task_spec
    from creep.domain.task_spec import Limits, fast_build, validate_task_spec

    body = {"task_type": "BENCH", "priority": 60, "tags": ["bench"], "input_payload": {"n": 1},
            "tenant_id": "t1", "idempotency_key": "k1", "correlation_id": "c1"}
    plain = plain_order(orjson.dumps(body), Limits())
    assert plain is not None
    fields, payload_json = plain
    calls = 0
    real = task_spec.fast_check

    def counting(*args: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    task_spec.fast_check = counting  # type: ignore[assignment]
    try:
        built = fast_build(fields, payload_json, Limits(), False)
    finally:
        task_spec.fast_check = real
    assert calls == 0
    full = validate_task_spec(dict(body), now=datetime.now(UTC), limits=Limits(), traced=False)
    for name in full.__dataclass_fields__:
        if name != "task_id":
            assert getattr(built, name) == getattr(full, name), name
