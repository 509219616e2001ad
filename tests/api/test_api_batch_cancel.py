"""POST /v1/batches/{id}/cancel is one transaction (SQLite and PostgreSQL, over HTTP): a
failure half-way leaves the batch, its tasks, their events and the audit log as they were;
a cancel racing claims never leaves a task both claimed and cancelled, or still queued."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import Server


def _batch(c: httpx.Client, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    r = c.post("/v1/batches", json={"title": "cancel me", "tasks": tasks})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def _claim(c: httpx.Client, task_type: str, n: int = 1) -> list[dict[str, Any]]:
    r = c.post("/v1/workers/claim", json={"task_types": [task_type], "max_tasks": n})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _state(c: httpx.Client, ids: list[str]) -> list[tuple[Any, ...]]:
    out = []
    for task_id in ids:
        t = c.get(f"/v1/tasks/{task_id}").json()
        events = c.get(f"/v1/tasks/{task_id}/events").json()["items"]
        out.append((t["status"], t["cancel_requested"], t["task_version"], len(events)))
    return out


def _batch_audits(server: Server, batch_id: str) -> list[dict[str, Any]]:
    with server.admin() as admin:
        r = admin.get("/v1/audit", params={"resource_type": "batch", "action": "cancelled",
                                           "resource_id": batch_id})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


@contextlib.contextmanager
def failing_cancel_event(database_url: str, task_id: str) -> Iterator[None]:
    """A database trigger refusing the `cancelled` event of one task: a failure in the middle
    of the cancel's transaction (after the task updates of the statement before)."""
    if database_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=60)
        conn.execute(
            f"CREATE TRIGGER inject_failure BEFORE INSERT ON task_events "
            f"WHEN NEW.event_type = 'cancelled' AND NEW.task_id = '{task_id}' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
        conn.commit()
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER inject_failure")
            conn.commit()
            conn.close()
        return
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as pg:
        pg.execute(
            "CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.event_type = 'cancelled' AND NEW.task_id = '{task_id}' THEN "
            "RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$")
        pg.execute("CREATE TRIGGER inject_failure BEFORE INSERT ON task_events "
                   "FOR EACH ROW EXECUTE FUNCTION inject_failure()")
        try:
            yield
        finally:
            pg.execute("DROP TRIGGER inject_failure ON task_events")
            pg.execute("DROP FUNCTION inject_failure()")


def test_batch_cancel_is_all_or_nothing(server: Server) -> None:
    _, key = server.tenant()
    kind = f"BC-{uuid.uuid4().hex[:8]}"
    with server.client(key) as c:
        batch = _batch(c, [
            {"ref": "run", "task_type": kind, "priority": 90},
            {"ref": "done", "task_type": kind, "priority": 80},
            {"ref": "queued", "task_type": kind, "priority": 10},
            {"ref": "after", "task_type": kind, "depends_on": ["queued"]},
        ])
        batch_id = batch["batch_id"]
        ids = {t["ref"]: t["task_id"] for t in batch["tasks"]}
        (running,) = _claim(c, kind)
        (done,) = _claim(c, kind)
        assert [running["task"]["task_id"], done["task"]["task_id"]] == [ids["run"], ids["done"]]
        assert c.post(f"/v1/tasks/{ids['done']}/complete",
                      json={"claim_token": done["claim_token"]}).status_code == 200
        order = [ids[r] for r in ("run", "done", "queued", "after")]
        before = _state(c, order)
        batch_before = c.get(f"/v1/batches/{batch_id}").json()

        # The last cancelled event of the transaction fails: nothing at all may remain.
        last = max(ids["queued"], ids["after"])
        with failing_cancel_event(server.database_url, last):
            r = c.post(f"/v1/batches/{batch_id}/cancel")
            assert r.status_code >= 500, r.text
            assert r.headers["content-type"] == "application/problem+json"
        assert _state(c, order) == before
        assert c.get(f"/v1/batches/{batch_id}").json() == batch_before
        assert _batch_audits(server, batch_id) == []
        hb = c.post(f"/v1/tasks/{ids['run']}/heartbeat",
                    json={"claim_token": running["claim_token"]})
        assert hb.json() == {"cancel_requested": False, "revoked_lease_ids": []}

        r = c.post(f"/v1/batches/{batch_id}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["cancelled_at"]  # its status stays "running" while one task runs
        after = _state(c, order)
        assert [(s[0], s[1]) for s in after] == [
            ("RUNNING", True), ("SUCCESS", False), ("CANCELLED", False), ("CANCELLED", False)]
        assert [s[3] - b[3] for s, b in zip(after, before, strict=True)] == [1, 0, 1, 1]
        hb = c.post(f"/v1/tasks/{ids['run']}/heartbeat",
                    json={"claim_token": running["claim_token"]})
        assert hb.json() == {"cancel_requested": True, "revoked_lease_ids": []}
        events = c.get(f"/v1/tasks/{ids['queued']}/events").json()["items"]
        assert events[-1]["event_type"] == "cancelled"
        assert events[-1]["payload"]["batch_id"] == batch_id
        (audit,) = _batch_audits(server, batch_id)
        assert audit["resource"]["identifier"] == batch_id

        # Again: nothing left to cancel, still one consistent answer, one more audit row.
        assert c.post(f"/v1/batches/{batch_id}/cancel").status_code == 200
        assert [(s[0], s[1]) for s in _state(c, order)] == [(s[0], s[1]) for s in after]
        assert len(_batch_audits(server, batch_id)) == 2


def test_batch_cancel_racing_claims(server: Server) -> None:
    _, key = server.tenant()
    for _round in range(3):
        kind = f"BR-{uuid.uuid4().hex[:8]}"
        with server.client(key) as c, server.client(key) as worker:
            batch = _batch(c, [{"task_type": kind} for _ in range(40)])
            ids = {t["task_id"] for t in batch["tasks"]}
            claimed: dict[str, str] = {}
            stop = threading.Event()

            def claim_loop(worker: httpx.Client = worker, kind: str = kind,
                           claimed: dict[str, str] = claimed,
                           stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    for item in _claim(worker, kind, 3):
                        claimed[item["task"]["task_id"]] = item["claim_token"]

            thread = threading.Thread(target=claim_loop, daemon=True)
            thread.start()
            while len(claimed) < 5:  # the race: cancel while claims are going on
                time.sleep(0.001)
            r = c.post(f"/v1/batches/{batch['batch_id']}/cancel")
            assert r.status_code == 200, r.text
            stop.set()
            thread.join(timeout=30)
            for task_id in ids:
                t = c.get(f"/v1/tasks/{task_id}").json()
                if task_id in claimed:
                    assert (t["status"], t["cancel_requested"]) == ("RUNNING", True), t
                else:
                    assert t["status"] == "CANCELLED", t
            assert len(claimed) >= 5


@pytest.mark.parametrize("database", ["postgres"], indirect=True)  # SQLite: one writer at a time
def test_batch_cancel_racing_a_failing_dependency_never_deadlocks(server: Server) -> None:
    """A batch's task b depends on a (outside the batch), and c (outside too) on a and b.
    The batch is cancelled while a's run fails: the cancel cascades from b to c while the
    failure cascades to b and c. They used to lock b and c in different orders and
    PostgreSQL aborted one ("deadlock detected"): a 5xx for the cancel, or the worker's
    result refused."""
    import psycopg

    from tests.conformance.test_graph_races import waiting_on
    from tests.conftest import wait_until

    _, key = server.tenant()
    kind = f"BD-{uuid.uuid4().hex[:8]}"
    with server.client(key) as c, server.client(key) as worker:
        a = c.post("/v1/tasks", json={"task_type": kind}).json()["task_id"]
        batch = _batch(c, [{"ref": "b", "task_type": "NEXT", "depends_on": [a]}])
        b = batch["tasks"][0]["task_id"]
        c_id = "00000000-0000-4000-8000-" + uuid.uuid4().hex[:12]  # below b
        r = c.post("/v1/tasks", json={"task_id": c_id, "task_type": "NEXT",
                                      "depends_on": [a, b]})
        assert r.status_code == 201, r.text
        # b's row stored after c's: a table scan meets c first, as the task_id order does.
        r = c.patch(f"/v1/tasks/{b}", json={"priority": 51}, headers={"If-Match": '"1"'})
        assert r.status_code == 200, r.text
        (claimed,) = _claim(worker, kind)
        holder = psycopg.connect(server.database_url)
        watcher = psycopg.connect(server.database_url, autocommit=True)
        answers: list[int] = []
        try:
            holder.execute("SELECT 1 FROM tasks WHERE task_id = %s FOR UPDATE", (b,))
            pid = holder.info.backend_pid

            def cancel() -> None:
                answers.append(c.post(f"/v1/batches/{batch['batch_id']}/cancel").status_code)

            def fail() -> None:
                answers.append(worker.post(f"/v1/tasks/{a}/fail", json={
                    "claim_token": claimed["claim_token"], "kind": "failed",
                    "code": "HARD"}).status_code)

            threads = [threading.Thread(target=cancel)]
            threads[0].start()
            assert wait_until(lambda: waiting_on(watcher, pid) >= 1, 10.0)
            threads.append(threading.Thread(target=fail))
            threads[1].start()
            assert wait_until(lambda: waiting_on(watcher, pid) >= 2, 10.0)
            holder.rollback()
            for t in threads:
                t.join(30.0)
        finally:
            holder.close()
            watcher.close()
        assert answers == [200, 200]
        assert c.get(f"/v1/tasks/{a}").json()["status"] == "FAILED"
        for task_id in (b, c_id):
            assert c.get(f"/v1/tasks/{task_id}").json()["status"] == "CANCELLED"
