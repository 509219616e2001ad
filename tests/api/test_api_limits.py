"""Per-tenant limits: the request-rate token bucket (429 + Retry-After) and the cap on
queued + running tasks; on PostgreSQL both are shared by every API process."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.api.conftest import Server, start_server, stop_server


def test_rate_limit_answers_429_with_retry_after(server: Server) -> None:
    # One token per ~17 minutes: the burst is all there is during this test.
    _, key = server.tenant(rate_limit_per_second=0.001, rate_limit_burst=3)
    _, other = server.tenant()
    with server.client(key) as c, server.client(other) as o:
        assert [c.get("/v1/tasks").status_code for _ in range(3)] == [200, 200, 200]
        limited = c.get("/v1/tasks")
        assert limited.status_code == 429
        assert limited.json()["type"].endswith("/rate-limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert o.get("/v1/tasks").status_code == 200  # other tenants are not affected


def test_rate_limit_is_shared_by_api_processes(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if server.database_url.startswith("sqlite"):
        pytest.skip("on SQLite (one machine) each process keeps its own bucket, as documented")
    second = start_server(server.database_url, tmp_path_factory.mktemp("log2") / "s.log")
    try:
        _, key = server.tenant(rate_limit_per_second=0.001, rate_limit_burst=4)
        with server.client(key) as one, second.client(key) as two:
            codes = [c.get("/v1/tasks").status_code for c in (one, two, one, two)]
            assert codes == [200] * 4
            assert one.get("/v1/tasks").status_code == 429
            assert two.get("/v1/tasks").status_code == 429
    finally:
        stop_server(second)


def test_active_task_cap(server: Server) -> None:
    _, key = server.tenant(max_active_tasks=2)
    with server.client(key) as c:
        first = c.post("/v1/tasks", json={"task_type": "X", "idempotency_key": "one"})
        assert first.status_code == 201
        assert c.post("/v1/tasks", json={"task_type": "X"}).status_code == 201
        refused = c.post("/v1/tasks", json={"task_type": "X"})
        assert refused.status_code == 429 and refused.json()["type"].endswith("/quota-exceeded")
        # A replay creates nothing, so the cap does not refuse it.
        replay = c.post("/v1/tasks", json={"task_type": "X", "idempotency_key": "one"})
        assert replay.status_code == 200
        # A batch over the cap is refused whole.
        batch = c.post("/v1/batches", json={"title": "b", "tasks": [{"task_type": "X"}] * 2})
        assert batch.status_code == 429
        assert c.get("/v1/batches").json()["items"] == []
        assert len(c.get("/v1/tasks").json()["items"]) == 2
        # Delayed tasks do not count (they are PENDING), finished ones neither.
        later = c.post("/v1/tasks", json={"task_type": "X", "run_after": "2999-01-01T00:00:00Z"})
        assert later.status_code == 201 and later.json()["status"] == "PENDING"
        c.post(f"/v1/tasks/{first.json()['task_id']}/cancel")
        assert c.post("/v1/tasks", json={"task_type": "X"}).status_code == 201


def test_active_task_cap_holds_under_concurrency(server: Server) -> None:
    _, key = server.tenant(max_active_tasks=3)
    barrier = threading.Barrier(12)

    def post(_: int) -> int:
        with server.client(key) as c:
            barrier.wait()
            return c.post("/v1/tasks", json={"task_type": "X"}).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = sorted(pool.map(post, range(12)))
    assert codes == [201] * 3 + [429] * 9
    with server.client(key) as c:
        assert len(c.get("/v1/tasks", params={"status": "QUEUED"}).json()["items"]) == 3


def test_limits_are_validated(server: Server) -> None:
    with server.admin() as admin:
        r = admin.post("/v1/tenants", json={"tenant_id": "bad", "rate_limit_burst": 0,
                                            "max_active_tasks": -1})
        assert r.status_code == 422
        assert {e["field"] for e in r.json()["errors"]} == {"rate_limit_burst",
                                                            "max_active_tasks"}
