"""Retention as built-in schedules: each job is a ScheduledTask (tenant `_system`, name = type
= the job's name) that the leader scheduler runs itself. Its period lives in the schedule's
`data` (`{"older_than_days": N}`), so operators change it with `update_schedule` like any other
field. The list is pluggable: pass your own jobs to the Scheduler (the audit log adds its purge
this way once that table exists)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import orjson

from creep.domain.errors import ValidationError
from creep.domain.schedule import SYSTEM_TENANT, ScheduledTask

if TYPE_CHECKING:
    from creep.schedule_port import ScheduleStore

#: audit_events rows younger than this are immutable (a trigger in the api migration).
AUDIT_MIN_DAYS = 90


@dataclass(slots=True, frozen=True)
class RetentionJob:
    name: str
    cron_expr: str
    older_than_days: float  # the default period, written into the schedule's data
    #: Removes what is older than the cutoff; returns the number of rows removed.
    purge: Callable[[ScheduleStore, datetime, datetime], int]  # (store, cutoff, now)
    description: str = ""

    def run(self, store: ScheduleStore, now: datetime, data: str | None) -> int:
        days = self.older_than_days
        if data:
            given: Any = orjson.loads(data)
            if isinstance(given, dict) and isinstance(given.get("older_than_days"), int | float):
                days = float(given["older_than_days"])
        return self.purge(store, now - timedelta(days=days), now)


@dataclass(slots=True, frozen=True)
class RetentionSettings:
    """Default periods for newly installed built-in schedules."""

    executions_days: float = 90.0
    locks_days: float = 7.0
    #: Finished tasks and their events; None installs no task retention.
    tasks_days: float | None = 30.0
    #: The REST API's audit log (seed 003: 90 days). The database refuses to delete audit
    #: rows younger than 90 days, so a shorter period acts as 90.
    audit_days: float = 90.0
    #: Tasks the task retention deletes per transaction (a larger batch goes in several).
    tasks_chunk: int = 5_000

    def __post_init__(self) -> None:
        if isinstance(self.tasks_chunk, bool) or not isinstance(self.tasks_chunk, int) \
                or self.tasks_chunk < 1:
            raise ValidationError.single("tasks_chunk", "must be an integer >= 1")


#: How long one run of a default job keeps deleting (seconds of real time). The leader runs
#: the job inside its tick: a first purge of a large backlog would otherwise hold back every
#: other schedule until it ends. What is left goes at the next run.
DRAIN_BUDGET_S = 60.0


def _drain(purge: Callable[[], int]) -> int:
    total = 0
    give_up = time.monotonic() + DRAIN_BUDGET_S
    while True:
        n = purge()
        total += n
        if n == 0 or time.monotonic() >= give_up:
            return total


def _purge_tasks(store: ScheduleStore, cutoff: datetime, chunk: int) -> int:
    """Fold the task events not yet in the /metrics rollup first (metrics_fold.py): a scrape
    folds them, but one may not have run since (Prometheus down, a short period), and the
    counters must keep what goes. Both stores keep the rollup."""
    from creep.engine.metrics_fold import FoldStore, env_max_task_types, fold_task_events

    fold_task_events(cast(FoldStore, store), budget=DRAIN_BUDGET_S,
                     max_task_types=env_max_task_types())
    return _drain(lambda: store.retention_purge_tasks(cutoff, chunk))


def default_retention_jobs(settings: RetentionSettings | None = None) -> list[RetentionJob]:
    s = settings or RetentionSettings()
    jobs = [
        RetentionJob(
            "creep.retention.executions", "0 2 * * *", s.executions_days,
            lambda store, cutoff, now: _drain(lambda: store.retention_purge_executions(cutoff)),
            "delete finished task executions older than data.older_than_days",
        ),
        RetentionJob(
            "creep.retention.locks", "0 3 * * *", s.locks_days,
            lambda store, cutoff, now: store.retention_purge_locks(cutoff, now),
            "mark lapsed locks expired; delete released/expired locks older than "
            "data.older_than_days",
        ),
    ]
    jobs.append(RetentionJob(
        "creep.retention.audit", "0 2 * * *", s.audit_days,  # seed 003: daily at 2AM
        lambda store, cutoff, now: _drain(lambda: store.retention_purge_audit(
            min(cutoff, now - timedelta(days=AUDIT_MIN_DAYS)))),
        "delete audit events older than data.older_than_days (at least 90)",
    ))
    if s.tasks_days is not None:
        jobs.append(RetentionJob(
            "creep.retention.tasks", "30 2 * * *", s.tasks_days,
            lambda store, cutoff, now: _purge_tasks(store, cutoff, s.tasks_chunk),
            "delete finished tasks and their events older than data.older_than_days",
        ))
    return jobs


def builtin_job(
    sched: ScheduledTask, registered: Mapping[str, RetentionJob]
) -> RetentionJob | None:
    """The job a built-in schedule (tenant _system) runs: a default one or one `registered`
    in this process; None for an ordinary schedule. A built-in schedule of a job unknown
    here is refused (ValidationError): queued as a task, no worker would ever run it."""
    if sched.tenant_id != SYSTEM_TENANT:
        return None
    job = registered.get(sched.type) or next(
        (j for j in default_retention_jobs() if j.name == sched.type), None)
    if job is None:
        raise ValidationError.single(
            "type", f"built-in job {sched.type!r} is not registered in this process: trigger "
            "it where the scheduler that runs it was given it (retention_jobs)")
    return job
