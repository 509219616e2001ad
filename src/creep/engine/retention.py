"""Retention as built-in schedules: each job is a ScheduledTask (tenant `_system`) that the
leader scheduler runs itself. The list is pluggable: pass your own jobs to the Scheduler
(e.g. an audit-log purge once that table exists)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from creep.schedule_port import ScheduleStore

SYSTEM_TENANT = "_system"


@dataclass(slots=True, frozen=True)
class RetentionJob:
    name: str  # also the schedule's name and type (unique in tenant _system)
    cron_expr: str
    run: Callable[[ScheduleStore, datetime], int]  # returns the number of rows removed
    description: str = ""


@dataclass(slots=True, frozen=True)
class RetentionSettings:
    executions_days: float = 90.0
    locks_days: float = 7.0
    #: Finished tasks and their events; None keeps them for ever.
    tasks_days: float | None = 30.0


def _drain(purge: Callable[[], int]) -> int:
    total = 0
    while True:
        n = purge()
        total += n
        if n == 0:
            return total


def default_retention_jobs(settings: RetentionSettings | None = None) -> list[RetentionJob]:
    s = settings or RetentionSettings()
    jobs = [
        RetentionJob(
            "creep.retention.executions", "0 2 * * *",
            lambda store, now: _drain(lambda: store.retention_purge_executions(
                now - timedelta(days=s.executions_days))),
            f"delete finished task executions older than {s.executions_days:g} days",
        ),
        RetentionJob(
            "creep.retention.locks", "0 3 * * *",
            lambda store, now: store.retention_purge_locks(
                now - timedelta(days=s.locks_days), now),
            f"expire lapsed locks; delete released/expired locks older than {s.locks_days:g} days",
        ),
    ]
    if s.tasks_days is not None:
        days = s.tasks_days
        jobs.append(RetentionJob(
            "creep.retention.tasks", "30 2 * * *",
            lambda store, now: _drain(lambda: store.retention_purge_tasks(
                now - timedelta(days=days))),
            f"delete finished tasks and their events older than {days:g} days",
        ))
    return jobs
