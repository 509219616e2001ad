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


def _finished_batch(api: TestClient, n: int) -> str:
    """A batch of `n` tasks of tenant acme, cancelled whole (they finished at once)."""
    r = api.post("/v1/batches", headers=ADMIN, json={
        "title": "big", "tenant_id": "acme", "tasks": [{"task_type": "LATER"}] * n})
    assert r.status_code == 201, r.text
    batch_id = r.json()["batch_id"]
    r = api.post(f"/v1/batches/{batch_id}/cancel", headers=ADMIN)
    assert r.status_code == 200, r.text
    return batch_id


def _chunked_scheduler(app: Creep, chunk: int) -> Any:
    from creep.engine.retention import RetentionSettings, default_retention_jobs

    return app.scheduler(holder_id="R", retention_jobs=default_retention_jobs(
        RetentionSettings(tasks_chunk=chunk)))


def test_a_large_batch_goes_in_transactions_of_the_configured_chunk(
    app: Creep, api: TestClient, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished batch went in one transaction of the sweep, however large: a batch of a
    million tasks held SQLite's writer, or PostgreSQL's row locks and WAL, for minutes
    (200,000 tasks: 16 s on SQLite). With RetentionSettings(tasks_chunk=500) a batch of
    5,000 goes in transactions of at most 500 tasks; between them the batch is gone (404)
    and its tasks only get fewer; the end is what it was: every task, its events and the
    batch gone."""
    batch_id = _finished_batch(api, 5000)
    alone = app.submit(task_type="LATER", tenant_id="acme")  # in no batch: goes as before
    app.cancel(alone.task_id)
    store: Any = app.store
    real = store.retention_purge_tasks
    seen: list[tuple[int, int, int]] = []  # (deleted, tasks of the batch left, GET batch)

    def counted(cutoff: Any, limit: int = 5_000) -> int:
        n: int = real(cutoff, limit)
        left = len(app.list_tasks(batch_id=batch_id, limit=10_000))
        seen.append((n, left, api.get(f"/v1/batches/{batch_id}", headers=ADMIN).status_code))
        return n

    monkeypatch.setattr(store, "retention_purge_tasks", counted)
    sch = _chunked_scheduler(app, 500)
    sch.run_once()  # installs the built-in schedules
    clock.advance(days=31)
    report = sch.run_once()
    assert report.retention["creep.retention.tasks"] == 5001
    assert max(n for n, _, _ in seen) <= 500, seen
    assert len(seen) >= 11
    lefts = [left for _, left, _ in seen]
    assert lefts == sorted(lefts, reverse=True) and lefts[-1] == 0
    assert {code for _, _, code in seen} == {404}  # gone as a batch from the first one
    assert app.list_tasks(batch_id=batch_id, limit=10) == []
    assert api.get(f"/v1/tasks/{alone.task_id}", headers=ADMIN).status_code == 404
    assert api.get("/v1/batches", headers=ADMIN, params={"tenant_id": "acme"}).json()[
        "items"] == []
    assert store.task_events_after(None, limit=10) == []


def test_an_interrupted_sweep_of_a_large_batch_resumes_and_no_retry_reopens_it(
    app: Creep, api: TestClient, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep of a large batch stops after its first transactions (the leader died): the
    batch is gone already, the retry of one of its remaining tasks is a 409 (it would
    reopen a batch of a few tasks), and the next run deletes the rest."""
    batch_id = _finished_batch(api, 1200)
    store: Any = app.store
    real = store.retention_purge_tasks
    calls: list[int] = []

    def dies_after_two(cutoff: Any, limit: int = 5_000) -> int:
        if len(calls) == 2:
            raise RuntimeError("the leader died")
        calls.append(real(cutoff, limit))
        return calls[-1]

    monkeypatch.setattr(store, "retention_purge_tasks", dies_after_two)
    sch = _chunked_scheduler(app, 500)
    sch.run_once()
    clock.advance(days=31)
    sch.run_once()
    assert calls == [500, 500]
    left = app.list_tasks(batch_id=batch_id, limit=10_000)
    assert len(left) == 200
    assert api.get(f"/v1/batches/{batch_id}", headers=ADMIN).status_code == 404
    r = api.post(f"/v1/tasks/{left[0].task_id}/retry", headers=ADMIN)
    assert r.status_code == 409, r.text
    assert "being deleted by task retention" in r.json()["detail"]
    assert app.get_task(left[0].task_id).status == "CANCELLED"

    monkeypatch.setattr(store, "retention_purge_tasks", real)
    clock.advance(days=1)  # the job's next daily run
    assert sch.run_once().retention["creep.retention.tasks"] == 200
    assert app.list_tasks(batch_id=batch_id, limit=10) == []
    # The mark went with the last task: a new batch of that id would be judged as any.
    assert store.retention_purge_tasks(clock.now(), 500) == 0


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite: one writer at a time
def test_a_large_batch_whose_task_a_retry_holds_is_judged_after_the_retry(
    app: Creep, api: TestClient, clock: FrozenClock, db_url: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a large batch is marked without locking its tasks, so a retry of one of
    them that is in progress when the sweep judges the batch must not commit after the
    mark (it would reopen a batch being deleted). The sweep waits for it, then finds the
    batch open and keeps it whole."""
    import threading

    import psycopg

    from creep.storage import postgres_store
    from tests.conftest import PG_URL, wait_until

    batch_id = _finished_batch(api, 300)
    [first, *_] = app.list_tasks(batch_id=batch_id, limit=1)
    sch = _chunked_scheduler(app, 100)
    sch.run_once()
    clock.advance(days=31)
    held, release = threading.Event(), threading.Event()
    real = postgres_store.retries_allowed

    def hold(*args: Any, **kwargs: Any) -> Any:  # the retry is past its check of the mark
        held.set()
        release.wait(timeout=10)
        return real(*args, **kwargs)

    monkeypatch.setattr(postgres_store, "retries_allowed", hold)
    outcome: list[object] = []
    racer = threading.Thread(target=lambda: outcome.append(app.retry(first.task_id).status))
    racer.start()
    assert held.wait(timeout=10)
    sweep = threading.Thread(target=sch.run_once)  # creep.retention.tasks is due
    sweep.start()
    try:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            assert wait_until(lambda: conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objid::bigint = hashtext('creep.retention.batch.' || %s)::bigint "
                "& 4294967295", (batch_id,),
            ).fetchone() == (1,), timeout=10), "the sweep did not wait for the retry"
    finally:
        release.set()
        racer.join(timeout=10)
        sweep.join(timeout=30)
    assert outcome == ["QUEUED"]
    counts = _batch_counts(api, batch_id)
    assert (counts["status"], counts["total_count"], counts["cancelled_count"]) == (
        "running", 300, 299)
