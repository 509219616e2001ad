"""Task lifecycle metrics folded from the task event log into the database's rollup
(rendered by creep.api.metrics; here, in the engine, as task retention folds before it
deletes events).

Counters and histograms of what tasks did must be the same whichever API node is scraped,
and never count one task twice. So no node counts in memory: a scrape folds the task events
written since the rollup's cursor into `metric_values` (storage/metrics_store.py), moving the
cursor in the same transaction, and every node renders the rollup. The event log holds all
that is needed:

- created: the `created` event (its payload names the task type);
- finished: an event into SUCCESS, FAILED, CANCELLED, TIMEOUT or DEAD_LETTER;
- claim-to-start: a QUEUED -> RUNNING event, measured from the moment the task last became
  claimable: its latest transition into QUEUED, or the `run_after` a retry set, if later;
- run time: a transition out of RUNNING (to any status, retries included), measured from
  the QUEUED -> RUNNING transition before it.

Task types are the tenants' own strings, so the task_type label is capped: once the rollup
holds `max_task_types` of them, a type not among them is counted as `OTHER_TYPE`. Which types
the rollup holds is read in the fold's own transaction, so every node labels alike, and a type
once shown keeps its series (a counter never moves to another series).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from creep.domain.events import TaskEvent
from creep.storage.metrics_store import Deltas, FoldStep, Mark

CREATED = "creep_tasks_created_total"
FINISHED = "creep_tasks_finished_total"
CLAIM_TO_START = "creep_task_claim_to_start_seconds"
RUN_TIME = "creep_task_run_seconds"
#: Seconds; tasks wait and run from milliseconds to hours.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
BUCKET_LABELS = [str(float(b)) for b in DURATION_BUCKETS]  # as Prometheus prints them
_FINISHED = frozenset({"SUCCESS", "FAILED", "CANCELLED", "TIMEOUT", "DEAD_LETTER"})
UNKNOWN_TYPE = "unknown"  # a task purged before its events were folded
OTHER_TYPE = "_other"  # task types past the cap
TASK_EVENTS = "task_events"
DEFAULT_MAX_TASK_TYPES = 200


class FoldStore(Protocol):
    """What a fold reads and writes (both stores, storage/metrics_store.py)."""

    def task_events_after(
        self, cursor: str | None, *, limit: int = 500, task_id: str | None = None,
        tenant_id: str | None = None,
    ) -> list[TaskEvent]: ...
    def metric_fold(self, name: str, step: FoldStep) -> bool: ...
    def metric_values(self, name: str | None = None) -> list[tuple[str, str, float]]: ...
    def metric_task_marks(
        self, task_ids: Sequence[str]) -> tuple[dict[str, str], list[Mark]]: ...


def env_max_task_types() -> int:
    """CREEP_METRICS_MAX_TASK_TYPES for a fold outside the API server (task retention):
    the server's setting, where the environment is shared, else the default."""
    raw = os.environ.get("CREEP_METRICS_MAX_TASK_TYPES", "")
    try:
        return max(1, int(raw)) if raw.strip() else DEFAULT_MAX_TASK_TYPES
    except ValueError:
        return DEFAULT_MAX_TASK_TYPES


def labels_key(labels: dict[str, str]) -> str:
    """The canonical text of a label set, the rollup's key."""
    return orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(slots=True)
class FoldResult:
    events: int = 0


def fold_task_events(store: FoldStore, *, batch: int = 1000, budget: float = 2.0,
                     max_task_types: int | None = None) -> int:
    """Fold new task events, a transaction per `batch`, until caught up or `budget` seconds
    passed (a backlog is caught up over the next scrapes); the number folded. Another node
    folding at this moment (PostgreSQL) makes this a no-op: the next read shows its work.
    `max_task_types`: distinct task_type labels before new types count as OTHER_TYPE."""
    total = 0
    deadline = time.monotonic() + budget
    while True:
        result = FoldResult()

        def step(cursor: str | None, result: FoldResult = result) -> tuple[str | None, Deltas]:
            events = store.task_events_after(cursor, limit=batch)
            result.events = len(events)
            if not events:
                return cursor, {}
            return events[-1].cursor, task_event_deltas(store, events, max_task_types)

        if not store.metric_fold(TASK_EVENTS, step):
            return total
        total += result.events
        if result.events < batch or time.monotonic() > deadline:
            return total


def task_event_deltas(
    store: FoldStore, events: list[TaskEvent], max_task_types: int | None = None
) -> Deltas:
    deltas: Deltas = {}
    label = _type_label(store, deltas, max_task_types)
    timed = [e for e in events if _is_start(e) or _is_end(e)]
    need = {e.task_id for e in events if e.event_type != "created" or _is_start(e)}
    types, marks = store.metric_task_marks(sorted(need)) if need else ({}, [])
    by_task: dict[str, list[Mark]] = {}
    for mark in marks:
        by_task.setdefault(mark[0], []).append(mark)

    def task_type(e: TaskEvent) -> str:
        named = e.payload.get("task_type") if e.event_type == "created" else None
        return label(str(named or types.get(e.task_id, UNKNOWN_TYPE)))

    for e in events:
        if e.event_type == "created":
            _add(deltas, CREATED, {"task_type": task_type(e)}, 1)
        if e.to_status in _FINISHED and e.from_status != e.to_status:
            _add(deltas, FINISHED, {"task_type": task_type(e), "status": e.to_status}, 1)
    for e in timed:
        prior = [m for m in by_task.get(e.task_id, []) if m[1] < e.event_id]
        if _is_start(e):
            queued = _last(prior, lambda m: m[3] == "QUEUED")
            if queued is not None:
                claimable = max(queued[5], _run_after(queued[4]) or queued[5])
                _observe(deltas, CLAIM_TO_START, {"task_type": task_type(e)},
                         (e.created_at - claimable).total_seconds())
        else:
            started = _last(prior, lambda m: m[2] == "QUEUED" and m[3] == "RUNNING")
            if started is not None:
                _observe(deltas, RUN_TIME, {"task_type": task_type(e), "status": str(e.to_status)},
                         (e.created_at - started[5]).total_seconds())
    return deltas


def _type_label(
    store: FoldStore, deltas: Deltas, limit: int | None
) -> Callable[[str], str]:
    """task type -> its label: itself while the rollup holds fewer than `limit` types (a
    type let in gets its created counter row, at 0 if need be, so the next fold reads it as
    held), else OTHER_TYPE."""
    if limit is None:
        return lambda task_type: task_type
    held = {str(orjson.loads(text).get("task_type")) for _, text, _ in store.metric_values(CREATED)}
    held.discard(OTHER_TYPE)

    def label(task_type: str) -> str:
        if task_type in held or task_type == OTHER_TYPE:
            return task_type
        if len(held) >= limit:
            return OTHER_TYPE
        held.add(task_type)
        _add(deltas, CREATED, {"task_type": task_type}, 0)
        return task_type

    return label


def _is_start(e: TaskEvent) -> bool:
    return e.from_status == "QUEUED" and e.to_status == "RUNNING"


def _is_end(e: TaskEvent) -> bool:
    return e.from_status == "RUNNING" and e.to_status not in (None, "RUNNING")


def _last(marks: Iterable[Mark], keep: Any) -> Mark | None:
    found = None
    for m in marks:  # ordered by event_id
        if keep(m):
            found = m
    return found


def _run_after(payload: dict[str, Any]) -> datetime | None:
    raw = payload.get("run_after")
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _add(deltas: Deltas, name: str, labels: dict[str, str], amount: float) -> None:
    key = (name, labels_key(labels))
    deltas[key] = deltas.get(key, 0.0) + amount


def _observe(deltas: Deltas, name: str, labels: dict[str, str], seconds: float) -> None:
    """One observation: +1 in the one bucket it falls in (the rollup keeps buckets
    non-cumulative, the renderer adds them up) and + seconds to the sum."""
    seconds = max(0.0, seconds)
    le = BUCKET_LABELS[i] if (i := bisect_left(DURATION_BUCKETS, seconds)) < len(BUCKET_LABELS) else "+Inf"
    _add(deltas, f"{name}_bucket", {**labels, "le": le}, 1)
    _add(deltas, f"{name}_sum", labels, seconds)
