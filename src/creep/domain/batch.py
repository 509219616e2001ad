"""Batches (seed 004): many tasks submitted together, with counts and a derived status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from creep.domain.task import TERMINAL_STATUSES, TaskStatus


class BatchStatus(StrEnum):
    """Seed 004's batch states. Derived from the tasks' states, never stored."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_FAILED = frozenset({TaskStatus.FAILED, TaskStatus.TIMEOUT, TaskStatus.DEAD_LETTER})


@dataclass(slots=True)
class Batch:
    batch_id: str
    tenant_id: str
    title: str
    metadata: dict[str, Any]
    total_count: int
    created_at: datetime
    updated_at: datetime
    cancelled_at: datetime | None


@dataclass(slots=True)
class BatchCounts:
    total_count: int
    completed_count: int  # SUCCESS
    failed_count: int  # FAILED, TIMEOUT, DEAD_LETTER
    cancelled_count: int
    running_count: int
    progress: int  # 0-100: finished tasks count fully, running ones by their own progress
    status: BatchStatus


def derive_counts(
    by_status: Mapping[str, tuple[int, int]], cancel_requested: bool
) -> BatchCounts:
    """Counts and status from {task status: (count, sum of progress)}."""
    counts = {TaskStatus(s): n for s, (n, _) in by_status.items()}
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
    progress_sum = sum(
        100 * n if TaskStatus(s) in TERMINAL_STATUSES else p for s, (n, p) in by_status.items()
    )
    succeeded = counts.get(TaskStatus.SUCCESS, 0)
    failed = sum(counts.get(s, 0) for s in _FAILED)
    cancelled = counts.get(TaskStatus.CANCELLED, 0)
    running = counts.get(TaskStatus.RUNNING, 0)
    if total and done == total:
        if succeeded == total:
            status = BatchStatus.COMPLETED
        elif cancel_requested or failed == 0:
            status = BatchStatus.CANCELLED
        else:
            status = BatchStatus.FAILED
    elif running or done:
        status = BatchStatus.RUNNING
    else:
        status = BatchStatus.CANCELLED if cancel_requested and total == 0 else BatchStatus.PENDING
    return BatchCounts(
        total_count=total,
        completed_count=succeeded,
        failed_count=failed,
        cancelled_count=cancelled,
        running_count=running,
        progress=progress_sum // total if total else 0,
        status=status,
    )
