"""Schedules through the Python API on every backend: CRUD, firing exactly once, fencing,
max_concurrent, misfires, executions following their tasks, interruption and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from creep import (
    ConflictError,
    Creep,
    Fail,
    FrozenClock,
    NotFound,
    TaskContext,
    ValidationError,
    VersionConflict,
)
from creep.domain.execution import ExecutionState, TaskExecution, TriggerType
from creep.domain.schedule import Firing, LeadershipLost
from creep.engine.scheduler import SCHEDULER_LOCK, Scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def _sched(app: Creep, holder: str = "A", **settings: object) -> Scheduler:
    return app.scheduler(holder_id=holder, retention_jobs=[], **settings)


def _executions(app: Creep, uid: str) -> list[TaskExecution]:
    return sorted(app.list_executions(schedule=uid, limit=10_000), key=lambda e: e.scheduled_at)


def test_crud_enable_disable_and_next_run(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(
        name="nightly", type="REPORT", cron_expr="0 2 * * *", tenant_id="t1", project_id="p",
        env="prod", labels={"team": "data"}, data={"k": "v"}, tags=["a"], max_total_cost="1.50",
        resource_hints=[{"sku_category": "RAW_NET"}], priority=70,
    )
    assert s.next_run == T0 + timedelta(hours=2) and s.enabled and s.is_recurring
    got = app.get_schedule("nightly", tenant_id="t1")
    assert got.uid == s.uid and got.labels == {"team": "data"} and got.data == '{"k":"v"}'
    assert str(got.max_total_cost) == "1.50" and got.resource_hints == [{"sku_category": "RAW_NET"}]
    with pytest.raises(ConflictError):
        app.create_schedule(name="nightly", type="X", interval=5, tenant_id="t1")
    app.create_schedule(name="nightly", type="X", interval=5, tenant_id="t2")  # per tenant
    clock.advance(hours=3)
    off = app.disable_schedule(s.uid)
    assert not off.enabled and off.next_run is None and off.version == s.version + 1
    on = app.enable_schedule(s.uid)
    assert on.enabled and on.next_run == T0 + timedelta(days=1, hours=2)
    changed = app.update_schedule(s.uid, cron_expr="*/10 * * * *")
    assert changed.next_run == T0 + timedelta(hours=3, minutes=10)
    switched = app.update_schedule(s.uid, interval=60)
    assert switched.cron_expr is None and switched.next_run == clock.now() + timedelta(minutes=1)
    with pytest.raises(VersionConflict):
        app.update_schedule(s.uid, expected_version=1, priority=1)
    with pytest.raises(ValidationError, match="data: is"):
        app.update_schedule(s.uid, data="x" * 20_000)
    assert [x.name for x in app.list_schedules(tenant_id="t1")] == ["nightly"]
    app.delete_schedule(s.uid)
    with pytest.raises(NotFound):
        app.get_schedule(s.uid)


def test_data_over_10_kb_rejected(app: Creep) -> None:
    with pytest.raises(ValidationError) as info:
        app.create_schedule(name="big", type="T", interval=5, data={"x": "y" * 11_000})
    assert info.value.errors[0][0] == "data" and "10 KB" in str(info.value)
    assert app.list_schedules(tenant_id="default") == []


def test_firing_creates_task_order_and_execution(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="echo", type="ECHO", interval=60, data={"n": 1},
                            max_duration_seconds=120, max_retries=2, tags=["sched"])
    sch = _sched(app)
    clock.advance(60)
    report = sch.run_once()
    assert report.leader and report.fired == 1
    [e] = _executions(app, s.uid)
    assert e.state is ExecutionState.PENDING and e.trigger_type is TriggerType.SCHEDULED
    assert e.scheduled_at == T0 + timedelta(seconds=60) and e.run_by == "A"
    assert e.task_id is not None
    task = app.get_task(e.task_id)
    assert task.task_type == "ECHO" and task.input_payload == {"n": 1}
    assert task.timeout_ms == 120_000 and task.max_attempts == 3 and task.tags == ["sched"]
    assert task.idempotency_key == f"schedule:{s.uid}:{e.scheduled_at.isoformat()}"
    # The same tick again fires nothing; the slot is taken.
    assert sch.run_once().fired == 0

    @app.handler("ECHO")
    def echo(ctx: TaskContext) -> object:
        return {"got": ctx.task.input_payload}

    app.run_worker(burst=True, install_signals=False)
    clock.advance(1)
    assert sch.run_once().synced == 1
    [done] = _executions(app, s.uid)
    assert done.state is ExecutionState.SUCCESS and done.result == '{"got":{"n":1}}'
    assert done.finished_at is not None and done.progress == 100
    stats = app.get_schedule(s.uid)
    assert (stats.total_executions, stats.success_executions, stats.failure_executions) == (1, 1, 0)
    assert stats.last_executed_at == T0 + timedelta(seconds=60)


def test_failures_update_statistics(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="bad", type="BAD", interval=10, max_concurrent=5)

    @app.handler("BAD")
    def bad(ctx: TaskContext) -> object:
        raise Fail(code="HARD_FAIL", message="upstream said no")

    sch = _sched(app)
    for _ in range(3):
        clock.advance(10)
        sch.run_once()
        app.run_worker(burst=True, install_signals=False)
    sch.run_once()
    states = [e.state for e in _executions(app, s.uid)]
    assert states == [ExecutionState.FAILURE] * 3
    assert _executions(app, s.uid)[0].error_message == "upstream said no"
    stats = app.get_schedule(s.uid)
    assert stats.failure_executions == 3 and stats.consecutive_failures == 3
    assert stats.last_failure_error == "upstream said no"


def test_each_slot_fires_once_with_two_schedulers(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="tick", type="T", interval=1, max_concurrent=1000)
    a, b = _sched(app, "A", lock_ttl=5), _sched(app, "B", lock_ttl=5)
    for _ in range(20):
        clock.advance(1)
        ra, rb = a.run_once(), b.run_once()
        assert ra.leader and not rb.leader
    slots = [e.scheduled_at for e in _executions(app, s.uid)]
    assert slots == [T0 + timedelta(seconds=k) for k in range(1, 21)]
    # Even a second writer that ignores leadership cannot fire a slot again: unique key.
    again = app.schedules.schedule_fire(s.uid, [Firing(slots[3])], run_by="rogue", now=clock.now())
    assert again == []


def test_lock_takeover_after_expiry_fences_the_old_leader(
    app: Creep, clock: FrozenClock
) -> None:
    s = app.create_schedule(name="t", type="T", interval=1, max_concurrent=1000)
    a, b = _sched(app, "A", lock_ttl=5), _sched(app, "B", lock_ttl=5)
    assert a.run_once().leader
    old_token = a.token
    assert old_token is not None
    clock.advance(6)  # A stalls past its TTL
    assert b.run_once().leader and b.token != old_token
    lock = app.schedules.lock_get(SCHEDULER_LOCK)
    assert lock is not None and lock["holder_id"] == "B" and lock["state"] == "active"
    # The old holder's renewal fails, and so does a write fenced with its token.
    assert not app.store.lock_renew(SCHEDULER_LOCK, "A", old_token, 5, clock.now())
    with pytest.raises(LeadershipLost):
        app.schedules.schedule_fire(
            s.uid, [Firing(T0)], run_by="A", now=clock.now(), fence=(SCHEDULER_LOCK, old_token),
        )
    # A steps down on its next tick: not leader while B renews.
    assert not a.run_once().leader
    fired_by = {e.run_by for e in _executions(app, s.uid)}
    assert fired_by == {"B"}
    # An expired holder's write is refused even before anyone takes over.
    clock.advance(60)
    assert b.token is not None
    with pytest.raises(LeadershipLost):
        app.schedules.schedule_fire(
            s.uid, [Firing(T0)], run_by="B", now=clock.now(), fence=(SCHEDULER_LOCK, b.token),
        )


def test_max_concurrent_skip_is_recorded(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="slow", type="SLOW", interval=10, max_concurrent=2)
    sch = _sched(app)
    for _ in range(4):
        clock.advance(10)
        sch.run_once()
    ex = _executions(app, s.uid)
    assert [e.state for e in ex] == [ExecutionState.PENDING] * 2 + [ExecutionState.CANCELLED] * 2
    assert ex[2].task_id is None and ex[2].finished_at == ex[2].started_at
    assert ex[2].error_message is not None and "max_concurrent=2" in ex[2].error_message
    assert len(app.list_tasks(task_type="SLOW")) == 2  # nothing queued for skipped slots
    assert app.get_schedule(s.uid).total_executions == 2  # the two skips ended at once


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("skip", [100]), ("once", [99, 100]), ("all", [97, 98, 99, 100])],
)
def test_misfire_policies_after_downtime(
    app: Creep, clock: FrozenClock, policy: str, expected: list[int]
) -> None:
    s = app.create_schedule(name=f"m-{policy}", type="T", interval=60, misfire_policy=policy,
                            misfire_limit=3, misfire_grace_seconds=30, max_concurrent=100)
    clock.advance(minutes=100, seconds=10)  # the scheduler was down for 100 minutes
    report = _sched(app).run_once()
    slots = [e.scheduled_at for e in _executions(app, s.uid)]
    assert slots == [T0 + timedelta(minutes=m) for m in expected]
    assert report.missed == 100 - len(expected)
    assert app.get_schedule(s.uid).next_run == T0 + timedelta(minutes=101)


def test_manual_trigger(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="m", type="T", cron_expr="0 0 1 1 *")
    e = app.trigger_schedule(s.uid, trigger_by="alice")
    assert e.trigger_type is TriggerType.MANUAL and e.trigger_by == "alice"
    assert e.state is ExecutionState.PENDING and e.task_id is not None
    assert app.get_task(e.task_id).task_type == "T"
    assert app.get_schedule(s.uid).next_run == s.next_run  # the timing is untouched
    skipped = app.trigger_schedule(s.uid, trigger_by="bob")  # max_concurrent=1 still applies
    assert skipped.state is ExecutionState.CANCELLED
    assert [x.trigger_by for x in app.list_executions(trigger_type="manual")] == ["bob", "alice"]
    with pytest.raises(ValidationError, match="trigger_by"):
        app.trigger_schedule(s.uid, trigger_by="")


def test_one_off_schedule_disables_itself(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="once", type="T", next_run=T0 + timedelta(minutes=5))
    clock.advance(minutes=6)
    assert _sched(app).run_once().fired == 1
    after = app.get_schedule(s.uid)
    assert not after.enabled and after.next_run is None


def test_interrupted_when_the_scheduler_died_while_firing(
    app: Creep, clock: FrozenClock
) -> None:
    s = app.create_schedule(name="i", type="T", interval=60)
    # An execution without a task (a built-in job run inline) whose scheduler died. A
    # firing that creates a task cannot be half-written: test_schedule_firing_atomic.py.
    [e] = app.schedules.schedule_fire(s.uid, [Firing(T0)], run_by="dead", now=clock.now())
    assert e.state is ExecutionState.PENDING
    sch = _sched(app, lock_ttl=5)
    sch.run_once()
    assert app.get_execution(e.execution_uid).state is ExecutionState.PENDING  # too early
    clock.advance(11)
    sch.run_once()
    got = app.get_execution(e.execution_uid)
    assert got.state is ExecutionState.INTERRUPTED and got.finished_at is not None
    assert got.error_message is not None and "died" in got.error_message
    assert app.get_schedule(s.uid).failure_executions == 1


def test_interrupted_when_the_worker_died_on_the_last_attempt(
    app: Creep, clock: FrozenClock
) -> None:
    s = app.create_schedule(name="w", type="W", interval=60, max_retries=0)
    sch = _sched(app, lock_ttl=600)
    clock.advance(60)
    sch.run_once()
    [claimed] = app.store.task_claim("doomed-worker", ["W"], 1, clock.now(), 5.0)
    clock.advance(1)
    sch.run_once()
    assert _executions(app, s.uid)[0].state is ExecutionState.RUNNING
    clock.advance(30)  # the worker never heartbeats again; its claim expires
    app.maintain()
    assert app.get_task(claimed.task.task_id).status == "DEAD_LETTER"
    sch.run_once()
    [e] = _executions(app, s.uid)
    assert e.state is ExecutionState.INTERRUPTED and e.retry_count == 0


def test_truncation_flags_are_stored(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="tr", type="T", interval=60)
    [e] = app.schedules.schedule_fire(s.uid, [Firing(T0)], run_by="x", now=clock.now())
    stack = "Traceback (most recent call last):\n" + "  frame\n" * 5000 + "ValueError: boom\n"
    done = app.schedules.execution_finish(
        e.execution_uid, ExecutionState.FAILURE, clock.now(), result="r" * 70_000,
        error_message="boom", error_stack=stack,
    )
    got = app.get_execution(done.execution_uid)
    assert got.result_truncated and got.result is not None and len(got.result) == 64 * 1024
    assert got.error_stack_truncated and got.error_stack is not None
    assert got.error_stack.endswith("  frame\nValueError: boom\n")  # the top of the stack
    assert len(got.error_stack) == 10 * 1024
    small = app.schedules.schedule_fire(s.uid, [Firing(T0 + timedelta(minutes=1))],
                                        run_by="x", now=clock.now())[0]
    ok = app.schedules.execution_finish(small.execution_uid, ExecutionState.SUCCESS,
                                        clock.now(), result="{}")
    assert not ok.result_truncated and not ok.error_stack_truncated


def test_execution_states_are_enforced_by_the_database(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="sm", type="T", interval=60)
    [e] = app.schedules.schedule_fire(s.uid, [Firing(T0)], run_by="x", now=clock.now())
    app.schedules.execution_finish(e.execution_uid, ExecutionState.SUCCESS, clock.now())
    with pytest.raises(ConflictError):
        app.schedules.execution_finish(e.execution_uid, ExecutionState.FAILURE, clock.now())
    store = app.schedules
    with pytest.raises(ConflictError), store._sx() as conn:  # bypass Python's check
        conn.execute("UPDATE task_executions SET state = 'running' WHERE id = ?", (e.id,))


def test_execution_history_filters(app: Creep, clock: FrozenClock) -> None:
    a = app.create_schedule(name="a", type="T", interval=60, max_concurrent=1, tenant_id="t1")
    app.create_schedule(name="b", type="T", interval=60, max_concurrent=100, tenant_id="t2")
    sch = _sched(app)
    for _ in range(5):
        clock.advance(60)
        sch.run_once()
    assert len(app.list_executions(tenant_id="t2")) == 5
    skipped = app.list_executions(name="a", state="cancelled")
    assert len(skipped) == 4 and all(e.task_uid == a.uid for e in skipped)
    window = app.list_executions(started_from=T0 + timedelta(minutes=2),
                                 started_to=T0 + timedelta(minutes=4))
    assert len(window) == 4
    page1 = app.list_executions(limit=6)
    page2 = app.list_executions(limit=6, before=app.execution_cursor(page1[-1]))
    assert len(page1) == 6 and len(page2) == 4
    assert not {e.id for e in page1} & {e.id for e in page2}
    with pytest.raises(ValidationError, match="before"):
        app.list_executions(before="nonsense")
    with pytest.raises(ValidationError, match="state"):
        app.list_executions(state="exploded")


def test_retention_builtin_schedules(app: Creep, clock: FrozenClock) -> None:
    sch = app.scheduler(holder_id="R")
    sch.run_once()
    builtin = {x.name: x for x in app.list_schedules(tenant_id="_system")}
    assert set(builtin) == {"creep.retention.executions", "creep.retention.locks",
                            "creep.retention.tasks", "creep.retention.audit"}
    assert builtin["creep.retention.executions"].next_run == T0 + timedelta(hours=2)
    s = app.create_schedule(name="old", type="T", interval=60, enabled=False)
    old = [
        TaskExecution(
            id=0, tenant_id="default", task_uid=s.uid, task_name="old", task_type="T",
            execution_uid=f"old-{i}", task_id=None, run_by="x",
            scheduled_at=T0 - timedelta(days=100, minutes=i), started_at=T0 - timedelta(days=100),
            finished_at=T0 - timedelta(days=60 - i * 20), state=ExecutionState.SUCCESS,
            result=None, result_truncated=False, error_message=None, error_stack=None,
            error_stack_truncated=False, duration_ms=0, progress=100, retry_count=0,
            trigger_type=TriggerType.SCHEDULED, trigger_by=None, created_at=T0, updated_at=T0,
        )
        for i in range(3)
    ]  # finished 60, 40 and 20 days before T0: 100, 80 and 60 days before the purge
    assert app.schedules.execution_insert_many(old) == 3
    # A finished task 40 days old goes; a fresh one stays.
    stale = app.submit(task_type="GONE", idempotency_key="gone")
    app.cancel(stale.task_id)
    clock.advance(days=40)
    fresh = app.submit(task_type="KEEP", idempotency_key="keep")
    app.cancel(fresh.task_id)
    # A lock released long ago goes; the scheduler's own live lock stays.
    tok = app.store.lock_acquire("old.lock", "h", 1, clock.now() - timedelta(days=8))
    assert tok is not None
    app.store.lock_release("old.lock", tok, clock.now() - timedelta(days=8))
    report = sch.run_once()  # 40 days later: each built-in slot is due (misfire: once)
    assert set(report.retention) == set(builtin)
    remaining = {e.execution_uid for e in app.list_executions(schedule=s.uid)}
    assert remaining == {"old-1", "old-2"}  # within 90 days
    with pytest.raises(NotFound):
        app.get_task(stale.task_id)
    assert app.get_task(fresh.task_id).status == "CANCELLED"
    assert app.schedules.lock_get("old.lock") is None
    lock = app.schedules.lock_get(SCHEDULER_LOCK)
    assert lock is not None and lock["state"] == "active"
    runs = app.list_executions(tenant_id="_system")
    assert len(runs) == 4 and all(r.state is ExecutionState.SUCCESS for r in runs)
    assert all(r.result and '"removed"' in r.result for r in runs)
    manual = app.trigger_schedule(builtin["creep.retention.locks"].uid, trigger_by="ops")
    assert manual.state is ExecutionState.SUCCESS and manual.result == '{"removed": 0}'
    # The period is the built-in schedule's data: an operator shortens it like any field.
    ex = builtin["creep.retention.executions"]
    assert ex.data == '{"older_than_days":90.0}'
    app.update_schedule(ex.uid, data={"older_than_days": 70})
    run = app.trigger_schedule(ex.uid, trigger_by="ops")
    assert run.result == '{"removed": 1}'
    assert {e.execution_uid for e in app.list_executions(schedule=s.uid)} == {"old-2"}


def test_cron_schedule_across_dst_month_end_and_leap_day(db_url: str) -> None:
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")
    clock = FrozenClock(datetime(2028, 2, 26, tzinfo=ny).astimezone(UTC))
    app = Creep(db_url, clock=clock)
    try:
        daily = app.create_schedule(name="d", type="T", cron_expr="30 2 * * *",
                                    timezone="America/New_York", max_concurrent=100,
                                    misfire_grace_seconds=86_400)
        last = app.create_schedule(name="l", type="T", cron_expr="0 12 L * *",
                                   max_concurrent=100, misfire_grace_seconds=86_400)
        sch = _sched(app, lock_ttl=86_400)
        for _ in range(20 * 4):  # twenty days, 6 hours a tick: 2028-03-12 is spring-forward
            clock.advance(hours=6)
            sch.run_once()
        local = [e.scheduled_at.astimezone(ny) for e in _executions(app, daily.uid)]
        assert len(local) == 20 and len(set(d.date() for d in local)) == 20
        by_day = {d.day: (d.hour, d.minute) for d in local if d.month == 3}
        assert by_day[11] == (2, 30) and by_day[12] == (3, 0) and by_day[13] == (2, 30)
        month_ends = [e.scheduled_at for e in _executions(app, last.uid)]
        assert month_ends == [datetime(2028, 2, 29, 12, tzinfo=UTC)]  # leap day, month end
    finally:
        app.close()


def test_lock_states_are_enforced_by_the_database(app: Creep, clock: FrozenClock) -> None:
    from creep import IllegalTransition

    store = app.schedules
    token = store.lock_acquire("k", "h1", 5, clock.now())
    assert token is not None and store.lock_acquire("k", "h2", 5, clock.now()) is None
    # Even raw SQL cannot hand a live lock to someone else.
    with pytest.raises(IllegalTransition), store._sx() as conn:
        conn.execute("UPDATE task_locks SET token = 'stolen', holder_id = 'h2', "
                     "acquired_at = expires_at WHERE lock_key = 'k'")
    clock.advance(6)
    assert store.lock_expire_lapsed(clock.now()) >= 1
    lock = store.lock_get("k")
    assert lock is not None and lock["state"] == "expired"
    assert not store.lock_renew("k", "h1", token, 5, clock.now())
    again = store.lock_acquire("k", "h2", 5, clock.now())  # expired -> active
    assert again is not None and store.lock_release("k", again, clock.now())
    with pytest.raises(IllegalTransition), store._sx() as conn:  # released -> expired
        conn.execute("UPDATE task_locks SET state = 'expired' WHERE lock_key = 'k'")


def test_sync_reaches_changed_executions_behind_a_backlog(app: Creep, clock: FrozenClock) -> None:
    s = app.create_schedule(name="b", type="NOBODY", interval=10, max_concurrent=100)
    sch = _sched(app)
    for _ in range(5):
        clock.advance(10)
        sch.run_once()
    ex = _executions(app, s.uid)
    assert ex[-1].task_id is not None
    app.cancel(ex[-1].task_id)  # the newest one ends; four older ones wait for a worker
    assert app.schedules.execution_sync(clock.now(), limit=2) == 1
    assert [e.state for e in _executions(app, s.uid)] == (
        [ExecutionState.PENDING] * 4 + [ExecutionState.CANCELLED])
    assert app.schedules.execution_sync(clock.now(), limit=2) == 0


def test_concurrent_writers_cannot_fire_a_slot_twice(app: Creep, clock: FrozenClock) -> None:
    """Two 'leaders' (no fencing at all) racing over the same slots: the unique
    (schedule, scheduled_at) key lets exactly one execution per slot through."""
    from concurrent.futures import ThreadPoolExecutor

    s = app.create_schedule(name="race", type="T", interval=1, max_concurrent=10_000)
    slots = [T0 + timedelta(seconds=k) for k in range(30)]

    def fire(writer: int) -> int:
        won = 0
        for slot in slots:
            won += len(app.schedules.schedule_fire(
                s.uid, [Firing(slot)], run_by=f"w{writer}", now=clock.now()))
        return won

    with ThreadPoolExecutor(6) as pool:
        wins = list(pool.map(fire, range(6)))
    assert sum(wins) == len(slots)
    assert [e.scheduled_at for e in _executions(app, s.uid)] == slots
