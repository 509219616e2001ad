"""Task events (seed 004): one row per transition, written with the transition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class TaskEventType(StrEnum):
    CREATED = "created"
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"
    # Given back without charging an attempt (graceful shutdown).
    REQUEUED = "requeued"
    # A field change through an update that names task_version.
    UPDATED = "updated"
    # Cancellation asked for a running task; `cancelled` follows when the handler stops.
    CANCEL_REQUESTED = "cancel_requested"
    # Soft delete (seed 004's is_deleted): into the recycle bin and out of it; no status change.
    DELETED = "deleted"
    RESTORED = "restored"


@dataclass(slots=True)
class TaskEvent:
    event_id: int
    cursor: str
    task_id: str
    tenant_id: str
    event_type: str
    from_status: str | None
    to_status: str | None
    attempt: int
    payload: dict[str, Any]
    created_at: datetime
