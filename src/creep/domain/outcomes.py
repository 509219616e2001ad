"""What a handler run came to, and what that means for the task (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from creep.domain.task import ResultCode, TaskStatus


class HandlerSignal(Exception):
    """Raised by a handler to steer its task; not an error."""


class Retry(HandlerSignal):
    """Run the task again after `delay` seconds (or the backoff delay when None)."""

    def __init__(self, delay: float | None = None, message: str | None = None) -> None:
        self.delay = delay
        self.message = message or "retry requested by handler"
        super().__init__(self.message)


class Fail(HandlerSignal):
    """An explicit business failure: the task ends FAILED with this result code, no retry."""

    def __init__(self, code: str = ResultCode.HARD_FAIL, message: str | None = None) -> None:
        self.code = str(code)
        self.message = message or self.code
        super().__init__(self.message)


class TaskCancelled(HandlerSignal):
    """Raised inside a handler (by heartbeat or a check) once cancellation was requested."""


class OutcomeKind(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # Retry() or any exception
    FAILED = "failed"  # Fail()
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    REQUEUE = "requeue"  # graceful shutdown: give the task back without charging an attempt


@dataclass(slots=True)
class Outcome:
    task_id: str
    claim_token: str
    kind: OutcomeKind
    result: Any = None
    code: str | None = None
    message: str | None = None
    retry_delay: float | None = None
    error: str | None = None
    #: The result already serialised by the worker (so a bad result fails that task alone).
    result_json: bytes | None = None


@dataclass(slots=True)
class Resolution:
    """The transition an outcome leads to."""

    status: TaskStatus
    event_type: str
    result_code: str | None
    result_message: str | None
    run_after: datetime | None = None
    charge_attempt: bool = True


@dataclass(slots=True, frozen=True)
class Backoff:
    """Exponential backoff with equal jitter: half the step fixed, half random."""

    base_seconds: float = 1.0
    cap_seconds: float = 3600.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        # The exponent bounded: 2**1024 is past a float (attempt 1025, reached through manual
        # retries), and any step that large is past the cap anyway.
        step = min(self.cap_seconds, self.base_seconds * (2 ** min(max(0, attempt - 1), 1023)))
        r = float((rng or random).random())
        return float(step / 2 + r * step / 2)


def resolve(
    outcome: Outcome, *, attempt: int, max_attempts: int, now: datetime, backoff: Backoff,
    rng: random.Random | None = None,
) -> Resolution:
    """Map a handler outcome on attempt `attempt` (1-based) to the task's next state."""
    kind = outcome.kind
    if kind is OutcomeKind.SUCCEEDED:
        return Resolution(TaskStatus.SUCCESS, "succeeded", ResultCode.OK, outcome.message)
    if kind is OutcomeKind.FAILED:
        return Resolution(
            TaskStatus.FAILED, "failed", outcome.code or ResultCode.HARD_FAIL, outcome.message
        )
    if kind is OutcomeKind.TIMED_OUT:
        return Resolution(TaskStatus.TIMEOUT, "timed_out", ResultCode.TIMEOUT, outcome.message)
    if kind is OutcomeKind.CANCELLED:
        return Resolution(
            TaskStatus.CANCELLED, "cancelled", ResultCode.CANCELLED, outcome.message or "cancelled"
        )
    if kind is OutcomeKind.REQUEUE:
        return Resolution(
            TaskStatus.QUEUED, "requeued", None, outcome.message, run_after=now,
            charge_attempt=False,
        )
    # The retry path: Retry() or an exception.
    message = outcome.message or outcome.error
    if attempt >= max_attempts:
        return Resolution(
            TaskStatus.DEAD_LETTER, "dead_lettered", ResultCode.MAX_RETRIES_EXCEEDED,
            f"attempt {attempt} of {max_attempts} failed: {message}",
        )
    delay = outcome.retry_delay
    if delay is None:
        delay = backoff.delay(attempt, rng)
    return Resolution(
        TaskStatus.QUEUED, "retrying", outcome.code or ResultCode.RETRYABLE, message,
        run_after=_after(now, delay),
    )


#: The last instant both backends store (domain/clock.py INSTANT_RULE).
LAST_INSTANT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
#: The longest retry delay a remote worker sends (the worker API's bound): from 1970 on it
#: reaches the last instant, so any longer delay waits just as long.
MAX_RETRY_DELAY = (LAST_INSTANT - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()


def _after(now: datetime, seconds: float) -> datetime:
    """`seconds` after `now`; a negative or NaN delay is none, and a delay past the last
    storable instant (Retry(delay=float("inf"))) waits until then: it would otherwise fail
    the completion and leave the task RUNNING until its claim expired."""
    if not seconds > 0:
        return now
    try:
        return min(now + timedelta(seconds=seconds), LAST_INSTANT)
    except (OverflowError, ValueError):
        return LAST_INSTANT
