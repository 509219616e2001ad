"""The SQL both backends share for schedules: the hooks a backend fills in (transaction,
placeholders, value codecs) and the row codecs built on them.

Statements are written once with `?` placeholders; `sqlite_schedules.py` and
`postgres_schedules.py` supply the transaction, the placeholder style and the codecs
(SQLite stores microseconds and JSON text, PostgreSQL timestamptz and jsonb).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from creep.domain.execution import (
    ExecutionState,
    TaskExecution,
    TriggerType,
)
from creep.domain.schedule import MisfirePolicy, ScheduledTask
from creep.domain.task import TERMINAL_STATUSES, TaskOrder
from creep.domain.task_spec import TaskSpec

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


class ScheduleSqlBase:
    """Hooks and codecs; the operations live in the mixins built on this class."""

    """Backend-neutral schedule operations; the hooks below are a backend's to fill in."""

    #: " FOR UPDATE" / " FOR SHARE" on PostgreSQL; SQLite serialises writers instead.
    _for_update = ""
    _for_share = ""
    #: A boolean true as SQL text (a literal, so SQLite can use the partial due-index).
    _true = "1"
    #: What goes before a condition on task_events.task_id (SQLite: SQLITE_EVENTS_OF, so the
    #: by-task index serves it).
    _events_of: str = ""

    def _sx(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _sx_read(self) -> AbstractContextManager[Conn]:
        return self._sx()

    def _sx_adapt(self, raw: Any) -> Conn:
        """The shared-SQL connection over the driver's connection of an open transaction
        (the one pending writes get)."""
        return raw  # type: ignore[no-any-return]

    def _sx_driver(self, conn: Conn) -> Any:
        """The driver's connection under a shared-SQL one (_sx_adapt's inverse)."""
        return conn

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

    def _create_tasks_in(
        self, conn: Conn, specs: Sequence[TaskSpec], now: datetime
    ) -> list[TaskOrder]:
        """The store's own task_create_many, run inside the open transaction `conn` (a
        firing writes its TaskOrders with its execution rows)."""
        raise NotImplementedError

    def _wake(self, channel: str, payload: str) -> None:
        raise NotImplementedError  # provided by the store: wakes in-process workers

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

    def _count(self, conn: Conn, e: TaskExecution, locked: set[str] | None = None) -> None:
        """Schedule statistics for an execution that just ended (its row is written already).
        The totals add up. consecutive_failures and last_failure_error follow the order in
        which executions FINISHED (finished_at, then id), whatever order ends are counted
        in (a sweep meets them in id order, or in two sweeps): the ended rows are the
        record. A failure adds to the run unless a success of the schedule finished after
        it, and its message is the last error unless a failure finished after it; a success
        sets the run to the failures that finished after it, unless a success did too.

        On PostgreSQL the schedule row is locked first, in a statement of its own: counts of
        one schedule then take turns, and the next statement reads the ends whoever counted
        before committed. `locked`: schedules this transaction has locked already (the
        sweep's), which need no second lock."""
        if self._for_update and (locked is None or e.task_uid not in locked):
            conn.execute(
                f"SELECT 1 FROM scheduled_tasks WHERE uid = ?{self._for_update}", (e.task_uid,)
            )
            if locked is not None:
                locked.add(e.task_uid)
        if e.state is ExecutionState.SUCCESS:
            conn.execute(
                "UPDATE scheduled_tasks SET total_executions = total_executions + 1, "
                "success_executions = success_executions + 1, consecutive_failures = CASE WHEN "
                f"{_ANY_LATER.format(states=_SUCCESS_SQL)} "
                "THEN consecutive_failures "
                f"ELSE {_COUNT_LATER.format(states=_FAILED_SQL)} END "
                "WHERE uid = ?",
                (*self._later(e), *self._later(e), e.task_uid),
            )
        elif e.state in _FAILED:
            conn.execute(
                "UPDATE scheduled_tasks SET total_executions = total_executions + 1, "
                "failure_executions = failure_executions + 1, "
                "consecutive_failures = consecutive_failures + CASE WHEN "
                f"{_ANY_LATER.format(states=_SUCCESS_SQL)} "
                "THEN 0 ELSE 1 END, last_failure_error = CASE WHEN "
                f"{_ANY_LATER.format(states=_FAILED_SQL)} "
                "THEN last_failure_error ELSE ? END WHERE uid = ?",
                (*self._later(e), *self._later(e), e.error_message or e.state.value,
                 e.task_uid),
            )
        else:  # cancelled: neither breaks nor extends a run of failures
            conn.execute(
                "UPDATE scheduled_tasks SET total_executions = total_executions + 1 "
                "WHERE uid = ?",
                (e.task_uid,),
            )

    def _later(self, e: TaskExecution) -> tuple[Any, ...]:
        """The parameters of _ANY_LATER / _COUNT_LATER for execution `e`."""
        at = self._ts(e.finished_at)
        return (e.task_uid, at, e.id, e.task_uid, at)


_FAILED = frozenset({ExecutionState.FAILURE, ExecutionState.TIMEOUT, ExecutionState.INTERRUPTED})
_FAILED_SQL = ", ".join(f"'{s.value}'" for s in sorted(_FAILED))
_SUCCESS_SQL = f"'{ExecutionState.SUCCESS.value}'"
#: Whether / how many of a schedule's executions in `{states}` ended after a given one (a
#: later finished_at, or the same and a larger id): two seeks of task_executions_schedule_ends.
_TIE = "task_uid = ? AND finished_at = ? AND id > ? AND state IN ({states})"
_PAST = "task_uid = ? AND finished_at > ? AND state IN ({states})"
_ANY_LATER = (
    f"(EXISTS (SELECT 1 FROM task_executions WHERE {_TIE}) "
    f"OR EXISTS (SELECT 1 FROM task_executions WHERE {_PAST}))"
)
_COUNT_LATER = (
    f"((SELECT count(*) FROM task_executions WHERE {_TIE}) "
    f"+ (SELECT count(*) FROM task_executions WHERE {_PAST}))"
)


def _ms(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds() * 1000))
