"""Execution history in shared SQL: listing, bulk writes, ending one, and the sweep that
makes executions follow their tasks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson

from creep.domain.errors import NotFound
from creep.domain.execution import (
    ACTIVE_EXECUTION_STATES,
    ExecutionFilter,
    ExecutionState,
    TaskExecution,
    check_execution_page,
    check_execution_transition,
    execution_state_for,
    parse_execution_cursor,
    truncate_error_stack,
    truncate_result,
)
from creep.domain.schedule import SYSTEM_TENANT
from creep.storage.schedule_sql_base import (
    _EXEC_INSERT,
    _EXECUTION_SELECT,
    EXECUTION_FIELDS,
    Conn,
    ScheduleSqlBase,
    _ms,
)


class ExecutionSqlMixin(ScheduleSqlBase):
    # -- executions ----------------------------------------------------------------------------

    def execution_list(
        self, flt: ExecutionFilter, *, limit: int = 100, before: str | None = None
    ) -> list[TaskExecution]:
        """Newest first (started_at desc, id desc); page on with `before` =
        `execution_cursor(last row)`. A window bound must be timezone-aware and `limit` an
        integer >= 0 (ValidationError naming the argument)."""
        limit = check_execution_page(flt, limit, before)
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column in ("tenant_id", "task_uid", "task_name", "state", "trigger_type"):
            value = getattr(flt, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if flt.started_from is not None:
            where.append("started_at >= ?")
            params.append(self._ts(flt.started_from))
        if flt.started_to is not None:
            where.append("started_at < ?")
            params.append(self._ts(flt.started_to))
        if before is not None:
            started, last_id = parse_execution_cursor(before)
            where.append("(started_at < ? OR (started_at = ? AND id < ?))")
            params.extend([self._ts(started), self._ts(started), last_id])
        params.append(limit)
        with self._sx_read() as conn:
            rows = conn.execute(
                f"SELECT {_EXECUTION_SELECT} FROM task_executions WHERE {' AND '.join(where)} "
                "ORDER BY started_at DESC, id DESC LIMIT ?",
                params,
            ).fetchall()
        return [self._row_execution(r) for r in rows]

    def execution_get(self, execution_uid: str) -> TaskExecution:
        with self._sx_read() as conn:
            row = conn.execute(
                f"SELECT {_EXECUTION_SELECT} FROM task_executions WHERE execution_uid = ?",
                (execution_uid,),
            ).fetchone()
        if row is None:
            raise NotFound("execution", execution_uid)
        return self._row_execution(row)

    def execution_insert_many(self, executions: Sequence[TaskExecution]) -> int:
        """Bulk-write history rows (imports, benchmarks); ids are assigned by the database."""
        marks = ", ".join("?" * len(_EXEC_INSERT))
        with self._sx() as conn:
            self._executemany(
                conn,
                f"INSERT INTO task_executions ({', '.join(_EXEC_INSERT)}) VALUES ({marks})",
                [self._execution_params(e) for e in executions],
            )
        return len(executions)

    def execution_finish(
        self, execution_uid: str, state: ExecutionState, now: datetime, *,
        result: str | None = None, error_message: str | None = None,
        error_stack: str | None = None,
    ) -> TaskExecution:
        """End an execution that has no task (built-in jobs run by the scheduler itself)."""
        with self._sx() as conn:
            row = conn.execute(
                f"SELECT {_EXECUTION_SELECT} FROM task_executions WHERE execution_uid = ?"
                f"{self._for_update}",
                (execution_uid,),
            ).fetchone()
            if row is None:
                raise NotFound("execution", execution_uid)
            e = self._row_execution(row)
            check_execution_transition(e.state, state)
            was = e.state
            e.state, e.finished_at, e.updated_at = state, max(now, e.started_at), now
            e.result, e.result_truncated = truncate_result(result)
            e.error_stack, e.error_stack_truncated = truncate_error_stack(error_stack)
            e.error_message = error_message
            e.duration_ms = _ms(e.finished_at - e.started_at)
            if self._write_execution(conn, e, was):
                self._count(conn, e)
        return e

    def _first_start(self, conn: Conn, task_id: str) -> datetime | None:
        """When a task was first claimed: its first `started` event."""
        row = conn.execute(
            f"SELECT created_at FROM task_events WHERE {self._events_of} task_id = ? "
            "AND event_type = 'started' ORDER BY event_id LIMIT 1",
            (task_id,),
        ).fetchone()
        return None if row is None else self._from_ts(row[0])

    def execution_sync(
        self, now: datetime, *, orphan_after: float = 60.0, limit: int = 1000
    ) -> int:
        """Make executions follow their tasks (state, timings, result, error, progress,
        retries) and count finished ones in the schedule statistics. An active execution
        whose task does not exist `orphan_after` seconds after firing (its task was lost)
        becomes `interrupted`; a built-in job's (which has no task: the leader runs it
        inline, however long it takes) only past its schedule's max_duration_seconds: a
        leader that stalls in a long purge loses its lock, not its job."""
        changed = 0
        locked: set[str] = set()  # schedules whose row this sweep has locked (PostgreSQL)
        with self._sx() as conn:
            rows = conn.execute(
                f"SELECT {', '.join('e.' + c for c in EXECUTION_FIELDS)}, t.task_id, t.status, "
                "t.started_at, t.finished_at, t.attempt, t.progress, t.result_payload, "
                "t.result_message, t.last_error, t.result_code, s.tenant_id, "
                "s.max_duration_seconds "
                "FROM task_executions e LEFT JOIN tasks t ON t.task_id = e.task_id "
                "LEFT JOIN scheduled_tasks s ON s.uid = e.task_uid "
                "WHERE e.state IN ('pending', 'running') AND ("
                # an orphan old enough to call interrupted
                " (t.task_id IS NULL AND e.created_at < ?) OR ("
                # ... or a task whose state, progress or attempts moved on
                "  t.task_id IS NOT NULL AND NOT ("
                "   t.status IN ('PENDING', 'QUEUED', 'RUNNING') AND e.progress = t.progress"
                "   AND e.retry_count = CASE WHEN t.attempt > 0 THEN t.attempt - 1 ELSE 0 END"
                "   AND (e.state = 'running' OR t.status <> 'RUNNING'))))"
                " ORDER BY e.id LIMIT ?",
                (self._ts(now - timedelta(seconds=orphan_after)), limit),
            ).fetchall()
            n = len(EXECUTION_FIELDS)
            for row in rows:
                e = self._row_execution(row[:n])
                (tid, status, t_started, t_finished, attempt, progress, payload, message, error,
                 code, owner, max_duration) = row[n:]
                if tid is None and owner == SYSTEM_TENANT and (
                    now - e.started_at < timedelta(seconds=int(max_duration or 0))
                ):
                    continue  # a built-in job, maybe still running
                if tid is None:
                    check_execution_transition(e.state, ExecutionState.INTERRUPTED)
                    was = e.state
                    e.state, e.finished_at, e.updated_at = ExecutionState.INTERRUPTED, now, now
                    e.error_message = (
                        "interrupted: the process running this execution died before it "
                        "finished (no task was recorded for it)"
                    )
                    e.duration_ms = _ms(now - e.started_at)
                    if self._write_execution(conn, e, was):
                        self._count(conn, e, locked)
                        changed += 1
                    continue
                new = execution_state_for(status, code)
                if new is ExecutionState.PENDING and e.state is ExecutionState.RUNNING:
                    new = ExecutionState.RUNNING  # requeued for a retry: still this execution
                retries = max(0, int(attempt) - 1)
                prog = int(progress)
                if new is e.state and retries == e.retry_count and prog == e.progress:
                    continue
                if new is not e.state:
                    check_execution_transition(e.state, new)
                was = e.state
                started = self._from_ts(t_started)
                if started is not None and e.state is ExecutionState.PENDING and (
                    new is not ExecutionState.PENDING
                ):
                    # Its task has run: the execution started when the task FIRST did, and
                    # that stays put through retries (each claim resets the task's
                    # started_at; started_at is also the history's paging key). Attempts
                    # the sweep did not see: the task's first `started` event.
                    if int(attempt) > 1:
                        started = self._first_start(conn, str(tid)) or started
                    e.started_at = started
                e.state, e.retry_count, e.progress, e.updated_at = new, retries, prog, now
                if new not in ACTIVE_EXECUTION_STATES:
                    finished = self._from_ts(t_finished) or now
                    e.finished_at = max(finished, e.started_at)
                    e.duration_ms = _ms(e.finished_at - e.started_at)
                    if payload is not None:
                        text = payload if isinstance(payload, str) else (
                            payload.decode() if isinstance(payload, bytes)
                            else orjson.dumps(payload).decode()
                        )
                        e.result, e.result_truncated = truncate_result(text)
                    if new is not ExecutionState.SUCCESS:
                        first = (error or "").strip().splitlines()
                        e.error_message = message or (first[-1] if first else None)
                        e.error_stack, e.error_stack_truncated = truncate_error_stack(error)
                if not self._write_execution(conn, e, was):
                    continue
                if new not in ACTIVE_EXECUTION_STATES:
                    self._count(conn, e, locked)
                changed += 1
        return changed
