"""Task retention seen through the REST API (an in-process app on an injected clock, both
backends): what the sweep keeps and what it leaves behind."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from creep import Creep, FrozenClock, TaskContext
from creep.api.app import create_app
from creep.api.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx
    from fastapi.testclient import TestClient

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "retention-admin-key-" + "x" * 24
ADMIN = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)
    yield creep_app
    creep_app.close()


@pytest.fixture
def api(app: Creep, db_url: str, clock: FrozenClock) -> Iterator[TestClient]:
    settings = Settings(database_url=db_url, admin_key=KEY, maintenance_interval_seconds=0)
    with TestClient(create_app(settings, store=app.store, clock=clock)) as client:  # type: ignore[arg-type]
        r = client.post("/v1/tenants", json={"tenant_id": "acme"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        yield client


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
