"""Batches (seed 004): local refs as a DAG, cycles named, counts, progress, derived status."""

from __future__ import annotations

from tests.api.conftest import Server


def test_batch_with_refs_counts_and_cancel(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        r = c.post("/v1/batches", json={
            "title": "render", "metadata": {"source": "test"},
            "tasks": [
                {"ref": "fetch", "task_type": "FETCH"},
                {"ref": "render", "task_type": "RENDER", "depends_on": ["fetch"]},
                {"ref": "notify", "task_type": "NOTIFY", "depends_on": ["render", "fetch"]},
            ],
        })
        assert r.status_code == 201, r.text
        batch = r.json()
        assert batch["total_count"] == 3 and batch["status"] == "pending"
        assert batch["progress"] == 0 and batch["metadata"] == {"source": "test"}
        ids = {t["ref"]: t["task_id"] for t in batch["tasks"]}
        render = c.get(f"/v1/tasks/{ids['render']}").json()
        assert render["depends_on"] == [ids["fetch"]] and render["status"] == "PENDING"
        assert render["batch_id"] == batch["batch_id"] and render["channel"] == "batch"
        listed = c.get("/v1/tasks", params={"batch_id": batch["batch_id"]}).json()["items"]
        assert len(listed) == 3

        cancelled = c.post(f"/v1/batches/{batch['batch_id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["cancelled_count"] == 3
        assert cancelled["progress"] == 100 and cancelled["cancelled_at"]
        again = c.get(f"/v1/batches/{batch['batch_id']}").json()
        assert again["status"] == "cancelled" and again["completed_count"] == 0
        assert [b["batch_id"] for b in c.get("/v1/batches").json()["items"]] == [
            batch["batch_id"]]


def test_batch_cycle_and_bad_refs_are_422(server: Server) -> None:
    _, key = server.tenant()
    with server.client(key) as c:
        r = c.post("/v1/batches", json={"title": "loop", "tasks": [
            {"ref": "a", "task_type": "X", "depends_on": ["c"]},
            {"ref": "b", "task_type": "X", "depends_on": ["a"]},
            {"ref": "c", "task_type": "X", "depends_on": ["b"]},
        ]})
        assert r.status_code == 422
        rule = r.json()["errors"][0]["rule"]
        assert "cycle" in rule and all(name in rule for name in ("a", "b", "c"))
        r = c.post("/v1/batches", json={"title": "bad", "tasks": [
            {"ref": "a", "task_type": "X"},
            {"ref": "a", "task_type": "X", "depends_on": ["zzz"]},
        ]})
        assert r.status_code == 422
        assert {e["field"] for e in r.json()["errors"]} == {"tasks[1].ref",
                                                           "tasks[1].depends_on[0]"}
        r = c.post("/v1/batches", json={"title": "bad", "tasks": [
            {"task_type": "X"}, {"task_type": "X", "priority": 500},
            {"task_type": "X", "constraints": {"max_retries": "many"}},
        ]})
        assert r.status_code == 422
        assert [e["field"] for e in r.json()["errors"]] == ["tasks[1].priority"]
        r = c.post("/v1/batches", json={"title": "bad", "tasks": [
            {"task_type": "X"}, {"task_type": "X", "constraints": {"max_retries": "many"}},
        ]})
        assert [e["field"] for e in r.json()["errors"]] == ["tasks[1].constraints.max_retries"]
        # Nothing of a rejected batch exists.
        assert c.get("/v1/tasks").json()["items"] == []
        assert c.get("/v1/batches").json()["items"] == []
