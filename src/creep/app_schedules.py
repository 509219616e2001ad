"""The schedule half of the Python API (mixed into `creep.Creep`)."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from creep.domain.clock import Clock
from creep.domain.errors import ValidationError, VersionConflict, check_member
from creep.domain.execution import (
    ExecutionFilter,
    ExecutionState,
    TaskExecution,
    TriggerType,
    execution_cursor,
)
from creep.domain.schedule import (
    ScheduledTask,
    changes_timing,
    validate_schedule,
)
from creep.domain.task_spec import Limits
from creep.domain.text import bad_text
from creep.engine.retention import RetentionJob
from creep.engine.scheduler import MANUAL_FIRE_ATTEMPTS, Scheduler, SchedulerSettings, fire_manually
from creep.schedule_port import ScheduleStore

if TYPE_CHECKING:
    from creep.ports import Store


class SchedulesApi:
    clock: Clock
    limits: Limits
    #: Built-in jobs passed to scheduler(retention_jobs=...), by name: a manual trigger of
    #: their schedules runs them here too.
    _retention_jobs: dict[str, RetentionJob]

    if TYPE_CHECKING:
        @property
        def store(self) -> Store: ...

    @property
    def schedules(self) -> ScheduleStore:
        return cast(ScheduleStore, self.store)

    def create_schedule(self, **fields: Any) -> ScheduledTask:
        """Create a ScheduledTask: `name`, `type` (the task_type it submits) and one of
        `cron_expr` / `interval` (seconds) / `next_run` (one-off), plus the seed's fields and
        the TaskOrder template (project_id, env, resource_hints, tags, max_total_cost,
        currency). next_run is computed; invalid fields raise ValidationError."""
        sched = validate_schedule(fields, now=self.clock.now(), limits=self.limits)
        return self.schedules.schedule_create(sched)

    def get_schedule(self, key: str, *, tenant_id: str | None = None) -> ScheduledTask:
        """By uid, or by name when `tenant_id` is given."""
        return self.schedules.schedule_get(key, tenant_id)

    def list_schedules(
        self, *, tenant_id: str | None = None, enabled: bool | None = None,
        type: str | None = None, limit: int = 1000,
    ) -> list[ScheduledTask]:
        return self.schedules.schedule_list(
            tenant_id=tenant_id, enabled=enabled, type=type, limit=limit
        )

    def update_schedule(
        self, uid: str, *, expected_version: int | None = None, tenant_id: str | None = None,
        **changes: Any,
    ) -> ScheduledTask:
        """Change fields; next_run is recomputed when the timing or `enabled` changes. With
        `expected_version`, a schedule changed meanwhile raises VersionConflict; without it,
        the change is applied again over an update that landed between the read and the
        write (VersionConflict only if that keeps happening)."""
        for attempt in range(1, MANUAL_FIRE_ATTEMPTS + 1):
            current = self.schedules.schedule_get(uid, tenant_id)
            version = current.version if expected_version is None else expected_version
            updated = validate_schedule(
                changes, now=self.clock.now(), existing=current, limits=self.limits
            )
            try:
                return self.schedules.schedule_save(
                    updated, version, timing=changes_timing(changes, current, updated)
                )
            except VersionConflict:
                if expected_version is not None or attempt == MANUAL_FIRE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def enable_schedule(self, uid: str, *, tenant_id: str | None = None) -> ScheduledTask:
        return self.update_schedule(uid, tenant_id=tenant_id, enabled=True)

    def disable_schedule(self, uid: str, *, tenant_id: str | None = None) -> ScheduledTask:
        return self.update_schedule(uid, tenant_id=tenant_id, enabled=False)

    def delete_schedule(self, uid: str, *, tenant_id: str | None = None) -> None:
        self.schedules.schedule_delete(uid, tenant_id)

    def trigger_schedule(
        self, uid: str, *, trigger_by: str, tenant_id: str | None = None
    ) -> TaskExecution:
        """Fire a schedule now (trigger_type manual, trigger_by the principal), outside its
        timing; max_concurrent still applies (a skip is recorded `cancelled`). The task is
        built from the definition the firing's transaction finds (an update landing after
        the read is read again); VersionConflict if it changed under every attempt."""
        if not isinstance(trigger_by, str) or not trigger_by:
            raise ValidationError.single("trigger_by", "must name the principal")
        if (rule := bad_text(trigger_by)) is not None:
            raise ValidationError.single("trigger_by", rule)
        return fire_manually(
            self.schedules, uid, tenant_id=tenant_id, trigger_by=trigger_by, clock=self.clock,
            limits=self.limits, jobs=getattr(self, "_retention_jobs", {}),
        )

    def list_executions(
        self, *, limit: int = 100, before: str | None = None,
        tenant_id: str | None = None, schedule: str | None = None, name: str | None = None,
        state: str | None = None, trigger_type: str | None = None,
        started_from: datetime | None = None, started_to: datetime | None = None,
    ) -> list[TaskExecution]:
        """Execution history, newest first; filter by schedule uid, name, state, trigger and
        a started_at window (timezone-aware datetimes); page with
        `before=app.execution_cursor(last_row)`. `limit` is an integer >= 0; a bad window or
        limit raises ValidationError naming the argument."""
        check_member("state", state, ExecutionState)
        check_member("trigger_type", trigger_type, TriggerType)
        flt = ExecutionFilter(
            tenant_id=tenant_id, task_uid=schedule, task_name=name, state=state,
            trigger_type=trigger_type, started_from=started_from, started_to=started_to,
        )
        return self.schedules.execution_list(flt, limit=limit, before=before)

    @staticmethod
    def execution_cursor(execution: TaskExecution) -> str:
        return execution_cursor(execution)

    def get_execution(self, execution_uid: str) -> TaskExecution:
        return self.schedules.execution_get(execution_uid)

    def scheduler(self, **settings: Any) -> Scheduler:
        """A Scheduler on this app's database and clock (SchedulerSettings fields as keywords;
        `holder_id` and `retention_jobs` pass through)."""
        holder = settings.pop("holder_id", None)
        jobs = settings.pop("retention_jobs", None)
        if jobs:
            if not hasattr(self, "_retention_jobs"):
                self._retention_jobs = {}
            self._retention_jobs.update({job.name: job for job in jobs})
        return Scheduler(
            self.schedules, SchedulerSettings(**settings), clock=self.clock, holder_id=holder,
            retention_jobs=jobs, limits=self.limits,
        )

    def run_scheduler(self, stop: threading.Event, **settings: Any) -> None:
        """Run the leader-elected scheduler loop in this thread until `stop` is set."""
        self.scheduler(**settings).run(stop)
