"""Schedules changed while a slot is due or being fired, on every backend: an update that
leaves the timing as it was keeps a due slot, and a firing planned from a definition that
was changed before it wrote is not written from that stale definition."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from creep import Creep, FrozenClock
from creep.domain.errors import VersionConflict
from creep.domain.execution import TaskExecution
from creep.domain.schedule import Firing

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def _slots(app: Creep, uid: str) -> list[datetime]:
    return sorted(e.scheduled_at for e in app.list_executions(schedule=uid, limit=1000))


def _tick(app: Creep, holder: str = "A") -> None:
    app.scheduler(holder_id=holder, retention_jobs=[]).run_once()


@pytest.mark.parametrize("timing", [{"cron_expr": "*/5 * * * *"}, {"interval": 300}])
def test_enabling_an_enabled_schedule_keeps_its_due_slot(
    app: Creep, clock: FrozenClock, timing: dict[str, object]
) -> None:
    """`creep schedule enable` (or a PATCH repeating the timing) on a schedule that is
    already enabled changes nothing: the slot that came due before the scheduler's next
    tick still fires, instead of next_run jumping past it."""
    s = app.create_schedule(name="five", type="T", **timing)
    due = T0 + timedelta(minutes=5)
    assert s.next_run == due
    clock.advance(minutes=5, seconds=10)  # due; the scheduler has not ticked yet
    assert app.enable_schedule(s.uid).next_run == due
    same = app.update_schedule(s.uid, enabled=True, timezone="UTC", **timing)
    assert same.next_run == due
    _tick(app)
    assert _slots(app, s.uid) == [due]
    assert app.get_schedule(s.uid).next_run == due + timedelta(minutes=5)
    # A real change still recomputes next_run from now.
    off = app.disable_schedule(s.uid)
    assert off.next_run is None
    clock.advance(minutes=10)
    on = app.enable_schedule(s.uid)
    assert on.next_run == T0 + timedelta(minutes=20)


def _before_the_firing_writes(
    app: Creep, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], object]
) -> None:
    """Run `meanwhile` (another process's update) once, after the scheduler of `app` read
    the due schedule and planned its firing, before the firing's transaction starts."""
    store: Any = app.store
    real = store.schedule_fire

    def fire(uid: str, firings: Sequence[Firing], **kw: Any) -> list[TaskExecution]:
        monkeypatch.setattr(store, "schedule_fire", real)
        meanwhile()
        return real(uid, firings, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(store, "schedule_fire", fire)


def test_a_firing_does_not_overwrite_a_cron_changed_meanwhile(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler's machine runs 2 s ahead of the one a user changes the cron on (every
    minute -> minute 1 of each hour). The update's next_run is the slot the scheduler is
    firing; the firing then wrote next_run from the OLD cron (00:02), and the scheduler
    fired 00:02, a slot the new cron does not have."""
    slot = T0 + timedelta(minutes=1)
    user_clock = FrozenClock(T0)
    sched_clock = FrozenClock(slot + timedelta(seconds=2))
    user, leader = Creep(db_url, clock=user_clock), Creep(db_url, clock=sched_clock)
    try:
        s = user.create_schedule(name="minutely", type="T", cron_expr="* * * * *",
                                 max_concurrent=10)
        user_clock.set(slot - timedelta(seconds=2))
        _before_the_firing_writes(
            leader, monkeypatch,
            lambda: user.update_schedule(s.uid, cron_expr="1 * * * *"),
        )
        sch = leader.scheduler(holder_id="A", retention_jobs=[])
        sch.run_once()
        sch.run_once()  # a firing left to the next tick fires from the new cron
        assert _slots(user, s.uid) == [slot]
        assert user.get_schedule(s.uid).next_run == slot + timedelta(hours=1)
        sched_clock.advance(minutes=1)
        sch.run_once()
        assert _slots(user, s.uid) == [slot]
    finally:
        user.close()
        leader.close()


def test_a_firing_creates_its_task_from_the_definition_it_commits_with(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change of the TaskOrder template (type, data) committed before the firing's
    transaction: the task created after it follows the new definition."""
    s = app.create_schedule(name="report", type="REPORT_V1", interval=60, data={"v": 1})
    clock.advance(60)
    _before_the_firing_writes(
        app, monkeypatch,
        lambda: app.update_schedule(s.uid, type="REPORT_V2", data={"v": 2}),
    )
    sch = app.scheduler(holder_id="A", retention_jobs=[])
    sch.run_once()
    sch.run_once()
    [e] = app.list_executions(schedule=s.uid)
    assert e.scheduled_at == T0 + timedelta(seconds=60) and e.task_id is not None
    task = app.get_task(e.task_id)
    assert (task.task_type, task.input_payload) == ("REPORT_V2", {"v": 2})


def _before_the_update_writes(
    app: Creep, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], object]
) -> None:
    """Run `meanwhile` (the leader's tick) once, after an update of `app` read the schedule,
    before it writes."""
    store: Any = app.store
    real = store.schedule_save

    def save(sched: Any, version: int, **kw: Any) -> Any:
        monkeypatch.setattr(store, "schedule_save", real)
        meanwhile()
        return real(sched, version, **kw)

    monkeypatch.setattr(store, "schedule_save", save)


def test_an_update_does_not_bring_back_the_slot_a_firing_just_took(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader fires between an update's read and its write. An update of data (or
    priority) only wrote back the next_run and `enabled` it had read: a one-off that had
    just run came back enabled with its past next_run, and a recurring schedule's next_run
    went back to the slot that had just fired."""
    one = app.create_schedule(name="once", type="T", next_run=T0 + timedelta(minutes=1))
    rec = app.create_schedule(name="rec", type="T", cron_expr="* * * * *")
    sch = app.scheduler(holder_id="A", retention_jobs=[])
    clock.advance(minutes=1, seconds=1)
    _before_the_update_writes(app, monkeypatch, sch.run_once)
    updated = app.update_schedule(one.uid, data={"x": 1})
    assert (updated.enabled, updated.next_run, updated.data) == (False, None, '{"x":1}')
    assert app.get_schedule(rec.uid).next_run == T0 + timedelta(minutes=2)
    clock.advance(minutes=1)
    _before_the_update_writes(app, monkeypatch, sch.run_once)
    moved = app.update_schedule(rec.uid, priority=5)
    assert (moved.next_run, moved.priority) == (T0 + timedelta(minutes=3), 5)
    assert _slots(app, one.uid) == [T0 + timedelta(minutes=1)]
    assert _slots(app, rec.uid) == [T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]


def test_a_manual_trigger_creates_its_task_from_the_definition_it_commits_with(
    app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`app.trigger_schedule` read the schedule, built the TaskOrder from it, then fired in
    a transaction of its own without checking the schedule was still that one: an update
    committed in between gave the run the old type and data."""
    s = app.create_schedule(name="report", type="REPORT_V1", interval=3600, data={"v": 1})
    _before_the_firing_writes(
        app, monkeypatch,
        lambda: app.update_schedule(s.uid, type="REPORT_V2", data={"v": 2}),
    )
    e = app.trigger_schedule(s.uid, trigger_by="alice")
    assert e.task_id is not None and e.task_type == "REPORT_V2"
    task = app.get_task(e.task_id)
    assert (task.task_type, task.input_payload) == ("REPORT_V2", {"v": 2})
    assert [x.execution_uid for x in app.list_executions(schedule=s.uid)] == [e.execution_uid]


def test_a_manual_trigger_under_constant_updates_writes_nothing(
    app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schedule changed before every firing transaction of a trigger: after its bounded
    re-reads the trigger raises VersionConflict and writes no execution and no task."""
    s = app.create_schedule(name="busy", type="T", interval=3600)
    store: Any = app.store
    real = store.schedule_fire
    bumps = iter(range(100))

    def fire(uid: str, firings: Sequence[Firing], **kw: Any) -> list[TaskExecution]:
        app.update_schedule(s.uid, priority=next(bumps))
        return real(uid, firings, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(store, "schedule_fire", fire)
    with pytest.raises(VersionConflict):
        app.trigger_schedule(s.uid, trigger_by="alice")
    assert app.list_executions(schedule=s.uid) == []
    assert app.list_tasks(limit=10) == []


def _updated_before_firings(
    app: Creep, monkeypatch: pytest.MonkeyPatch, times: int, change: Callable[[int], object]
) -> list[int]:
    """Run `change(n)` (another process's update) right before each of the next `times`
    firing transactions of `app`'s store; the list counts the firings attempted."""
    store: Any = app.store
    real = store.schedule_fire
    calls: list[int] = []

    def fire(uid: str, firings: Sequence[Firing], **kw: Any) -> list[TaskExecution]:
        calls.append(len(firings))
        if len(calls) <= times:
            change(len(calls))
        return real(uid, firings, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(store, "schedule_fire", fire)
    return calls


def test_a_schedule_updated_while_it_fires_still_fires_in_that_tick(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader gave up a firing whose schedule changed after its read and left the slot to
    the next tick: a schedule updated in every read-to-fire window (a deploy bot PATCHing its
    tags every second) never fired. The leader now reads it again and fires in that tick."""
    s = app.create_schedule(name="busy", type="T", interval=60)
    clock.advance(60)
    calls = _updated_before_firings(
        app, monkeypatch, 2, lambda n: app.update_schedule(s.uid, priority=n))
    report = app.scheduler(holder_id="A", retention_jobs=[]).run_once()
    assert report.fired == 1 and len(calls) == 3
    [e] = app.list_executions(schedule=s.uid)
    assert e.scheduled_at == T0 + timedelta(seconds=60) and e.task_id is not None
    assert app.get_task(e.task_id).priority == 2  # from the definition it committed with
    assert app.get_schedule(s.uid).next_run == T0 + timedelta(seconds=120)


def test_a_schedule_disabled_while_it_fires_does_not_fire(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disabled between the leader's read and its firing: nothing fires, then or later."""
    s = app.create_schedule(name="off", type="T", cron_expr="* * * * *")
    clock.advance(minutes=1)
    _updated_before_firings(app, monkeypatch, 1, lambda n: app.disable_schedule(s.uid))
    sch = app.scheduler(holder_id="A", retention_jobs=[])
    report = sch.run_once()
    assert (report.fired, report.failed) == (0, 0)
    clock.advance(minutes=5)
    sch.run_once()
    assert app.list_executions(schedule=s.uid) == []
    assert app.get_schedule(s.uid).next_run is None


def test_the_leader_reads_a_changing_schedule_a_bounded_number_of_times_per_tick(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed before each of the tick's three firing attempts: the tick moves on (no
    endless loop on one schedule) and the next tick fires the slot."""
    s = app.create_schedule(name="busy", type="T", interval=60)
    clock.advance(60)
    calls = _updated_before_firings(
        app, monkeypatch, 3, lambda n: app.update_schedule(s.uid, priority=n))
    sch = app.scheduler(holder_id="A", retention_jobs=[])
    assert sch.run_once().fired == 0 and len(calls) == 3
    assert sch.run_once().fired == 1 and len(calls) == 4
    assert _slots(app, s.uid) == [T0 + timedelta(seconds=60)]


def test_an_update_without_a_version_applies_over_a_concurrent_one(
    app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`app.disable_schedule` (or update_schedule without expected_version) asked for no
    version check, yet raised VersionConflict when another process updated the schedule
    between its read and its write. It now applies its change over the other one."""
    s = app.create_schedule(name="two", type="T", interval=60)
    _before_the_update_writes(app, monkeypatch,
                              lambda: app.update_schedule(s.uid, priority=5))
    off = app.disable_schedule(s.uid)
    assert (off.enabled, off.next_run, off.priority, off.version) == (False, None, 5, 3)
    # With expected_version the caller asked for the check: still a conflict.
    _before_the_update_writes(app, monkeypatch,
                              lambda: app.update_schedule(s.uid, priority=6))
    with pytest.raises(VersionConflict):
        app.update_schedule(s.uid, expected_version=3, description="stale")
    assert app.get_schedule(s.uid).description is None
