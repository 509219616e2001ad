"""A leader ticking through both DST nights of a zone whose 02:00-03:00 is skipped in spring
and repeated in autumn, and a schedule deleted while its task runs (both backends)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from creep import Creep, FrozenClock

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(("night", "expected"), [
    # 2026-03-29: 02:00 CET -> 03:00 CEST, 02:30 does not exist: once, right after the gap.
    (datetime(2026, 3, 29, tzinfo=BERLIN), datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)),
    # 2026-10-25: 03:00 CEST -> 02:00 CET, 02:30 happens twice: once, the first time.
    (datetime(2026, 10, 25, tzinfo=BERLIN), datetime(2026, 10, 25, 2, 30, fold=0,
                                                     tzinfo=BERLIN)),
])
def test_a_daily_0230_cron_fires_once_on_each_dst_night(
    db_url: str, night: datetime, expected: datetime
) -> None:
    """Ticks every 10 minutes from the evening before to the evening after (the leader meets
    the gap and the repeated hour as they happen): one firing on the transition day, at the
    expected instant, one on each day around it."""
    clock = FrozenClock((night - timedelta(hours=4)).astimezone(UTC))
    app = Creep(db_url, clock=clock)
    try:
        s = app.create_schedule(name="nightly", type="T", cron_expr="30 2 * * *",
                                timezone="Europe/Berlin", max_concurrent=100)
        sch = app.scheduler(holder_id="A", retention_jobs=[], lock_ttl=3600)
        end = night + timedelta(days=1, hours=4)
        while clock.now() < end:
            clock.advance(minutes=10)
            sch.run_once()
        slots = sorted(e.scheduled_at for e in app.list_executions(schedule=s.uid))
        assert slots == [expected.astimezone(UTC),
                         datetime(2026, night.month, night.day + 1, 2, 30,
                                  tzinfo=BERLIN).astimezone(UTC)]
    finally:
        app.close()


def test_deleting_a_schedule_while_its_task_runs_keeps_the_history(
    app: Creep, clock: FrozenClock
) -> None:
    """The execution of a deleted schedule still follows its task to the end, and stays in
    the history (README: the history stays until retention removes it)."""
    s = app.create_schedule(name="job", type="T", interval=60)
    sch = app.scheduler(holder_id="A", retention_jobs=[])
    clock.advance(60)
    assert sch.run_once().fired == 1
    [e] = app.list_executions(schedule=s.uid)
    app.delete_schedule(s.uid)

    @app.handler("T")
    def ok(ctx: object) -> dict[str, int]:
        return {"done": 1}

    app.run_worker(burst=True)
    assert e.task_id is not None and app.get_task(e.task_id).status == "SUCCESS"
    clock.advance(1)
    sch.run_once()
    [after] = app.list_executions(schedule=s.uid)
    assert after.execution_uid == e.execution_uid and after.state.value == "success"
    assert after.result is not None and '"done"' in after.result
    assert app.get_execution(e.execution_uid).state.value == "success"
