"""Schedule edges on both backends: what create/update accept (text every database stores,
a TaskOrder template the task validator accepts), the statistics and timings an execution
history reports, and the checks of the history listing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from creep import Creep, Fail, FrozenClock, Retry, TaskContext, ValidationError
from creep.domain.execution import ExecutionState, TaskExecution
from creep.domain.schedule import Firing, ScheduledTask, attach_task_specs
from creep.engine.scheduler import Scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def _sched(app: Creep) -> Scheduler:
    return app.scheduler(holder_id="A", retention_jobs=[], lock_ttl=3600)


def _executions(app: Creep, uid: str) -> list[TaskExecution]:
    return sorted(app.list_executions(schedule=uid, limit=10_000), key=lambda e: e.scheduled_at)


# -- text no database stores -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("description", "a\x00b", "description"),
        ("project_id", "a\x00b", "project_id"),
        ("name", "a\x00b", "name"),
        ("env", "prod\x00", "env"),
        ("description", "lone \ud800 surrogate", "description"),
        ("labels", {"team": "a\x00b"}, "labels.team"),
        ("labels", {"te\x00am": "a"}, "labels"),
        ("tags", ["ok", "a\x00b"], "tags[1]"),
        ("resource_hints", [{"sku_category": "GPU\x00"}], "resource_hints[0].sku_category"),
        ("data", {"k": ["a\x00b"]}, "data.k[0]"),
        ("data", '{"k": "a\\u0000b"}', "data.k"),  # JSON text with an escaped NUL
        ("data", '"lone \ud800"', "data"),
    ],
)
def test_text_no_database_stores_is_a_validation_error_naming_the_field(
    app: Creep, field: str, value: Any, named: str
) -> None:
    """A NUL or a lone surrogate in any text of a schedule is refused by create_schedule and
    update_schedule with a ValidationError naming the field, on both backends (PostgreSQL
    used to raise a StorageError naming nothing; SQLite stored it and every firing then
    failed as an invalid task order)."""
    with pytest.raises(ValidationError) as info:
        app.create_schedule(**{"name": "nul", "type": "T", "interval": 60, field: value})
    assert info.value.errors[0][0] == named
    s = app.create_schedule(name="clean", type="T", interval=60)
    with pytest.raises(ValidationError) as info:
        app.update_schedule(s.uid, **{field: value})
    assert info.value.errors[0][0] == named
    assert app.get_schedule(s.uid).version == 1  # nothing was written


def test_a_trigger_by_no_database_stores_is_a_validation_error(app: Creep) -> None:
    """trigger_schedule refuses a trigger_by holding NUL with a ValidationError naming it
    (PostgreSQL raised a StorageError) and records no execution."""
    s = app.create_schedule(name="t", type="T", cron_expr="0 0 1 1 *")
    with pytest.raises(ValidationError) as info:
        app.trigger_schedule(s.uid, trigger_by="al\x00ice")
    assert info.value.errors[0][0] == "trigger_by"
    assert app.list_executions(schedule=s.uid) == []


# -- the TaskOrder template --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("currency", "usd", "currency"),  # a TaskOrder wants ^[A-Z]{3,4}$
        ("tags", ["t" * 200], "tags[0]"),  # a TaskOrder tag is 1 to 128 characters
        ("tags", [""], "tags[0]"),
        ("tags", [f"t{i}" for i in range(65)], "tags"),  # at most 64
        ("resource_hints", [{"sku": "GPU"}], "resource_hints[0]"),  # needs sku_category
        ("resource_hints", [{"sku_category": "GPU", "min_count": 0}],
         "resource_hints[0].min_count"),
        ("max_total_cost", "1.12345678901", "max_total_cost"),  # at most 10 places
        ("max_total_cost", "1e15", "max_total_cost"),
        ("project_id", "p" * 129, "project_id"),  # a TaskOrder's is at most 128
        ("type", "T" * 129, "type"),  # the order's task_type: at most 128
        ("tenant_id", "t" * 129, "tenant_id"),
    ],
)
def test_a_template_the_task_order_refuses_is_refused_at_create_and_update(
    app: Creep, clock: FrozenClock, field: str, value: Any, named: str
) -> None:
    """create_schedule and update_schedule check the TaskOrder template (and the fields a
    firing copies into its order) with the task order's own rules and name the schedule
    field. They used to accept it, and then every firing was recorded `failure: the task
    order is invalid` and the schedule could never run."""
    with pytest.raises(ValidationError) as info:
        app.create_schedule(**{"name": "tpl", "type": "T", "interval": 60, field: value})
    assert info.value.errors[0][0] == named, info.value.errors
    if field == "tenant_id":
        return  # not a field an update may change
    s = app.create_schedule(name="ok", type="T", interval=60)
    with pytest.raises(ValidationError) as info:
        app.update_schedule(s.uid, **{field: value})
    assert info.value.errors[0][0] == named, info.value.errors
    assert app.get_schedule(s.uid).version == 1
    clock.advance(60)
    _sched(app).run_once()
    [e] = _executions(app, s.uid)
    assert e.state is ExecutionState.PENDING and e.task_id is not None


def test_a_stored_schedule_with_a_bad_template_can_still_be_disabled_or_mended(
    app: Creep, clock: FrozenClock
) -> None:
    """A schedule stored before its template was checked (here: written past the validator)
    can still be disabled, and mended field by field: an update reports only the problems of
    the fields it changes."""
    good = app.create_schedule(name="legacy", type="T", interval=60)
    app.delete_schedule(good.uid)
    app.schedules.schedule_create(dataclasses.replace(good, currency="usd"))
    assert app.disable_schedule(good.uid).enabled is False
    with pytest.raises(ValidationError) as info:
        app.update_schedule(good.uid, currency="eur")
    assert info.value.errors[0][0] == "currency"
    mended = app.update_schedule(good.uid, currency="EUR", enabled=True)
    assert mended.currency == "EUR" and mended.enabled
    clock.advance(60)
    _sched(app).run_once()
    [e] = _executions(app, good.uid)
    assert e.state is ExecutionState.PENDING and e.task_id is not None


# -- statistics follow the order in which runs finished ----------------------------------------

SWEEPS = ("between", "once", "one_at_a_time")


def _outcome(clock: FrozenClock, message: str | None) -> Callable[[TaskContext], object]:
    """A handler that takes 1 s and succeeds (None) or fails with `message`."""

    def handler(ctx: TaskContext) -> object:
        clock.advance(1)
        if message is None:
            return {"ok": True}
        raise Fail(code="BOOM", message=message)

    return handler


def _older_run_ends_last(
    app: Creep, clock: FrozenClock, sch: Scheduler, newer: str | None, older: str | None,
    sweep: str,
) -> ScheduledTask:
    """Fire two slots of one schedule; the newer run ends first (`newer`: None succeeds, a
    text fails with it), then the older run ends 1 s later (`older`). `sweep`: the leader
    sweeps between the two ends, once after both, or after both one execution at a time
    (the older one, which has the smaller id, first). Returns the schedule as it ends up."""
    s = app.create_schedule(name=sweep, type=f"OLD{sweep}", interval=10, max_concurrent=5)
    clock.advance(10)
    sch.run_once()
    app.update_schedule(s.uid, type=f"NEW{sweep}")  # the second slot's order: another type
    clock.advance(10)
    sch.run_once()
    app.handler(f"NEW{sweep}")(_outcome(clock, newer))
    app.run_worker(burst=True, install_signals=False)  # only the newer run
    if sweep == "between":
        clock.advance(1)
        sch.run_once()
    app.handler(f"OLD{sweep}")(_outcome(clock, older))
    app.run_worker(burst=True, install_signals=False)  # then the older run
    clock.advance(1)
    if sweep == "one_at_a_time":
        while app.schedules.execution_sync(clock.now(), limit=1):
            pass
    else:
        sch.run_once()
    old, new = _executions(app, s.uid)
    assert old.finished_at is not None and new.finished_at is not None
    assert old.finished_at > new.finished_at  # the older run's outcome is the latest
    assert old.id < new.id
    return app.get_schedule(s.uid)


def _stats(s: ScheduledTask) -> tuple[int, str | None, int, int, int]:
    return (s.consecutive_failures, s.last_failure_error, s.total_executions,
            s.success_executions, s.failure_executions)


def test_consecutive_failures_follow_the_order_runs_finished(
    app: Creep, clock: FrozenClock
) -> None:
    """The newer run succeeds at t, the older one fails at t + 1: the latest outcome is a
    failure, so consecutive_failures is 1, whenever the leader swept. A sweep meeting both
    ends used to count them in execution-id order, and the success, counted last, reset the
    run to 0 (1 only if the leader happened to sweep between the two ends)."""
    sch = _sched(app)
    got = {sweep: _stats(_older_run_ends_last(app, clock, sch, None, "failed last", sweep))
           for sweep in SWEEPS}
    assert got == dict.fromkeys(SWEEPS, (1, "failed last", 2, 1, 1))


def test_a_success_that_finished_last_ends_the_run_of_failures(
    app: Creep, clock: FrozenClock
) -> None:
    """The newer run fails at t, the older one succeeds at t + 1: consecutive_failures is 0
    whenever the leader swept (a sweep meeting both used to count the failure last: 1)."""
    sch = _sched(app)
    got = {sweep: _stats(_older_run_ends_last(app, clock, sch, "failed first", None, sweep))
           for sweep in SWEEPS}
    assert got == dict.fromkeys(SWEEPS, (0, "failed first", 2, 1, 1))


def test_last_failure_error_is_the_failure_that_finished_last(
    app: Creep, clock: FrozenClock
) -> None:
    """Two failures: last_failure_error is the message of the one that finished last,
    whenever the leader swept (a sweep meeting both used to keep the message of the one
    with the larger execution id, which finished first)."""
    sch = _sched(app)
    got = {sweep: _stats(_older_run_ends_last(app, clock, sch, "finished first",
                                              "finished last", sweep))
           for sweep in SWEEPS}
    assert got == dict.fromkeys(SWEEPS, (2, "finished last", 2, 0, 2))


# -- an execution's start is its task's first start --------------------------------------------


@pytest.mark.parametrize("sweep_each_attempt", [False, True])
def test_a_retried_execution_keeps_its_first_start_and_whole_duration(
    app: Creep, clock: FrozenClock, sweep_each_attempt: bool
) -> None:
    """A run whose task needed three attempts of 5 s, the first starting 2 s after firing:
    the execution's started_at is the first attempt's start and duration_ms covers all three
    (15 s), whether the leader swept once after them or during each. It used to copy the
    task's started_at, which every claim resets: the last attempt's start and 5000 ms, and
    with a sweep per attempt started_at moved on every retry."""
    s = app.create_schedule(name="r", type="R", interval=100, max_retries=3)
    starts: list[datetime] = []

    @app.handler("R")
    def handler(ctx: TaskContext) -> object:
        if sweep_each_attempt:  # the leader sweeps while this attempt runs
            app.schedules.execution_sync(clock.now())
            [e] = _executions(app, s.uid)
            starts.append(e.started_at)
        clock.advance(5)
        if ctx.attempt < 3:
            raise Retry(delay=0, message=f"attempt {ctx.attempt}")
        return {"ok": True}

    sch = _sched(app)
    clock.advance(100)
    sch.run_once()
    first_start = clock.advance(2)
    app.run_worker(burst=True, install_signals=False, concurrency=1)
    clock.advance(1)
    sch.run_once()
    [e] = _executions(app, s.uid)
    assert e.state is ExecutionState.SUCCESS and e.retry_count == 2
    assert e.started_at == first_start
    assert e.duration_ms == 15_000
    assert e.finished_at == first_start + timedelta(seconds=15)
    assert starts == ([first_start] * 3 if sweep_each_attempt else [])


def test_history_pages_stay_whole_while_a_run_is_retried(app: Creep, clock: FrozenClock) -> None:
    """started_at is the history's paging key: a page read before a run's retry and the next
    page read after it hold every execution once. The retry used to move the run's
    started_at past the cursor, so the next page skipped it."""
    s = app.create_schedule(name="p", type="P", cron_expr="0 0 1 1 *", max_concurrent=2,
                            max_retries=1)

    @app.handler("P")
    def handler(ctx: TaskContext) -> object:
        app.schedules.execution_sync(clock.now())  # the leader sweeps while it runs
        clock.advance(5)
        if ctx.attempt == 1 and ctx.task_id == first.task_id:
            raise Retry(delay=60, message="later")
        return {"ok": True}

    sch = _sched(app)
    first = app.trigger_schedule(s.uid, trigger_by="alice")
    clock.advance(10)
    second = app.trigger_schedule(s.uid, trigger_by="bob")
    clock.advance(5)
    app.run_worker(burst=True, install_signals=False, concurrency=1)  # first retries later
    sch.run_once()
    page = app.list_executions(schedule=s.uid, limit=1)
    assert [e.execution_uid for e in page] == [second.execution_uid]  # it started last
    clock.advance(60)
    app.run_worker(burst=True, install_signals=False, concurrency=1)  # the retry runs
    sch.run_once()
    rest = app.list_executions(schedule=s.uid, before=app.execution_cursor(page[-1]))
    assert [e.execution_uid for e in rest] == [first.execution_uid]
    assert rest[0].state is ExecutionState.SUCCESS and rest[0].retry_count == 1


# -- max_concurrent counts what still runs -----------------------------------------------------


def _one_finished_run(app: Creep, clock: FrozenClock) -> ScheduledTask:
    """A schedule with max_concurrent=1 whose only run's task has succeeded; no sweep has
    recorded it yet (its execution row still says pending)."""
    s = app.create_schedule(name="m", type="M", cron_expr="0 0 1 1 *", max_concurrent=1)
    app.handler("M")(lambda ctx: {"ok": True})
    first = app.trigger_schedule(s.uid, trigger_by="alice")
    assert first.task_id is not None
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(first.task_id).status == "SUCCESS"
    assert app.get_execution(first.execution_uid).state is ExecutionState.PENDING
    clock.advance(5)
    return app.get_schedule(s.uid)


def test_a_manual_trigger_after_the_run_finished_is_not_skipped(
    app: Creep, clock: FrozenClock
) -> None:
    """Right after the only run's task succeeded, a manual trigger runs. It was recorded
    `cancelled` 'max_concurrent=1 reached (1 executions still running)': the count read
    the execution rows, which lag their tasks until the leader's next sweep (with no
    scheduler process up, forever)."""
    s = _one_finished_run(app, clock)
    second = app.trigger_schedule(s.uid, trigger_by="bob")
    assert second.state is ExecutionState.PENDING, second.error_message
    third = app.trigger_schedule(s.uid, trigger_by="carol")  # the second still runs
    assert third.state is ExecutionState.CANCELLED
    assert third.error_message == "skipped: max_concurrent=1 reached (1 executions still running)"


def test_a_due_slot_after_the_run_finished_is_not_skipped(
    app: Creep, clock: FrozenClock
) -> None:
    """A slot fired before any sweep recorded the finished run (as when the sweep's batch
    did not reach it) runs too; only the still-running one it starts holds the slot."""
    s = _one_finished_run(app, clock)
    slots = [clock.now(), clock.now() + timedelta(seconds=1)]
    firings = attach_task_specs(s, [Firing(slot) for slot in slots], now=clock.now(),
                                limits=app.limits)
    got = app.schedules.schedule_fire(s.uid, firings, run_by="A", now=clock.now())
    assert [e.state for e in got] == [ExecutionState.PENDING, ExecutionState.CANCELLED]


def test_concurrent_triggers_after_the_run_finished_start_one_run(
    app: Creep, clock: FrozenClock
) -> None:
    """Eight concurrent triggers once the only run finished (max_concurrent=1): exactly one
    runs and seven are skipped (they all used to be skipped)."""
    s = _one_finished_run(app, clock)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: app.trigger_schedule(s.uid, trigger_by=f"u{i}"),
                            range(8)))
    states = sorted(e.state.value for e in got)
    assert states == ["cancelled"] * 7 + ["pending"]
    assert len(app.list_tasks(task_type="M", status="QUEUED")) == 1


# -- the history listing checks its arguments --------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"started_from": datetime(2026, 1, 1)}, ["started_from"]),  # naive
        ({"started_to": datetime(2026, 1, 1)}, ["started_to"]),
        ({"started_from": "2026-01-01T00:00:00+00:00"}, ["started_from"]),  # not a datetime
        ({"limit": -1}, ["limit"]),
        ({"limit": "10"}, ["limit"]),
        ({"limit": True}, ["limit"]),
        ({"limit": 2.5}, ["limit"]),
        ({"before": 7}, ["before"]),
        ({"started_from": datetime(2026, 1, 1), "limit": -5}, ["started_from", "limit"]),
    ],
)
def test_list_executions_refuses_a_bad_window_or_limit_naming_it(
    app: Creep, clock: FrozenClock, arguments: dict[str, Any], named: list[str]
) -> None:
    """list_executions checks its started_from/started_to window (timezone-aware datetimes)
    and its limit (an integer >= 0) and names each bad argument in a ValidationError, on both
    backends. A naive started_from was a TypeError on SQLite and silently read in the
    session's time zone on PostgreSQL; limit=-1 returned every row on SQLite and raised a
    StorageError on PostgreSQL."""
    app.create_schedule(name="w", type="W", interval=10, max_concurrent=100)
    clock.advance(30)
    _sched(app).run_once()
    with pytest.raises(ValidationError) as info:
        app.list_executions(**arguments)
    assert [name for name, _ in info.value.errors] == named


def test_list_executions_takes_any_limit_from_zero(app: Creep, clock: FrozenClock) -> None:
    """limit=0 is an empty page and a limit beyond what a database takes means every row
    (it was an OverflowError on SQLite and a StorageError on PostgreSQL); an aware window in
    any zone is read as the instant it names."""
    s = app.create_schedule(name="w", type="W", interval=10, max_concurrent=100)
    clock.advance(30)
    _sched(app).run_once()
    assert app.list_executions(schedule=s.uid, limit=0) == []
    assert len(app.list_executions(schedule=s.uid, limit=2**70)) == 3
    fired = (T0 + timedelta(seconds=30)).astimezone(ZoneInfo("Asia/Kolkata"))  # +05:30
    assert len(app.list_executions(schedule=s.uid, started_from=fired)) == 3
    assert app.list_executions(schedule=s.uid, started_to=fired) == []
    assert app.list_executions(schedule=s.uid, started_from=fired + timedelta(seconds=1)) == []
