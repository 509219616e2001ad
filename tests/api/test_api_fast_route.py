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
