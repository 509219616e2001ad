"""Task retention seen through the REST API (an in-process app on an injected clock, both
backends): what the sweep keeps and what it leaves behind."""

from __future__ import annotations

from typing import Any

import pytest

from creep import Creep, FrozenClock, TaskContext
from tests.api.inprocess import ADMIN, TestClient


def _purge_after(app: Creep, clock: FrozenClock, days: int) -> None:
    """Runs the built-in retention jobs `days` later (creep.retention.tasks: 30 days)."""
    sch = app.scheduler(holder_id="R")
    sch.run_once()  # installs the built-in schedules
    clock.advance(days=days)
    sch.run_once()


def test_retention_keeps_the_finished_tasks_of_a_batch_still_running(
    app: Creep, api: TestClient, clock: FrozenClock
) -> None:
    """A batch's counts and progress are read from its tasks. The sweep deleted a batch's
    tasks that finished 30 days ago while another of its tasks was still queued: the batch
    went back from `running`, 1 of 2 completed, 50 % to `pending`, 0 completed, 0 %."""

    @app.handler("DONE")
    def done(ctx: TaskContext) -> Any:
        return {"ok": True}

    r = api.post("/v1/batches", headers=ADMIN, json={
        "title": "b", "tenant_id": "acme",
        "tasks": [{"task_type": "DONE"}, {"task_type": "LATER"}]})
    assert r.status_code == 201, r.text
    batch_id = r.json()["batch_id"]
    alone = app.submit(task_type="DONE", tenant_id="acme")  # in no batch: purged as before
    app.run_worker(burst=True, install_signals=False)
    before = api.get(f"/v1/batches/{batch_id}", headers=ADMIN).json()
    assert (before["status"], before["completed_count"], before["progress"]) == (
        "running", 1, 50)

    _purge_after(app, clock, days=31)
    after = api.get(f"/v1/batches/{batch_id}", headers=ADMIN).json()
    assert {k: after[k] for k in ("status", "total_count", "completed_count", "progress")} == {
        "status": "running", "total_count": 2, "completed_count": 1, "progress": 50}
    assert api.get(f"/v1/tasks/{alone.task_id}", headers=ADMIN).status_code == 404


def test_a_task_id_whose_task_retention_deleted_is_refused_over_rest(
    app: Creep, api: TestClient, clock: FrozenClock
) -> None:
    """POST /v1/tasks and POST /v1/batches with the task_id of a task that retention deleted
    while its ledger entries stay: 409, nothing written (before: a new task that inherited
    the old one's costs)."""
    import uuid
    from decimal import Decimal

    @app.handler("SPEND")
    def spend(ctx: TaskContext) -> Any:
        ctx.charge(Decimal("8"))
        return {"ok": True}

    task_id = str(uuid.uuid4())
    r = api.post("/v1/tasks", headers=ADMIN, json={
        "task_type": "SPEND", "tenant_id": "acme", "task_id": task_id, "max_total_cost": "10"})
    assert r.status_code == 201, r.text
    app.run_worker(burst=True, install_signals=False)
    _purge_after(app, clock, days=31)
    assert api.get(f"/v1/tasks/{task_id}", headers=ADMIN).status_code == 404

    r = api.post("/v1/tasks", headers=ADMIN, json={
        "task_type": "SPEND", "tenant_id": "acme", "task_id": task_id, "max_total_cost": "10"})
    assert r.status_code == 409, r.text
    assert "retention deleted" in r.json()["detail"]
    r = api.post("/v1/batches", headers=ADMIN, json={
        "title": "again", "tenant_id": "acme",
        "tasks": [{"task_type": "SPEND"}, {"task_type": "SPEND", "task_id": task_id}]})
    assert r.status_code == 409, r.text
    assert api.get("/v1/tasks", headers=ADMIN, params={"tenant_id": "acme"}).json()[
        "items"] == []
    # Ids drawn by the server are never refused.
    r = api.post("/v1/batches", headers=ADMIN, json={
        "title": "new", "tenant_id": "acme", "tasks": [{"task_type": "SPEND"}]})
    assert r.status_code == 201, r.text


def test_a_batch_whose_tasks_retention_deleted_goes_with_them(
    app: Creep, api: TestClient, clock: FrozenClock
) -> None:
    """Every task of a completed batch was deleted by retention, the batch row stayed: GET
    /v1/batches/{id} then answered `pending`, 0 of 2 completed, 0 % for a batch that had
    completed. It goes with its last task (404), as its tasks do."""

    @app.handler("DONE")
    def done(ctx: TaskContext) -> Any:
        return {"ok": True}

    r = api.post("/v1/batches", headers=ADMIN, json={
        "title": "b", "tenant_id": "acme", "tasks": [{"task_type": "DONE"}] * 2})
    assert r.status_code == 201, r.text
    batch_id = r.json()["batch_id"]
    app.run_worker(burst=True, install_signals=False)
    assert api.get(f"/v1/batches/{batch_id}", headers=ADMIN).json()["status"] == "completed"

    _purge_after(app, clock, days=31)
    got = api.get(f"/v1/batches/{batch_id}", headers=ADMIN)
    assert got.status_code == 404, got.json()
    listed = api.get("/v1/batches", headers=ADMIN, params={"tenant_id": "acme"}).json()
    assert [b["batch_id"] for b in listed["items"]] == []


def _batch_counts(api: TestClient, batch_id: str) -> dict[str, Any]:
    got = api.get(f"/v1/batches/{batch_id}", headers=ADMIN)
    assert got.status_code == 200, got.text
    return {k: got.json()[k] for k in (
        "status", "total_count", "completed_count", "cancelled_count", "progress")}


def _batch_finished_apart(app: Creep, api: TestClient, clock: FrozenClock) -> tuple[str, str]:
    """A batch of two: one task succeeded at T0, the other was cancelled 20 days later (its
    id is returned with the batch's)."""

    @app.handler("DONE")
    def done(ctx: TaskContext) -> Any:
        return {"ok": True}

    r = api.post("/v1/batches", headers=ADMIN, json={
        "title": "b", "tenant_id": "acme",
        "tasks": [{"task_type": "DONE"}, {"task_type": "LATER", "ref": "later"}]})
    assert r.status_code == 201, r.text
    batch_id = r.json()["batch_id"]
    [later] = [t["task_id"] for t in r.json()["tasks"] if t["ref"] == "later"]
    app.run_worker(burst=True, install_signals=False)
    clock.advance(days=20)
    app.cancel(later)
    return batch_id, later


def test_retention_keeps_a_finished_batch_whole_until_all_its_tasks_are_old(
    app: Creep, api: TestClient, clock: FrozenClock
) -> None:
    """A finished batch whose tasks finished 20 days apart: 31 days after the first, the
    sweep deleted that one alone, and the batch's counts changed under it (2 tasks, 1
    completed, 1 cancelled became 1 task, 0 completed). Its tasks go together."""
    batch_id, _ = _batch_finished_apart(app, api, clock)
    before = _batch_counts(api, batch_id)
    assert before == {"status": "cancelled", "total_count": 2, "completed_count": 1,
                      "cancelled_count": 1, "progress": 100}
    _purge_after(app, clock, days=11)  # 31 days after the first, 11 after the second
    assert _batch_counts(api, batch_id) == before
    clock.advance(days=20)  # both are old now
    app.scheduler(holder_id="R").run_once()
    assert api.get(f"/v1/batches/{batch_id}", headers=ADMIN).status_code == 404


def test_retention_does_not_delete_the_tasks_of_a_batch_reopened_while_it_sweeps(
    app: Creep, api: TestClient, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep judged the batch finished, then deleted its old task in a later statement;
    a retry of the batch's other task committed in between (another process) reopened the
    batch, which then ran without the old task's count and progress."""
    import threading

    batch_id, later = _batch_finished_apart(app, api, clock)
    sch = app.scheduler(holder_id="R")
    sch.run_once()
    clock.advance(days=11)
    store: Any = app.store
    real = store._open_batches
    outcome: list[object] = []
    racer = threading.Thread(target=lambda: outcome.append(app.retry(later).status))

    def judged(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        if not racer.is_alive() and not outcome:
            racer.start()
            racer.join(timeout=1.0)  # done now, or waiting for the sweep's transaction
        return found

    monkeypatch.setattr(store, "_open_batches", judged)
    sch.run_once()  # creep.retention.tasks is due
    racer.join(timeout=10)
    assert outcome == ["QUEUED"]
    assert _batch_counts(api, batch_id) == {
        "status": "running", "total_count": 2, "completed_count": 1, "cancelled_count": 0,
        "progress": 50}


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite: one writer at a time
def test_retention_keeps_a_batch_whose_task_a_retry_holds_while_it_sweeps(
    app: Creep, api: TestClient, clock: FrozenClock, db_url: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL (SQLite serialises writers): both tasks of a finished batch are old. A
    retry of one has locked its row, not yet committed, when the sweep runs: the sweep
    skips that task (SKIP LOCKED), still read it as finished, judged the batch finished and
    deleted the other task; the retry then reopened a batch of one task."""
    import threading

    from creep.storage import postgres_store

    batch_id, later = _batch_finished_apart(app, api, clock)
    sch = app.scheduler(holder_id="R")
    sch.run_once()
    clock.advance(days=31)  # both tasks are old now
    locked, swept = threading.Event(), threading.Event()
    real = postgres_store.retries_allowed

    def hold(*args: Any, **kwargs: Any) -> Any:  # the retry holds the task's row lock here
        locked.set()
        swept.wait(timeout=10)
        return real(*args, **kwargs)

    monkeypatch.setattr(postgres_store, "retries_allowed", hold)
    outcome: list[object] = []
    racer = threading.Thread(target=lambda: outcome.append(app.retry(later).status))
    racer.start()
    assert locked.wait(timeout=10)
    try:
        sch.run_once()  # creep.retention.tasks is due
    finally:
        swept.set()
        racer.join(timeout=10)
    assert outcome == ["QUEUED"]
    assert _batch_counts(api, batch_id) == {
        "status": "running", "total_count": 2, "completed_count": 1, "cancelled_count": 0,
        "progress": 50}
