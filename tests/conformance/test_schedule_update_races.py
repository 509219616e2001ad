"""Schedules changed while a slot is due, on every backend: an update that leaves the timing
as it was keeps a due slot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from creep import Creep, FrozenClock

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
