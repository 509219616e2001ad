"""Schedules, executions and retention in SQL both backends understand.

Statements are written once with `?` placeholders; each backend mixin
(`sqlite_schedules.py`, `postgres_schedules.py`) supplies the transaction, the placeholder
style and the value codecs (SQLite stores microseconds and JSON text, PostgreSQL timestamptz
and jsonb). Writes that a scheduler makes as leader are fenced: they run only while the named
lock row still carries the caller's token and has not expired.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import orjson

from creep.domain.errors import NotFound, ValidationError, VersionConflict
from creep.domain.schedule import (
    ACTIVE_EXECUTION_STATES,
    ExecutionFilter,
    ExecutionState,
    Firing,
    LeadershipLost,
    MisfirePolicy,
    ScheduledTask,
    TaskExecution,
    TriggerType,
    check_execution_transition,
    execution_state_for,
    truncate_error_stack,
    truncate_result,
)
from creep.domain.task import TERMINAL_STATUSES

SCHEDULE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ScheduledTask))
_SCHEDULE_SELECT = ", ".join(f'"{c}"' if c == "interval" else c for c in SCHEDULE_FIELDS)
_SCHEDULE_TS = ("next_run", "last_executed_at", "anchor_at", "created_at", "updated_at")
_SCHEDULE_JSON = ("labels", "resource_hints", "tags")
EXECUTION_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TaskExecution))
_EXECUTION_SELECT = ", ".join(EXECUTION_FIELDS)
_EXECUTION_TS = ("scheduled_at", "started_at", "finished_at", "created_at", "updated_at")
_EXEC_INSERT = [c for c in EXECUTION_FIELDS if c != "id"]
_TERMINAL_TASK = tuple(s.value for s in TERMINAL_STATUSES)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Conn(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


class ScheduleSqlMixin:
    """Backend-neutral schedule operations; the hooks below are a backend's to fill in."""

    #: " FOR UPDATE" / " FOR SHARE" on PostgreSQL; SQLite serialises writers instead.
    _for_update = ""
    _for_share = ""
    #: A boolean true as SQL text (a literal, so SQLite can use the partial due-index).
    _true = "1"

    def _sx(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _sx_read(self) -> AbstractContextManager[Conn]:
        return self._sx()

    def _ts(self, value: datetime | None) -> Any:
        raise NotImplementedError

    def _from_ts(self, value: Any) -> datetime | None:
        raise NotImplementedError

    def _json(self, value: Any) -> Any:
        raise NotImplementedError

    def _from_json(self, value: Any) -> Any:
        raise NotImplementedError

    def _executemany(self, conn: Conn, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    # -- codecs --------------------------------------------------------------------------------

    def _schedule_params(self, s: ScheduledTask) -> list[Any]:
        out: list[Any] = []
        for name in SCHEDULE_FIELDS:
            v = getattr(s, name)
            if name in _SCHEDULE_TS:
                v = self._ts(v)
            elif name in _SCHEDULE_JSON:
                v = self._json(v)
            elif name == "misfire_policy":
                v = v.value
            elif name == "max_total_cost" and v is not None:
                v = self._decimal(v)
            out.append(v)
        return out

    def _decimal(self, value: Decimal) -> Any:
        return value

    def _row_schedule(self, row: Sequence[Any]) -> ScheduledTask:
        d = dict(zip(SCHEDULE_FIELDS, row, strict=True))
        for name in _SCHEDULE_TS:
            d[name] = self._from_ts(d[name])
        for name in _SCHEDULE_JSON:
            d[name] = self._from_json(d[name])
        d["misfire_policy"] = MisfirePolicy(d["misfire_policy"])
        d["is_recurring"] = bool(d["is_recurring"])
        d["enabled"] = bool(d["enabled"])
        if d["max_total_cost"] is not None:
            d["max_total_cost"] = Decimal(str(d["max_total_cost"]))
        return ScheduledTask(**d)

    def _row_execution(self, row: Sequence[Any]) -> TaskExecution:
        d = dict(zip(EXECUTION_FIELDS, row, strict=True))
        for name in _EXECUTION_TS:
            d[name] = self._from_ts(d[name])
        d["state"] = ExecutionState(d["state"])
        d["trigger_type"] = TriggerType(d["trigger_type"])
        d["result_truncated"] = bool(d["result_truncated"])
        d["error_stack_truncated"] = bool(d["error_stack_truncated"])
        if d["task_id"] is not None:
            d["task_id"] = str(d["task_id"])
        return TaskExecution(**d)

    def _execution_params(self, e: TaskExecution) -> list[Any]:
        out: list[Any] = []
        for name in _EXEC_INSERT:
            v = getattr(e, name)
            if name in _EXECUTION_TS:
                v = self._ts(v)
            elif name in ("state", "trigger_type"):
                v = v.value
            out.append(v)
        return out

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
        row = conn.execute(
            f"SELECT {_SCHEDULE_SELECT} FROM scheduled_tasks WHERE uid = ?{suffix}", (key,)
        ).fetchone()
        if row is None and tenant_id is not None:
            row = conn.execute(
                f"SELECT {_SCHEDULE_SELECT} FROM scheduled_tasks "
                f"WHERE tenant_id = ? AND name = ?{suffix}",
                (tenant_id, key),
            ).fetchone()
        if row is None:
            raise NotFound("schedule", key)
        sched = self._row_schedule(row)
        if tenant_id is not None and sched.tenant_id != tenant_id:
            raise NotFound("schedule", key)
        return sched

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

    def schedule_save(self, sched: ScheduledTask, expected_version: int) -> ScheduledTask:
        """Write a changed schedule (configuration and next_run) if it is still at
        `expected_version`; statistics are left to the scheduler."""
        config = [
            c for c in SCHEDULE_FIELDS
            if c not in ("uid", "tenant_id", "created_at", "version", "total_executions",
                         "success_executions", "failure_executions", "consecutive_failures",
                         "last_executed_at", "last_failure_error")
        ]
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
            self._schedule_get(conn, uid, tenant_id, lock=True)
            conn.execute("DELETE FROM scheduled_tasks WHERE uid = ?", (uid,))

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
    ) -> list[TaskExecution]:
        """Record firings of one schedule in one transaction and return the executions
        written. A slot that already has an execution is left alone (the unique
        (schedule, scheduled_at) key), a firing beyond max_concurrent is recorded
        `cancelled` with the reason, and with `advance` next_run moves from
        `expected_next_run` to `next_run` (only if nobody moved it meanwhile).
        With `fence`, raises LeadershipLost unless that lock is still held."""
        with self._sx() as conn:
            if fence is not None:
                self._check_fence(conn, fence, now)
            sched = self._schedule_get(conn, uid, None, lock=True)
            if advance and sched.next_run != expected_next_run:
                return []  # another leader handled this schedule meanwhile
            row = conn.execute(
                "SELECT count(*) FROM task_executions WHERE task_uid = ? "
                "AND state IN ('pending', 'running')",
                (uid,),
            ).fetchone()
            active = int(row[0])
            out: list[TaskExecution] = []
            skipped = 0
            for f in firings:
                run = active < sched.max_concurrent
                e = TaskExecution(
                    id=0, tenant_id=sched.tenant_id, task_uid=uid, task_name=sched.name,
                    task_type=sched.type, execution_uid=f.execution_uid,
                    task_id=f.task_id if run else None, run_by=run_by,
                    scheduled_at=f.scheduled_at, started_at=now,
                    finished_at=None if run else now,
                    state=ExecutionState.PENDING if run else ExecutionState.CANCELLED,
                    result=None, result_truncated=False,
                    error_message=None if run else (
                        f"skipped: max_concurrent={sched.max_concurrent} reached "
                        f"({active} executions still running)"
                    ),
                    error_stack=None, error_stack_truncated=False, duration_ms=0,
                    progress=0, retry_count=0, trigger_type=f.trigger_type,
                    trigger_by=f.trigger_by, created_at=now, updated_at=now,
                )
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
                if run:
                    active += 1
                else:
                    skipped += 1
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
        return out

    # -- executions ----------------------------------------------------------------------------

    def execution_list(
        self, flt: ExecutionFilter, *, limit: int = 100, before: str | None = None
    ) -> list[TaskExecution]:
        """Newest first (started_at desc, id desc); page on with `before` =
        `execution_cursor(last row)`."""
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

    def _write_execution(self, conn: Conn, e: TaskExecution, was: ExecutionState) -> bool:
        """Write `e` if its row is still in state `was`: two sweeps racing (an old leader
        that has not noticed yet) cannot both end it, so statistics count it once."""
        cur = conn.execute(
            "UPDATE task_executions SET state = ?, started_at = ?, finished_at = ?, result = ?, "
            "result_truncated = ?, error_message = ?, error_stack = ?, "
            "error_stack_truncated = ?, duration_ms = ?, progress = ?, retry_count = ?, "
            "updated_at = ? WHERE id = ? AND state = ?",
            (e.state.value, self._ts(e.started_at), self._ts(e.finished_at), e.result,
             e.result_truncated, e.error_message, e.error_stack, e.error_stack_truncated,
             e.duration_ms, e.progress, e.retry_count, self._ts(e.updated_at), e.id,
             was.value),
        )
        return cur.rowcount == 1

    def _count(self, conn: Conn, e: TaskExecution) -> None:
        """Schedule statistics for an execution that just ended."""
        if e.state is ExecutionState.SUCCESS:
            conn.execute(
                "UPDATE scheduled_tasks SET total_executions = total_executions + 1, "
                "success_executions = success_executions + 1, consecutive_failures = 0 "
                "WHERE uid = ?",
                (e.task_uid,),
            )
        elif e.state in (ExecutionState.FAILURE, ExecutionState.TIMEOUT,
                         ExecutionState.INTERRUPTED):
            conn.execute(
                "UPDATE scheduled_tasks SET total_executions = total_executions + 1, "
                "failure_executions = failure_executions + 1, "
                "consecutive_failures = consecutive_failures + 1, last_failure_error = ? "
                "WHERE uid = ?",
                (e.error_message or e.state.value, e.task_uid),
            )
        else:
            conn.execute(
                "UPDATE scheduled_tasks SET total_executions = total_executions + 1 "
                "WHERE uid = ?",
                (e.task_uid,),
            )

    def execution_sync(
        self, now: datetime, *, orphan_after: float = 60.0, limit: int = 1000
    ) -> int:
        """Make executions follow their tasks (state, timings, result, error, progress,
        retries) and count finished ones in the schedule statistics. An active execution
        whose task does not exist `orphan_after` seconds after firing (the scheduler died
        before creating it, or a built-in job died) becomes `interrupted`."""
        changed = 0
        with self._sx() as conn:
            rows = conn.execute(
                f"SELECT {', '.join('e.' + c for c in EXECUTION_FIELDS)}, t.task_id, t.status, "
                "t.started_at, t.finished_at, t.attempt, t.progress, t.result_payload, "
                "t.result_message, t.last_error "
                "FROM task_executions e LEFT JOIN tasks t ON t.task_id = e.task_id "
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
                tid, status, t_started, t_finished, attempt, progress, payload, message, error = (
                    row[n:]
                )
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
                        self._count(conn, e)
                        changed += 1
                    continue
                new = execution_state_for(status, error)
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
                if started is not None and new is not ExecutionState.PENDING:
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
                    self._count(conn, e)
                changed += 1
        return changed

    # -- retention -----------------------------------------------------------------------------

    def retention_purge_executions(self, cutoff: datetime, limit: int = 10_000) -> int:
        """Delete finished executions that ended before `cutoff`."""
        with self._sx() as conn:
            cur = conn.execute(
                "DELETE FROM task_executions WHERE id IN (SELECT id FROM task_executions "
                "WHERE finished_at < ? AND state NOT IN ('pending', 'running') LIMIT ?)",
                (self._ts(cutoff), limit),
            )
            return int(cur.rowcount)

    def retention_purge_locks(self, cutoff: datetime, now: datetime) -> int:
        """Mark active locks past their expiry `expired`, then delete released/expired lock
        rows last changed before `cutoff`."""
        self.lock_expire_lapsed(now)
        with self._sx() as conn:
            cur = conn.execute(
                "DELETE FROM task_locks WHERE state IN ('released', 'expired') AND updated_at < ?",
                (self._ts(cutoff),),
            )
            return int(cur.rowcount)

    def retention_purge_tasks(self, cutoff: datetime, limit: int = 5_000) -> int:
        """Delete finished tasks (and their events) that ended before `cutoff`, unless a
        task that has not finished still depends on them."""
        marks = ", ".join("?" * len(_TERMINAL_TASK))
        with self._sx() as conn:
            ids = [
                r[0] for r in conn.execute(
                    f"SELECT task_id FROM tasks WHERE status IN ({marks}) AND finished_at < ? "
                    "AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks c "
                    "ON c.task_id = d.task_id WHERE d.depends_on_id = tasks.task_id "
                    f"AND c.status NOT IN ({marks})) LIMIT ?",
                    (*_TERMINAL_TASK, self._ts(cutoff), *_TERMINAL_TASK, limit),
                ).fetchall()
            ]
            if not ids:
                return 0
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                qs = ", ".join("?" * len(chunk))
                conn.execute(f"DELETE FROM task_events WHERE task_id IN ({qs})", chunk)
                conn.execute(f"DELETE FROM tasks WHERE task_id IN ({qs})", chunk)
            return len(ids)

    def lock_expire_lapsed(self, now: datetime) -> int:
        """active -> expired for every lock past its expiry (monitoring sees the truth; a
        later acquire re-activates the row)."""
        with self._sx() as conn:
            cur = conn.execute(
                "UPDATE task_locks SET state = 'expired', updated_at = ? "
                "WHERE state = 'active' AND expires_at < ?",
                (self._ts(now), self._ts(now)),
            )
            return int(cur.rowcount)

    def lock_get(self, lock_key: str) -> dict[str, Any] | None:
        """The lock row as a dict (for operators and tests)."""
        with self._sx_read() as conn:
            row = conn.execute(
                "SELECT lock_key, holder_id, token, state, acquired_at, expires_at, "
                "released_at, purpose FROM task_locks WHERE lock_key = ?",
                (lock_key,),
            ).fetchone()
        if row is None:
            return None
        keys = ("lock_key", "holder_id", "token", "state", "acquired_at", "expires_at",
                "released_at", "purpose")
        d = dict(zip(keys, row, strict=True))
        for k in ("acquired_at", "expires_at", "released_at"):
            d[k] = self._from_ts(d[k])
        d["token"] = str(d["token"])
        return d


def execution_cursor(e: TaskExecution) -> str:
    """Where a history page ended: pass as `before` to get the next (older) page."""
    return f"{e.started_at.isoformat()}|{e.id}"


def parse_execution_cursor(cursor: str) -> tuple[datetime, int]:
    started, _, last_id = cursor.rpartition("|")
    try:
        when = datetime.fromisoformat(started)
        if when.tzinfo is None:
            raise ValueError
        return when, int(last_id)
    except ValueError:
        raise ValidationError.single("before", "is not an execution cursor") from None


def _ms(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds() * 1000))

