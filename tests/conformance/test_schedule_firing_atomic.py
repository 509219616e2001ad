"""One firing is one transaction, on every backend: the execution row, its TaskOrder with the
task's events, and the schedule's next_run/statistics are written together or not at all."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from creep import Creep, FrozenClock, NotFound
from creep.domain.errors import IdempotencyConflict, StorageError
from creep.domain.execution import ExecutionState, TaskExecution
from creep.domain.schedule import Firing, LeadershipLost, attach_task_specs
from creep.domain.task_spec import TaskSpec
from creep.engine.scheduler import Scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def _sched(app: Creep, holder: str = "A") -> Scheduler:
    return app.scheduler(holder_id=holder, retention_jobs=[], lock_ttl=600)


def _executions(app: Creep, uid: str) -> list[TaskExecution]:
    return sorted(app.list_executions(schedule=uid, limit=10_000), key=lambda e: e.scheduled_at)


def test_a_firing_the_database_refuses_writes_nothing(app: Creep, clock: FrozenClock) -> None:
    """The slot's idempotency key is taken by an unrelated task with another body: the task
    insert fails inside the firing, so neither the execution nor next_run is written, and the
    other schedules of the tick still fire."""
    s = app.create_schedule(name="refused", type="REPORT", interval=60)
    ok = app.create_schedule(name="fine", type="REPORT", interval=60)
    slot = T0 + timedelta(seconds=60)
    squatter = app.submit(task_type="OTHER", idempotency_key=f"schedule:{s.uid}:{slot.isoformat()}")
    with pytest.raises(IdempotencyConflict):  # what the firing will run into
        app.submit(task_type="REPORT", idempotency_key=squatter.idempotency_key)
    before = app.get_schedule(s.uid)
    clock.advance(60)
    report = _sched(app).run_once()
    assert (report.fired, report.failed) == (1, 1)
    assert _executions(app, s.uid) == []
    after = app.get_schedule(s.uid)
    assert after.next_run == before.next_run == slot
    assert (after.total_executions, after.last_executed_at, after.updated_at) == (
        0, None, before.updated_at)
    assert [t.task_id for t in app.list_tasks(task_type="REPORT")] == [
        _executions(app, ok.uid)[0].task_id]
    assert [e.event_type for e in app.task_events(squatter.task_id)] == ["created", "queued"]


def test_a_failure_after_the_task_insert_rolls_everything_back_then_fires_once(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = app.create_schedule(name="crashy", type="REPORT", interval=60)
    store: Any = app.store
    real = store._create_tasks_in
    written: list[str] = []

    def insert_then_die(conn: Any, specs: Sequence[TaskSpec], now: datetime) -> Any:
        tasks = real(conn, specs, now)  # the rows and events exist inside the transaction
        written.extend(t.task_id for t in tasks)
        raise StorageError("injected: connection lost between the task and the schedule")

    monkeypatch.setattr(store, "_create_tasks_in", insert_then_die)
    sch = _sched(app)
    clock.advance(60)
    assert sch.run_once().failed == 1
    assert len(written) == 1
    with pytest.raises(NotFound):
        app.get_task(written[0])
    assert written[0] not in {ev.task_id for ev in app.events_after(None, limit=1000)}
    assert _executions(app, s.uid) == [] and app.list_tasks(task_type="REPORT") == []
    assert app.get_schedule(s.uid).next_run == T0 + timedelta(seconds=60)

    monkeypatch.undo()  # the database is back: the same slot fires, once
    clock.advance(5)
    assert sch.run_once().fired == 1
    assert sch.run_once().fired == 0
    [e] = _executions(app, s.uid)
    assert e.scheduled_at == T0 + timedelta(seconds=60) and e.state is ExecutionState.PENDING
    [task] = app.list_tasks(task_type="REPORT")
    assert e.task_id == task.task_id and task.task_id != written[0]
    assert [ev.event_type for ev in app.task_events(task.task_id)] == ["created", "queued"]
    assert app.get_schedule(s.uid).next_run == T0 + timedelta(seconds=120)


def test_a_fenced_off_firing_creates_no_task(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="fenced", type="REPORT", interval=60)
    sched = app.get_schedule(s.uid)
    firings = attach_task_specs(sched, [Firing(T0)], now=clock.now(), limits=app.limits)
    with pytest.raises(LeadershipLost):
        app.schedules.schedule_fire(s.uid, firings, run_by="old", now=clock.now(),
                                    fence=("creep.scheduler", "not-the-token"))
    assert _executions(app, s.uid) == [] and app.list_tasks(task_type="REPORT") == []


def test_racing_writers_create_one_execution_and_one_task_per_slot(
    app: Creep, clock: FrozenClock
) -> None:
    s = app.create_schedule(name="race", type="REPORT", interval=1, max_concurrent=10_000)
    sched = app.get_schedule(s.uid)
    slots = [T0 + timedelta(seconds=k) for k in range(10)]

    def fire(writer: int) -> int:
        won = 0
        for slot in slots:
            firings = attach_task_specs(sched, [Firing(slot)], now=clock.now(), limits=app.limits)
            won += len(app.schedules.schedule_fire(
                s.uid, firings, run_by=f"w{writer}", now=clock.now()))
        return won

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(fire, range(4))) == len(slots)
    executions = _executions(app, s.uid)
    assert [e.scheduled_at for e in executions] == slots
    tasks = app.list_tasks(task_type="REPORT", limit=100)
    assert sorted(t.task_id for t in tasks) == sorted(str(e.task_id) for e in executions)


def test_an_invalid_task_order_ends_its_execution_in_the_same_transaction(
    app: Creep, clock: FrozenClock
) -> None:
    # A schedule stored before create_schedule checked its template (written past the
    # validator here): its TaskOrder is refused (a hint without a category).
    made = app.create_schedule(name="bad-order", type="REPORT", interval=60)
    app.delete_schedule(made.uid)
    s = app.schedules.schedule_create(
        dataclasses.replace(made, resource_hints=[{"min_count": 1}]))
    clock.advance(60)
    report = _sched(app).run_once()
    assert report.fired == 0
    [e] = _executions(app, s.uid)
    assert e.state is ExecutionState.FAILURE and e.task_id is None
    assert e.error_message is not None and "task order is invalid" in e.error_message
    stats = app.get_schedule(s.uid)
    assert (stats.total_executions, stats.failure_executions) == (1, 1)
    assert stats.next_run == T0 + timedelta(seconds=120)
