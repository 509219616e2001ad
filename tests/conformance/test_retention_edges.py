"""Edges of retention and built-in jobs (tasks still referred to by an execution or an active
lease, a long job on a stalled leader, a manual trigger of a pluggable job) and of cron in a
zone whose DST shift is 30 minutes. Both backends (the conformance `app`/`db_url` fixtures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from creep import Creep, FrozenClock, NotFound, TaskContext
from creep.domain.execution import ExecutionState, TaskExecution
from creep.engine.retention import RetentionJob, default_retention_jobs
from creep.engine.scheduler import Scheduler
from creep.schedule_port import ScheduleStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def _executions(app: Creep, **flt: object) -> list[TaskExecution]:
    return sorted(app.list_executions(limit=10_000, **flt),  # type: ignore[arg-type]
                  key=lambda e: (e.scheduled_at, e.id))


# -- retention deletes tasks that are still referenced -------------------------------------------


def test_task_retention_deletes_tasks_whose_executions_have_not_followed_them_yet(
    app: Creep, clock: FrozenClock
) -> None:
    """The leader syncs at most 1000 executions a tick, then runs the due retention jobs in
    the same tick. `creep.retention.tasks` deletes every finished task older than 30 days,
    including the tasks of executions the sync has not reached yet; on the next tick those
    executions find no task and are called `interrupted` ("the process running this
    execution died") although their tasks ended `cancelled`. Here: 1001 firings whose tasks
    were cancelled while no scheduler ran for 31 days."""
    s = app.create_schedule(name="burst", type="NOBODY", interval=1, max_concurrent=10_000,
                            misfire_grace_seconds=7200)
    sch = app.scheduler(holder_id="A")  # the default retention jobs
    clock.advance(1001)
    assert sch.run_once().fired == 1001
    app.disable_schedule(s.uid)
    for e in _executions(app, schedule=s.uid):
        assert e.task_id is not None
        app.cancel(e.task_id)
    clock.advance(days=31)  # every scheduler was down meanwhile
    sch.run_once()  # syncs 1000, then creep.retention.tasks runs (misfire: once)
    sch.run_once()
    states = [e.state for e in _executions(app, schedule=s.uid)]
    assert ExecutionState.INTERRUPTED not in states
    assert states == [ExecutionState.CANCELLED] * 1001
    assert app.get_schedule(s.uid).failure_executions == 0


def test_task_retention_deletes_a_task_whose_kept_lease_is_still_active(
    app: Creep, clock: FrozenClock
) -> None:
    """`constraints.keep_leases: true` keeps a successful task's lease ACTIVE until
    release_lease. creep.retention.tasks deletes the task 30 days later anyway: the asset
    stays IN_USE under an ACTIVE lease whose task no longer exists (TaskOrder -> Lease ->
    Asset is broken; get_task(lease.task_id) is NotFound)."""
    app.import_assets([{"sku_category": "RAW_NET", "sku_code": "ip.1", "max_concurrency": 1,
                        "cost_per_lease": "0.05", "currency": "USD"}])

    @app.handler("KEEP")
    def keep(ctx: TaskContext) -> object:
        return {"ok": True}

    task = app.submit(task_type="KEEP", resource_hints=[{"sku_category": "RAW_NET"}],
                      constraints={"keep_leases": True})
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(task.task_id).status == "SUCCESS"
    [lease] = app.list_leases(task_id=task.task_id)
    assert lease.status == "ACTIVE"
    sch = app.scheduler(holder_id="A")
    sch.run_once()
    clock.advance(days=31)
    sch.run_once()  # creep.retention.tasks is due
    [still] = app.list_leases(task_id=task.task_id)
    assert still.status == "ACTIVE"
    try:
        app.get_task(task.task_id)
    except NotFound:
        pytest.fail("the task of an ACTIVE (kept) lease was deleted by task retention")


# -- built-in jobs -----------------------------------------------------------------------------


def test_a_live_builtin_job_longer_than_two_lock_ttls_is_declared_dead_by_the_next_leader(
    app: Creep, clock: FrozenClock
) -> None:
    """A built-in job runs inline in the leader's tick without renewing the leader lock
    (and `_drain` makes the default jobs run until nothing is left). A job that takes longer
    than 2 x lock_ttl (20 s by default; a first task purge of a large backlog easily does)
    lets another scheduler take over, whose sync calls the job's execution `interrupted`
    ("the process running this execution died") while it is still running; the job then
    succeeds but its outcome cannot be recorded (IllegalTransition) and the statistics count
    a failure."""
    ttl = 5.0
    b_reports = []

    def slow_purge(store: ScheduleStore, cutoff: datetime, now: datetime) -> int:
        clock.advance(3 * ttl)  # the purge takes a while ...
        b_reports.append(b.run_once())  # ... and the other scheduler keeps ticking meanwhile
        return 7

    job = RetentionJob("acme.slow_purge", "0 2 * * *", 30, slow_purge, "a long purge")
    a = app.scheduler(holder_id="A", retention_jobs=[job], lock_ttl=ttl)
    b = app.scheduler(holder_id="B", retention_jobs=[job], lock_ttl=ttl)
    assert a.run_once().leader and not b.run_once().leader
    clock.advance(hours=2)
    a.run_once()
    assert b_reports  # the job ran
    [e] = app.list_executions(tenant_id="_system")
    assert e.state is ExecutionState.SUCCESS, (e.state, e.error_message)
    assert e.result == '{"removed": 7}'
    assert app.get_schedule(e.task_uid).failure_executions == 0


def test_manual_trigger_of_a_pluggable_builtin_job_queues_a_task_nobody_runs(
    app: Creep, clock: FrozenClock
) -> None:
    """README: the built-in job list is pluggable (`app.scheduler(retention_jobs=[...,
    RetentionJob(...)])`) and built-in schedules are triggered like any schedule. Triggering
    a pluggable job's schedule creates a TaskOrder of type `acme.purge_reports` in tenant
    `_system` that no worker handles (the job never runs), and its `pending` execution then
    blocks every scheduled run through max_concurrent=1: the job is silently off for good."""
    runs: list[datetime] = []

    def purge(store: ScheduleStore, cutoff: datetime, now: datetime) -> int:
        runs.append(now)
        return 3

    job = RetentionJob("acme.purge_reports", "0 4 * * *", 14, purge, "purge reports")
    sch = app.scheduler(holder_id="A", retention_jobs=[*default_retention_jobs(), job])
    sch.run_once()  # installs the built-in schedules
    s = app.get_schedule("acme.purge_reports", tenant_id="_system")
    manual = app.trigger_schedule(s.uid, trigger_by="ops")
    clock.advance(hours=4, seconds=1)
    sch.run_once()
    got = _executions(app, schedule=s.uid)
    assert [e.state for e in got] == [ExecutionState.SUCCESS] * 2, [
        (e.trigger_type.value, e.state.value, e.error_message) for e in got]
    assert manual.task_id is None, "a built-in job's manual run queued a TaskOrder"
    assert len(runs) == 2


# -- cron ----------------------------------------------------------------------------------------


def test_cron_loses_an_existing_local_time_in_a_half_hour_dst_zone(db_url: str) -> None:
    """Australia/Lord_Howe springs forward by 30 minutes (02:00 +10:30 -> 02:30 +11:00 on
    2025-10-05): local 02:30 exists. `30 * * * *` must fire at 01:30, 02:30 and 03:30 local;
    cronsim assumes one-hour DST shifts and jumps from 01:30 to 03:30, so the schedule
    silently skips a slot (a 90-minute gap in an hourly schedule)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Australia/Lord_Howe")
    clock = FrozenClock(datetime(2025, 10, 4, 14, 50, tzinfo=UTC))  # 01:20 local (+10:30)
    app = Creep(db_url, clock=clock)
    try:
        s = app.create_schedule(name="hourly", type="T", cron_expr="30 * * * *",
                                timezone="Australia/Lord_Howe", max_concurrent=100)
        sch: Scheduler = app.scheduler(holder_id="A", retention_jobs=[], lock_ttl=3600)
        for _ in range(12):  # 14:50 -> 16:50 UTC, a tick every 10 minutes
            clock.advance(minutes=10)
            sch.run_once()
        local = [e.scheduled_at.astimezone(zone).strftime("%H:%M%z")
                 for e in _executions(app, schedule=s.uid)]
        assert local == ["01:30+1030", "02:30+1100", "03:30+1100"]
    finally:
        app.close()


def test_task_retention_does_not_delete_a_task_retried_while_it_sweeps(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep read the old finished tasks, then deleted them by id in a later statement.
    On PostgreSQL a retry committed in between (another process; it locked nothing the
    sweep held): `app.retry` answered QUEUED and the sweep then deleted the queued task.
    A retry racing the sweep must either win (the task stays, queued) or find it gone."""
    import threading

    task = app.submit(task_type="NOBODY")
    app.cancel(task.task_id)
    sch = app.scheduler(holder_id="A")
    sch.run_once()
    clock.advance(days=31)
    store: Any = app.store
    real = store._retention_candidates
    outcome: list[object] = []

    def retry() -> None:
        try:
            outcome.append(app.retry(task.task_id).status)
        except NotFound as exc:
            outcome.append(exc)

    racer = threading.Thread(target=retry)

    def candidates(*args: Any, **kwargs: Any) -> Any:
        rows = real(*args, **kwargs)
        if not racer.is_alive() and not outcome:
            racer.start()
            racer.join(timeout=1.0)  # done now, or waiting for the sweep's transaction
        return rows

    monkeypatch.setattr(store, "_retention_candidates", candidates)
    sch.run_once()  # creep.retention.tasks is due
    racer.join(timeout=10)
    assert outcome, "the retry never ran"
    if outcome == ["QUEUED"]:
        assert app.get_task(task.task_id).status == "QUEUED"  # NotFound before the fix
    else:
        assert isinstance(outcome[0], NotFound), outcome


def test_a_task_id_whose_task_retention_deleted_is_not_reused_with_its_ledger(
    app: Creep, clock: FrozenClock
) -> None:
    """A task given its own task_id ran, charged 8 of its 10 USD budget and was deleted by
    retention 30 days later; its ledger entries stay (append-only). A new task of the same
    id counted them as its own: its first charge of 5 raised BudgetExceeded (8 + 5 > 10),
    and the per-task ledger summary mixed both tasks. The id is refused instead."""
    import uuid
    from decimal import Decimal

    from creep import ConflictError

    @app.handler("SPEND")
    def spend(ctx: TaskContext) -> object:
        ctx.charge(Decimal("8"), description="first run")
        return {"ok": True}

    task_id = str(uuid.uuid4())
    app.submit(task_type="SPEND", task_id=task_id, max_total_cost="10")
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(task_id).status == "SUCCESS"
    sch = app.scheduler(holder_id="A")
    sch.run_once()
    clock.advance(days=31)
    sch.run_once()  # creep.retention.tasks deletes the task
    with pytest.raises(NotFound):
        app.get_task(task_id)
    [kept] = app.ledger_summary(task_id=task_id)
    assert kept.cost == Decimal("8")

    with pytest.raises(ConflictError, match="retention deleted"):
        app.submit(task_type="SPEND", task_id=task_id, max_total_cost="10")
    with pytest.raises(ConflictError, match="retention deleted"):
        app.submit_many([{"task_type": "SPEND"},
                         {"task_type": "SPEND", "task_id": task_id}])
    assert app.list_tasks(limit=10) == []  # nothing of either submission was written
    # A task id that never had a ledger entry or lease (nor a task) is taken as before.
    fresh = str(uuid.uuid4())
    assert app.submit(task_type="SPEND", task_id=fresh).task_id == fresh


@pytest.mark.parametrize("path", ["one", "with_dependency", "copy"])
def test_a_task_id_deleted_by_retention_between_its_check_and_the_insert_is_not_reused(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """PostgreSQL: the check that refuses the task_id of a task retention deleted read the
    database before the insert, in a transaction of its own. A sweep that deleted the task
    in between (another process) let the id through: the new task counted the old task's
    ledger entries against its budget. Here the sweep runs and commits just before the
    insert is sent (on each insert path: one order, orders with a dependency, a COPY)."""
    import threading
    import uuid
    from decimal import Decimal

    from creep import ConflictError
    from creep.storage import postgres_store

    clock = FrozenClock(T0)
    app = Creep(pg_schema_url, clock=clock)
    try:
        @app.handler("SPEND")
        def spend(ctx: TaskContext) -> object:
            ctx.charge(Decimal("8"))
            return {"ok": True}

        task_id = str(uuid.uuid4())
        app.submit(task_type="SPEND", task_id=task_id, max_total_cost="10")
        app.run_worker(burst=True, install_signals=False)
        assert app.get_task(task_id).status == "SUCCESS"
        clock.advance(days=31)
        hooked = {"one": "_insert_statement", "copy": "copy_blocks",
                  # before the general path reads the orders' keys (the old task had one)
                  "with_dependency": "bind_replayed_dependencies"}[path]
        real = getattr(postgres_store, hooked)
        swept: list[int] = []

        def sweep_first(*args: Any, **kwargs: Any) -> Any:
            if not swept:  # another process's sweep, committed before the insert is sent
                racer = threading.Thread(target=lambda: swept.append(
                    app.store.retention_purge_tasks(clock.now() - timedelta(days=30))))
                racer.start()
                racer.join(timeout=10)
            return real(*args, **kwargs)

        monkeypatch.setattr(postgres_store, hooked, sweep_first)
        again: list[dict[str, Any]] = [{"task_type": "SPEND", "task_id": task_id}]
        if path == "with_dependency":
            again = [{"task_type": "SPEND", "task_id": str(uuid.uuid4())}, *again]
            again[1]["depends_on"] = [again[0]["task_id"]]
        elif path == "copy":
            again = [{"task_type": "SPEND"}] * (postgres_store.COPY_MIN_TASKS - 1) + again
        with pytest.raises(ConflictError, match="retention deleted"):
            app.submit_many(again)
        assert swept == [1]
        assert app.list_tasks(limit=10) == []  # nothing of the submission was written
        with pytest.raises(NotFound):
            app.get_task(task_id)
    finally:
        app.close()
