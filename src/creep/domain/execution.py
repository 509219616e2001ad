"""TaskExecution (seed 003): one firing of a schedule, its state machine (following its task)
and the size limits of what it records."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from creep.domain.clock import INSTANT_RULE, storable_instant
from creep.domain.errors import IllegalTransition, ValidationError
from creep.domain.task import ResultCode, TaskStatus

MAX_RESULT_BYTES = 64 * 1024  # TaskExecution.result: truncated and flagged
MAX_ERROR_STACK_BYTES = 10 * 1024  # TaskExecution.error_stack: truncated, its end kept


class TriggerType(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"


class ExecutionState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


E = ExecutionState
#: The one table of legal execution transitions (the database checks the same pairs).
#: pending may end without running: its task was cancelled/failed before a worker took it, or
#: the scheduler died before creating it (interrupted).
EXECUTION_TRANSITIONS: dict[ExecutionState, frozenset[ExecutionState]] = {
    E.PENDING: frozenset(
        {E.RUNNING, E.SUCCESS, E.FAILURE, E.TIMEOUT, E.CANCELLED, E.INTERRUPTED}
    ),
    E.RUNNING: frozenset({E.SUCCESS, E.FAILURE, E.TIMEOUT, E.CANCELLED, E.INTERRUPTED}),
    E.SUCCESS: frozenset(),
    E.FAILURE: frozenset(),
    E.TIMEOUT: frozenset(),
    E.CANCELLED: frozenset(),
    E.INTERRUPTED: frozenset(),
}
ACTIVE_EXECUTION_STATES = frozenset({E.PENDING, E.RUNNING})


def check_execution_transition(old: ExecutionState | str, new: ExecutionState | str) -> None:
    o, n = ExecutionState(old), ExecutionState(new)
    if n not in EXECUTION_TRANSITIONS[o]:
        raise IllegalTransition("execution", o.value, n.value)


def execution_transition_pairs() -> list[tuple[str, str]]:
    return sorted((o.value, n.value) for o, ts in EXECUTION_TRANSITIONS.items() for n in ts)


def execution_state_for(status: TaskStatus | str, result_code: str | None) -> ExecutionState:
    """The execution state that mirrors its task's status (and result_code: a task
    dead-lettered with WORKER_LOST ended because its worker died on the last attempt)."""
    s = TaskStatus(status)
    if s in (TaskStatus.PENDING, TaskStatus.QUEUED):
        return E.PENDING
    if s is TaskStatus.RUNNING:
        return E.RUNNING
    if s is TaskStatus.SUCCESS:
        return E.SUCCESS
    if s is TaskStatus.TIMEOUT:
        return E.TIMEOUT
    if s is TaskStatus.CANCELLED:
        return E.CANCELLED
    if s is TaskStatus.DEAD_LETTER and result_code == ResultCode.WORKER_LOST:
        return E.INTERRUPTED
    return E.FAILURE


# -- truncation ----------------------------------------------------------------------------------


def truncate_result(text: str | None) -> tuple[str | None, bool]:
    """Cut `result` to 64 KB (UTF-8), returning (text, truncated)."""
    return _cut(text, MAX_RESULT_BYTES)


def truncate_error_stack(text: str | None) -> tuple[str | None, bool]:
    """Cut `error_stack` to 10 KB keeping the top of the stack (seed 003: 保留栈顶). A Python
    traceback lists the most recent call last, so the top is its end: the frame that raised
    and the exception (the worker keeps a long traceback's end too)."""
    if text is None:
        return None, False
    raw = text.encode()
    if len(raw) <= MAX_ERROR_STACK_BYTES:
        return text, False
    # A cut inside a character drops its partial bytes.
    return raw[-MAX_ERROR_STACK_BYTES:].decode("utf-8", errors="ignore"), True


def _cut(text: str | None, limit: int) -> tuple[str | None, bool]:
    if text is None:
        return None, False
    raw = text.encode()
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode("utf-8", errors="ignore"), True


@dataclass(slots=True)
class TaskExecution:
    id: int
    tenant_id: str
    task_uid: str
    task_name: str
    task_type: str
    execution_uid: str
    task_id: str | None  # the TaskOrder this firing created (None for skipped/built-in runs)
    run_by: str
    scheduled_at: datetime
    started_at: datetime
    finished_at: datetime | None
    state: ExecutionState
    result: str | None
    result_truncated: bool
    error_message: str | None
    error_stack: str | None
    error_stack_truncated: bool
    duration_ms: int
    progress: int
    retry_count: int
    trigger_type: TriggerType
    trigger_by: str | None
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ExecutionFilter:
    tenant_id: str | None = None
    task_uid: str | None = None
    task_name: str | None = None
    state: str | None = None
    trigger_type: str | None = None
    started_from: datetime | None = None
    started_to: datetime | None = None


#: The largest LIMIT both databases take (a 64-bit integer); a larger one means "all".
_MAX_LIMIT = 2**63 - 1


def check_execution_page(flt: ExecutionFilter, limit: object, before: object) -> int:
    """Check a history query's window, page size and cursor before any SQL sees them, so a
    bad one is a ValidationError naming the argument on both backends (a naive datetime
    was a TypeError on SQLite and read in the session's time zone on PostgreSQL; a negative
    limit returned every row on SQLite and a StorageError on PostgreSQL). Returns the
    limit to use."""
    errors: list[tuple[str, str]] = []
    for name in ("started_from", "started_to"):
        value = getattr(flt, name)
        if value is not None and not storable_instant(value):
            errors.append((name, INSTANT_RULE))
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        errors.append(("limit", "must be an integer >= 0"))
    if before is not None and not isinstance(before, str):
        errors.append(("before", "is not an execution cursor"))
    if errors:
        raise ValidationError(errors)
    assert isinstance(limit, int)
    return min(limit, _MAX_LIMIT)


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
