"""Edges of built-in jobs a scheduler does not know, and of cron inside a repeated hour."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from creep import Creep, FrozenClock
from creep.domain.cron import next_cron
from creep.engine.retention import RetentionJob


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)
    yield creep_app
    creep_app.close()


# -- built-in jobs ---------------------------------------------------------------------------


def test_scheduler_queues_a_task_for_a_builtin_job_it_does_not_know(
    app: Creep, clock: FrozenClock
) -> None:
    """Commit 5f28e07 made a manual trigger of a built-in (tenant _system) schedule whose job
    is not registered refuse, "instead of queueing a task no worker runs". The scheduler's own
    firing path (Scheduler._builtin) still does exactly that: a leader that was not given the
    job (another process, or one started with the default jobs) fires the schedule through
    attach_task_specs, and a QUEUED task of type `acme.retention.blobs` in tenant _system waits
    forever, its execution pending with it."""
    ran: list[datetime] = []
    job = RetentionJob("acme.retention.blobs", "* * * * *", 1.0,
                       lambda store, cutoff, now: ran.append(now) or 0)
    installer = app.scheduler(retention_jobs=[job], holder_id="installer")
    installer.run_once()  # installs the built-in schedule
    installer.release()
    leader = app.scheduler(holder_id="default-leader")  # the default jobs only
    clock.advance(120)
    leader.run_once()
    queued = app.list_tasks(tenant_id="_system")
    assert [t.task_type for t in queued] == [], (
        "the scheduler queued a task for a built-in job no worker handles")
    for e in app.list_executions(name="acme.retention.blobs", tenant_id="_system"):
        assert e.task_id is None, "a built-in job's execution names a task"


# -- cron ------------------------------------------------------------------------------------


def test_next_cron_in_a_repeated_hour_does_not_walk_back_hours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside a repeated (fall-back) hour next_cron once walked cronsim from 3 h before
    `after`, mapping every local time it met (an every-second schedule: ~11,000 per call,
    and plan_firings calls it once per slot, up to 10,000). It now maps a handful: counted,
    not timed."""
    from creep.domain import cron

    mapped = 0
    real = cron._instants

    def counting(*args: object) -> list[datetime]:
        nonlocal mapped
        mapped += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cron, "_instants", counting)
    after = datetime(2025, 11, 2, 5, 0, tzinfo=UTC)  # 01:00 EDT, the repeated hour's start
    for _ in range(100):
        after = next_cron("* * * * * *", after, "America/New_York")
    assert after == datetime(2025, 11, 2, 5, 1, 40, tzinfo=UTC)
    assert mapped <= 300, f"100 every-second slots mapped {mapped} local times"
    second = datetime(2025, 11, 2, 6, 0, 30, tzinfo=UTC)  # 01:00:30 EST, the second pass
    assert next_cron("* * * * * *", second, "America/New_York") == second + timedelta(seconds=1)
