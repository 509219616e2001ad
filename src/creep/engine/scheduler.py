"""The scheduler: a leader-elected loop that fires due schedule slots exactly once.

Leadership is the `creep.scheduler` row in `task_locks` (TTL, renewed every tick, fenced by
its token). Each firing is ONE fenced transaction: the execution rows (unique per
(schedule, slot)), their TaskOrders (idempotency keys derived from schedule + slot) with
their events, and the schedule's next_run and statistics; a scheduler dying midway leaves
nothing half-written. Every tick the leader also makes executions follow their tasks and
runs due built-in retention jobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime

from creep.domain.clock import Clock, SystemClock
from creep.domain.errors import CreepError, NotFound, ValidationError, VersionConflict
from creep.domain.execution import ExecutionState, TaskExecution, TriggerType
from creep.domain.lock import check_lock_ttl
from creep.domain.schedule import (
    SYSTEM_TENANT,
    FirePlan,
    Firing,
    LeadershipLost,
    ScheduledTask,
    attach_task_specs,
    plan_firings,
    validate_schedule,
)
from creep.domain.task_spec import Limits
from creep.engine.retention import RetentionJob, builtin_job, default_retention_jobs
from creep.schedule_port import ScheduleStore

log = logging.getLogger("creep.scheduler")

SCHEDULER_LOCK = "creep.scheduler"
#: How often the leader reads and plans a due schedule again in one tick when it was updated
#: between its read and its firing's transaction (then the next tick tries again).
FIRE_ATTEMPTS = 3
#: How often a manual trigger reads and fires again when the schedule was updated between
#: its read and its firing's transaction (then VersionConflict); so does an update that
#: names no expected version.
MANUAL_FIRE_ATTEMPTS = 5


@dataclass(slots=True)
class SchedulerSettings:
    tick: float = 1.0  # seconds between sweeps
    lock_ttl: float = 10.0  # leadership lapses this long after the last renewal
    lock_key: str = SCHEDULER_LOCK
    #: An active execution without a task this long after firing is `interrupted`.
    orphan_after: float | None = None  # default: 2 * lock_ttl
    due_batch: int = 100

    def __post_init__(self) -> None:
        # Seed 003 TaskLock: expires_at > acquired_at. A lock_ttl of zero wrote a lock that
        # expired when taken; a negative one, before (that scheduler then never led).
        self.lock_ttl = check_lock_ttl(self.lock_ttl, "lock_ttl")


@dataclass(slots=True)
class TickReport:
    leader: bool = False
    fired: int = 0
    skipped: int = 0  # max_concurrent
    missed: int = 0  # dropped by a misfire policy
    synced: int = 0
    failed: int = 0  # firings refused by the database (nothing written; retried next tick)
    retention: dict[str, int] = field(default_factory=dict)


class Scheduler:
    def __init__(
        self, store: ScheduleStore, settings: SchedulerSettings | None = None, *,
        clock: Clock | None = None, holder_id: str | None = None,
        retention_jobs: Sequence[RetentionJob] | None = None, limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or SchedulerSettings()
        self.clock = clock or SystemClock()
        self.holder_id = holder_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.jobs = {j.name: j for j in (
            default_retention_jobs() if retention_jobs is None else retention_jobs)}
        self.limits = limits or Limits()
        self.token: str | None = None
        self._installed = False

    # -- leadership ----------------------------------------------------------------------------

    def ensure_leader(self) -> bool:
        s, now = self.settings, self.clock.now()
        if self.token is not None:
            if self.store.lock_renew(s.lock_key, self.holder_id, self.token, s.lock_ttl, now):
                return True
            log.warning("scheduler %s lost leadership (lock expired or taken)", self.holder_id)
            self.token = None
        self.token = self.store.lock_acquire(
            s.lock_key, self.holder_id, s.lock_ttl, now, "scheduler: fire due schedule slots"
        )
        if self.token is not None:
            log.info("scheduler %s is the leader", self.holder_id)
        return self.token is not None

    def release(self) -> None:
        if self.token is not None:
            self.store.lock_release(self.settings.lock_key, self.token, self.clock.now())
            self.token = None

    @property
    def fence(self) -> tuple[str, str] | None:
        return None if self.token is None else (self.settings.lock_key, self.token)

    # -- one sweep -----------------------------------------------------------------------------

    def run_once(self) -> TickReport:
        report = TickReport()
        if not self.ensure_leader():
            return report
        report.leader = True
        try:
            if not self._installed:
                self.install_builtin_schedules()
            now = self.clock.now()
            orphan = self.settings.orphan_after or 2 * self.settings.lock_ttl
            report.synced = self.store.execution_sync(now, orphan_after=orphan)
            self.store.lock_expire_lapsed(now)
            for sched in self.store.schedule_due(now, self.settings.due_batch):
                try:
                    self._fire_due(sched, report)
                except NotFound:
                    continue  # deleted since it was read; nothing to fire
                except LeadershipLost:
                    raise
                except CreepError as exc:
                    # Nothing of this firing was written: the slot fires on a later tick.
                    report.failed += 1
                    log.warning("schedule %s: firing failed, retried next tick: %s",
                                sched.name, exc)
        except LeadershipLost:
            log.warning("scheduler %s was fenced off; stepping down", self.holder_id)
            self.token = None
            report.leader = False
        return report

    def _fire_due(self, sched: ScheduledTask, report: TickReport) -> None:
        """Fire the due slots of `sched`. A schedule updated between the read and the firing's
        transaction (its version moved: nothing was written) is read and planned again in
        this tick, up to FIRE_ATTEMPTS times, so one updated often still fires on time."""
        for attempt in range(1, FIRE_ATTEMPTS + 1):
            now = self.clock.now()
            plan = plan_firings(sched, now)
            builtin, executions = self._fire_plan(sched, plan, now)
            if executions or attempt == FIRE_ATTEMPTS:
                break
            fresh = self.store.schedule_get(sched.uid)  # NotFound: deleted meanwhile
            if fresh.version == sched.version:
                break  # not a change: fired already, or nothing to fire
            if not fresh.enabled or fresh.next_run is None or fresh.next_run > now:
                return  # the update left nothing due now (disabled, moved on)
            sched = fresh
        report.missed += plan.missed
        if plan.missed:
            log.info("schedule %s: %d missed slot(s) dropped by misfire policy %s",
                     sched.name, plan.missed, sched.misfire_policy.value)
        pending = [e for e in executions if e.state is ExecutionState.PENDING]
        report.fired += len(pending)
        report.skipped += sum(e.state is ExecutionState.CANCELLED for e in executions)
        if builtin is not None:
            for e in pending:
                report.retention[sched.type] = self.run_builtin(builtin, e, sched)

    def _fire_plan(
        self, sched: ScheduledTask, plan: FirePlan, now: datetime
    ) -> tuple[RetentionJob | None, list[TaskExecution]]:
        """One firing transaction of `plan`, from the definition `sched` (at its version)."""
        try:
            builtin = self._builtin(sched)
        except ValidationError as exc:
            # A built-in schedule whose job this scheduler was not given: its runs are
            # recorded failed (no task: no worker would run one), saying so.
            firings = [Firing(slot, invalid=exc.message) for slot in plan.fire]
            builtin = None
        else:
            firings = [Firing(slot) for slot in plan.fire]
            if builtin is None:
                attach_task_specs(sched, firings, now=now, limits=self.limits)
        executions = self.store.schedule_fire(
            sched.uid, firings, run_by=self.holder_id, now=now,
            expected_next_run=sched.next_run, next_run=plan.next_run, advance=True,
            fence=self.fence, expected_version=sched.version,
        )
        return builtin, executions

    def _builtin(self, sched: ScheduledTask) -> RetentionJob | None:
        """The built-in job a system schedule runs inline (no TaskOrder), if it is one;
        ValidationError for a system schedule of a job this scheduler does not know."""
        return builtin_job(sched, self.jobs)

    def run_builtin(self, job: RetentionJob, e: TaskExecution, sched: ScheduledTask) -> int:
        try:
            removed = job.run(self.store, self.clock.now(), sched.data)
        except Exception as exc:
            self.store.execution_finish(
                e.execution_uid, ExecutionState.FAILURE, self.clock.now(),
                error_message=str(exc), error_stack=traceback.format_exc(),
            )
            log.exception("retention job %s failed", job.name)
            return 0
        self.store.execution_finish(
            e.execution_uid, ExecutionState.SUCCESS, self.clock.now(),
            result=f'{{"removed": {removed}}}',
        )
        log.info("retention job %s removed %d rows", job.name, removed)
        return removed

    def install_builtin_schedules(self) -> None:
        """Create the built-in retention schedules that do not exist yet (an operator may
        change or disable them afterwards like any schedule)."""
        for job in self.jobs.values():
            try:
                self.store.schedule_get(job.name, SYSTEM_TENANT)
                continue
            except CreepError:
                pass
            sched = validate_schedule(
                {"tenant_id": SYSTEM_TENANT, "name": job.name, "type": job.name,
                 "cron_expr": job.cron_expr, "description": job.description,
                 "misfire_policy": "once", "max_duration_seconds": 3600,
                 "data": {"older_than_days": job.older_than_days}},
                now=self.clock.now(), limits=self.limits,
            )
            with contextlib.suppress(CreepError):  # another process installed it meanwhile
                self.store.schedule_create(sched)
        self._installed = True

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Sweep every `tick` seconds until `stop` is set; then give up leadership."""
        try:
            while not stop.is_set():
                try:
                    report = self.run_once()
                    if report.fired or report.skipped or report.missed or report.failed:
                        log.info("scheduler tick: %s", report)
                except CreepError as exc:
                    log.warning("scheduler tick failed: %s", exc)
                stop.wait(self.settings.tick)
        finally:
            try:
                self.release()
            except CreepError as exc:
                log.warning("releasing the scheduler lock failed: %s", exc)



def fire_manually(
    store: ScheduleStore, uid: str, *, tenant_id: str | None, trigger_by: str, clock: Clock,
    limits: Limits, jobs: Mapping[str, RetentionJob],
    around: Callable[[ScheduledTask, Firing, datetime], AbstractContextManager[object]]
    | None = None,
) -> TaskExecution:
    """Fire a schedule now (trigger_type manual), outside its timing: the app's and the
    REST route's trigger. Only from the definition read: an update committed between the
    read and the firing's transaction (which then rolls back, with whatever `around` made
    ride it, e.g. an audit row) is read and fired anew, up to MANUAL_FIRE_ATTEMPTS times,
    then VersionConflict. A built-in schedule runs its job (from `jobs`) here, never a
    task; one this process does not know is refused before anything is written."""
    for attempt in range(1, MANUAL_FIRE_ATTEMPTS + 1):
        sched = store.schedule_get(uid, tenant_id)
        now = clock.now()
        firing = Firing(now, TriggerType.MANUAL, trigger_by)
        job = builtin_job(sched, jobs)
        if job is None:  # the task is written with the execution, in one transaction
            attach_task_specs(sched, [firing], now=now, limits=limits)
        try:
            with around(sched, firing, now) if around else contextlib.nullcontext():
                [execution] = store.schedule_fire(
                    sched.uid, [firing], run_by=f"api:{trigger_by}", now=now,
                    expected_version=sched.version,
                )
        except VersionConflict:
            if attempt == MANUAL_FIRE_ATTEMPTS:
                raise
            continue
        break
    if job is not None and execution.state is ExecutionState.PENDING:
        Scheduler(store, clock=clock).run_builtin(job, execution, sched)
    return store.execution_get(execution.execution_uid)
