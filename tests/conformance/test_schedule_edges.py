"""Schedules: a data-only change keeps the timing, a one-off survives being disabled, and a
frequent cron caught up after a long outage fires its latest late slot and every slot in
the grace."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from creep import Creep, FrozenClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def test_updating_data_keeps_next_run_of_a_recurring_schedule(
    app: Creep, clock: FrozenClock
) -> None:
    s = app.create_schedule(name="nightly", type="REPORT", cron_expr="0 2 * * *")
    assert s.next_run == T0 + timedelta(hours=2)
    changed = app.update_schedule(s.uid, data={"older_than_days": 30})
    assert changed.enabled
    assert changed.next_run == T0 + timedelta(hours=2)
    clock.advance(hours=3)
    report = app.scheduler(holder_id="A", retention_jobs=[]).run_once()
    assert report.fired == 1


def test_disable_enable_keeps_a_one_off_schedule(app: Creep, clock: FrozenClock) -> None:
    at = T0 + timedelta(hours=5)
    s = app.create_schedule(name="once", type="T", next_run=at)
    app.disable_schedule(s.uid)
    on = app.enable_schedule(s.uid)
    assert on.enabled and on.next_run == at


def test_cron_catch_up_after_long_downtime_fires_latest_and_in_grace_slots(
    app: Creep, clock: FrozenClock
) -> None:
    s = app.create_schedule(name="m", type="T", cron_expr="* * * * *",
                            misfire_grace_seconds=300, max_concurrent=100)
    clock.advance(days=8, seconds=30)
    now = clock.now()
    app.scheduler(holder_id="A", retention_jobs=[]).run_once()
    got = sorted(e.scheduled_at for e in app.list_executions(schedule=s.uid, limit=1000))
    in_grace = [now - timedelta(seconds=30) - timedelta(minutes=k) for k in range(4, -1, -1)]
    latest_late = in_grace[0] - timedelta(minutes=1)
    assert got == [latest_late, *in_grace]
    assert app.get_schedule(s.uid).next_run == now + timedelta(seconds=30)
