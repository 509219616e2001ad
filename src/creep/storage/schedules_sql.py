"""Schedules in shared SQL: CRUD and the fenced firing transaction. A store gets every
schedule operation by inheriting ScheduleSqlMixin (through its backend mixin)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from creep.domain.errors import NotFound, VersionConflict
from creep.domain.execution import (
    ExecutionState,
    TaskExecution,
)
from creep.domain.ids import canonical_uuid
from creep.domain.schedule import Firing, LeadershipLost, ScheduledTask
from creep.domain.task_spec import TaskSpec
from creep.storage import pending_writes
from creep.storage.executions_sql import ExecutionSqlMixin
from creep.storage.retention_sql import RetentionSqlMixin
from creep.storage.schedule_sql_base import (
    _EXEC_INSERT,
    _SCHEDULE_SELECT,
    SCHEDULE_FIELDS,
    Conn,
)

_TENANT = SCHEDULE_FIELDS.index("tenant_id")


class ScheduleSqlMixin(ExecutionSqlMixin, RetentionSqlMixin):
    """Backend-neutral schedule operations. Writes a scheduler makes as leader are fenced:
    they run only while the named lock row still carries its token and has not expired."""

    # -- schedules -----------------------------------------------------------------------------

    def schedule_create(self, sched: ScheduledTask) -> ScheduledTask:
        marks = ", ".join("?" * len(SCHEDULE_FIELDS))
        with self._sx() as conn:
            conn.execute(
                f"INSERT INTO scheduled_tasks ({_SCHEDULE_SELECT}) VALUES ({marks})",
                self._schedule_params(sched),
            )
        return sched

    def schedule_get(self, key: str, tenant_id: str | None = None) -> ScheduledTask:
        """By uid, or by name within `tenant_id` (names are unique per tenant)."""
        with self._sx_read() as conn:
            return self._schedule_get(conn, key, tenant_id)

    def _schedule_get(
        self, conn: Conn, key: str, tenant_id: str | None, lock: bool = False
    ) -> ScheduledTask:
        suffix = self._for_update if lock else ""
        row = None
        # The uid as written, then in creep's form (a uid that is a UUID is stored so, see
        # validate_schedule; one chosen before that may be stored as written).
        for uid in dict.fromkeys((key, canonical_uuid(key))):
            row = conn.execute(
                f"SELECT {_SCHEDULE_SELECT} FROM scheduled_tasks WHERE uid = ?{suffix}", (uid,)
            ).fetchone()
            if row is not None:
                break
        if row is not None and tenant_id is not None and row[_TENANT] != tenant_id:
            # Another tenant's uid reads like a missing one: the key may still name one of
            # this tenant's schedules.
            row = None
        if row is None and tenant_id is not None:
            row = conn.execute(
                f"SELECT {_SCHEDULE_SELECT} FROM scheduled_tasks "
                f"WHERE tenant_id = ? AND name = ?{suffix}",
                (tenant_id, key),
            ).fetchone()
        if row is None:
            raise NotFound("schedule", key)
        return self._row_schedule(row)

    def schedule_in_transaction(self, conn: Any, uid: str) -> ScheduledTask | None:
        """The schedule `uid` as the open transaction on `conn` sees it (the connection a
        pending write gets, see pending_writes: e.g. what an update saved, for its audit
        row); None when there is none."""
        try:
            return self._schedule_get(self._sx_adapt(conn), uid, None)
        except NotFound:
            return None

    def schedule_list(
        self, *, tenant_id: str | None = None, enabled: bool | None = None,
        type: str | None = None, limit: int = 1000,
    ) -> list[ScheduledTask]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if tenant_id is not None:
            where.append("tenant_id = ?")
            params.append(tenant_id)
        if enabled is not None:
            where.append("enabled = ?")
            params.append(enabled)
        if type is not None:
            where.append("type = ?")
            params.append(type)
        params.append(limit)
        with self._sx_read() as conn:
            rows = conn.execute(
                f"SELECT {_SCHEDULE_SELECT} FROM scheduled_tasks WHERE {' AND '.join(where)} "
                "ORDER BY tenant_id, name LIMIT ?",
                params,
            ).fetchall()
        return [self._row_schedule(r) for r in rows]

    def schedule_save(
        self, sched: ScheduledTask, expected_version: int, *, timing: bool = True
    ) -> ScheduledTask:
        """Write a changed schedule (configuration and, with `timing`, next_run, enabled and
        the interval anchor) if it is still at `expected_version`; statistics are left to
        the scheduler. Without `timing` the stored next_run stands: the leader may have
        fired it since the caller read it (firings do not move the version)."""
        kept: tuple[str, ...] = (
            "uid", "tenant_id", "created_at", "version", "total_executions",
            "success_executions", "failure_executions", "consecutive_failures",
            "last_executed_at", "last_failure_error",
        )
        if not timing:
            kept += ("next_run", "enabled", "anchor_at")
        config = [c for c in SCHEDULE_FIELDS if c not in kept]
        params = self._schedule_params(sched)
        values = [params[SCHEDULE_FIELDS.index(c)] for c in config]
        sets = ", ".join(f'"{c}" = ?' if c == "interval" else f"{c} = ?" for c in config)
        with self._sx() as conn:
            row = conn.execute(
                f"UPDATE scheduled_tasks SET {sets}, version = version + 1 "
                "WHERE uid = ? AND version = ? RETURNING version",
                (*values, sched.uid, expected_version),
            ).fetchone()
            if row is None:
                current = conn.execute(
                    "SELECT version FROM scheduled_tasks WHERE uid = ?", (sched.uid,)
                ).fetchone()
                if current is None:
                    raise NotFound("schedule", sched.uid)
                raise VersionConflict("schedule", sched.uid, expected_version, current[0])
            return self._schedule_get(conn, sched.uid, None)

    def schedule_delete(self, uid: str, tenant_id: str | None = None) -> None:
        """Delete a schedule; its execution history stays (until retention removes it)."""
        with self._sx() as conn:
            found = self._schedule_get(conn, uid, tenant_id, lock=True)
            # The API's audit row reads what is deleted, as this transaction sees it.
            pending_writes.before_change(self, self._sx_driver(conn))
            conn.execute("DELETE FROM scheduled_tasks WHERE uid = ?", (found.uid,))

    def schedule_due(self, now: datetime, limit: int = 100) -> list[ScheduledTask]:
        with self._sx_read() as conn:
            rows = conn.execute(
                f"SELECT {_SCHEDULE_SELECT} FROM scheduled_tasks "
                f"WHERE enabled = {self._true} AND next_run <= ? "
                "ORDER BY next_run, priority DESC LIMIT ?",
                (self._ts(now), limit),
            ).fetchall()
        return [self._row_schedule(r) for r in rows]

    def _check_fence(self, conn: Conn, fence: tuple[str, str], now: datetime) -> None:
        lock_key, token = fence
        row = conn.execute(
            "SELECT token FROM task_locks WHERE lock_key = ? AND token = ? "
            f"AND state = 'active' AND expires_at >= ?{self._for_share}",
            (lock_key, token, self._ts(now)),
        ).fetchone()
        if row is None:
            raise LeadershipLost(lock_key)

    def schedule_fire(
        self, uid: str, firings: Sequence[Firing], *, run_by: str, now: datetime,
        expected_next_run: datetime | None = None, next_run: datetime | None = None,
        advance: bool = False, fence: tuple[str, str] | None = None,
        expected_version: int | None = None,
    ) -> list[TaskExecution]:
        """Record firings of one schedule in ONE transaction and return the executions
        written: each execution row (unique per (schedule, scheduled_at): a slot that has one
        already is left alone), the TaskOrder of each firing that carries a `spec` (with its
        `created`/`queued` events), and the schedule's next_run and statistics. A failure
        anywhere writes nothing, so a slot never has an execution without its task.

        A firing beyond max_concurrent (executions whose task is still pending, queued or
        running, or a built-in job's) is recorded `cancelled` with the reason; one whose
        order failed validation (`invalid`) is recorded `failure`. With `advance`, next_run
        moves from `expected_next_run` to `next_run` (only if nobody moved it meanwhile),
        and with `expected_version` only if the schedule is still at that version: firings
        planned from a definition changed since are not written (the caller plans again;
        without `advance`, a manual firing, VersionConflict says so and the transaction
        writes nothing, not even what rides along with it).
        With `fence`, raises LeadershipLost unless that lock is still held."""
        with self._sx() as conn:
            if fence is not None:
                self._check_fence(conn, fence, now)
            sched = self._schedule_get(conn, uid, None, lock=True)
            if advance and sched.next_run != expected_next_run:
                return []  # another leader handled this schedule meanwhile
            if expected_version is not None and sched.version != expected_version:
                # Changed since the firings were planned (their slots, TaskOrders and the
                # next_run were computed from the old definition): the caller replans.
                if not advance:
                    raise VersionConflict("schedule", uid, expected_version, sched.version)
                return []
            # What still runs, by the tasks' own state: an execution row lags its task until
            # the leader's sweep (forever with no scheduler up), and one whose task already
            # finished must not hold a slot. A built-in job's (no task) runs inline: it
            # counts. Read under the schedule's lock: a concurrent firing of this schedule
            # waits, then sees this one's execution and task.
            row = conn.execute(
                "SELECT count(*) FROM task_executions e LEFT JOIN tasks t "
                "ON t.task_id = e.task_id WHERE e.task_uid = ? "
                "AND e.state IN ('pending', 'running') AND (e.task_id IS NULL "
                "OR t.status IN ('PENDING', 'QUEUED', 'RUNNING'))",
                (uid,),
            ).fetchone()
            active = int(row[0])
            out: list[TaskExecution] = []
            specs: list[tuple[TaskExecution, TaskSpec]] = []
            skipped = 0
            for f in firings:
                e = self._firing_execution(sched, f, run_by, now, active)
                marks = ", ".join("?" * len(_EXEC_INSERT))
                got = conn.execute(
                    f"INSERT INTO task_executions ({', '.join(_EXEC_INSERT)}) "
                    f"VALUES ({marks}) ON CONFLICT DO NOTHING RETURNING id",
                    self._execution_params(e),
                ).fetchone()
                if got is None:
                    continue  # this slot fired already
                e.id = int(got[0])
                out.append(e)
                if e.state is ExecutionState.PENDING:
                    active += 1
                    if f.spec is not None:
                        specs.append((e, f.spec))
                elif e.state is ExecutionState.CANCELLED:
                    skipped += 1
                else:
                    # an invalid order: ended `failure` at once (the schedule is locked)
                    self._count(conn, e, {uid})
            if specs:
                tasks = self._create_tasks_in(conn, [s for _, s in specs], now)
                for (e, _), task in zip(specs, tasks, strict=True):
                    if task.task_id != e.task_id:  # replayed: the key's task exists already
                        conn.execute(
                            "UPDATE task_executions SET task_id = ? WHERE id = ?",
                            (task.task_id, e.id),
                        )
                        e.task_id = task.task_id
            sets = ["updated_at = ?"]
            params: list[Any] = [self._ts(now)]
            if advance:
                sets.append("next_run = ?")
                params.append(self._ts(next_run))
                if not sched.is_recurring:
                    sets.append("enabled = ?")
                    params.append(False)
            if any(e.state is ExecutionState.PENDING for e in out):
                sets.append("last_executed_at = ?")
                params.append(self._ts(now))
            if skipped:
                sets.append("total_executions = total_executions + ?")
                params.append(skipped)
            conn.execute(
                f"UPDATE scheduled_tasks SET {', '.join(sets)} WHERE uid = ?", (*params, uid)
            )
        if specs:
            self._wake("creep_tasks", "")  # after commit: a woken worker can see the tasks
        return out

    @staticmethod
    def _firing_execution(
        sched: ScheduledTask, f: Firing, run_by: str, now: datetime, active: int
    ) -> TaskExecution:
        """The execution row of one firing: pending (with its task), cancelled (skipped by
        max_concurrent) or failure (its TaskOrder is invalid)."""
        run = active < sched.max_concurrent
        state, error = ExecutionState.PENDING, None
        if not run:
            state = ExecutionState.CANCELLED
            error = (f"skipped: max_concurrent={sched.max_concurrent} reached "
                     f"({active} executions still running)")
        elif f.invalid is not None:
            state, error = ExecutionState.FAILURE, f.invalid
        pending = state is ExecutionState.PENDING
        return TaskExecution(
            id=0, tenant_id=sched.tenant_id, task_uid=sched.uid, task_name=sched.name,
            task_type=sched.type, execution_uid=f.execution_uid,
            # A built-in job (no spec) runs inline: its execution names no task.
            task_id=f.task_id if pending and f.spec is not None else None, run_by=run_by,
            scheduled_at=f.scheduled_at, started_at=now, finished_at=None if pending else now,
            state=state, result=None, result_truncated=False, error_message=error,
            error_stack=None, error_stack_truncated=False, duration_ms=0, progress=0,
            retry_count=0, trigger_type=f.trigger_type, trigger_by=f.trigger_by,
            created_at=now, updated_at=now,
        )
