"""TaskOrder (seed 000) with its status machine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from creep.domain.errors import IllegalTransition


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    DEAD_LETTER = "DEAD_LETTER"


S = TaskStatus

#: The one table of legal task transitions. Anything else, a self-transition included, raises.
#: Terminal states other than SUCCESS may go back to QUEUED through an explicit retry.
TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED}),
    # QUEUED -> FAILED: NO_RESOURCE or BUDGET_EXCEEDED decided before a worker ever ran it.
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset(
        {S.QUEUED, S.SUCCESS, S.FAILED, S.CANCELLED, S.TIMEOUT, S.DEAD_LETTER}
    ),
    S.SUCCESS: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
    S.TIMEOUT: frozenset({S.QUEUED}),
    S.DEAD_LETTER: frozenset({S.QUEUED}),
}

TERMINAL_STATUSES: frozenset[TaskStatus] = frozenset(
    {S.SUCCESS, S.FAILED, S.CANCELLED, S.TIMEOUT, S.DEAD_LETTER}
)
#: Terminal states a task may be retried from by an operator.
RETRYABLE_FROM: frozenset[TaskStatus] = frozenset(
    {S.FAILED, S.CANCELLED, S.TIMEOUT, S.DEAD_LETTER}
)


def check_transition(old: TaskStatus | str, new: TaskStatus | str) -> None:
    """Raise IllegalTransition unless old -> new is in the table."""
    old_s, new_s = TaskStatus(old), TaskStatus(new)
    if new_s not in TASK_TRANSITIONS[old_s]:
        raise IllegalTransition("task", old_s.value, new_s.value)


def transition_pairs() -> list[tuple[str, str]]:
    """Every legal (old, new) pair, for the database-level guard."""
    return sorted((o.value, n.value) for o, targets in TASK_TRANSITIONS.items() for n in targets)


class ResultCode(StrEnum):
    OK = "OK"
    SOFT_FAIL = "SOFT_FAIL"
    HARD_FAIL = "HARD_FAIL"
    BANNED = "BANNED"
    RETRYABLE = "RETRYABLE"
    NO_RESOURCE = "NO_RESOURCE"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    DEPENDENCY_FAILED = "DEPENDENCY_FAILED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    MAX_RETRIES_EXCEEDED = "MAX_RETRIES_EXCEEDED"
    #: The control plane took the task back because its worker vanished (claim expired):
    #: set on the retry, and on the dead letter when that was the last attempt.
    WORKER_LOST = "WORKER_LOST"
    LEASE_REVOKED = "LEASE_REVOKED"


@dataclass(slots=True)
class ResourceHint:
    sku_category: str
    sku_code: str | None = None
    min_count: int = 1
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TaskOrder:
    """One task work order as stored: the seed's fields plus what the queue needs."""

    task_id: str
    idempotency_key: str
    tenant_id: str
    project_id: str | None
    env: str
    external_ref: str | None
    task_type: str
    task_category: str | None
    description: str | None
    priority: int
    timeout_ms: int
    max_total_cost: Decimal | None
    currency: str
    business_value_hint: Decimal | None
    status: TaskStatus
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    result_code: str | None
    result_message: str | None
    task_version: int
    lease_ids: list[str]
    resource_hints: list[dict[str, Any]]
    constraints: dict[str, Any]
    tenant_policies_version: str | None
    tags: list[str]
    batch_id: str | None
    progress: int
    progress_message: str | None
    input_payload: Any
    result_payload: Any
    channel: str | None
    correlation_id: str
    depends_on: list[str]
    attempt: int
    max_attempts: int
    run_after: datetime
    last_error: str | None = None
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None
    cancel_requested: bool = False
    deleted_at: datetime | None = None
    # Set only on a submit that hit an existing task through its idempotency key.
    replayed: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def max_retries(self) -> int:
        return self.max_attempts - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
