"""Pieces both backends share: the task column order, migration files, row building."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import orjson

from creep.domain.errors import (
    ConflictError,
    IdempotencyConflict,
    SchemaOutOfDate,
    SchemaTooNew,
    StorageError,
    TaskUnfinished,
    ValidationError,
    VersionConflict,
)
from creep.domain.ids import is_uuid
from creep.domain.outcomes import Backoff, Outcome, OutcomeKind, Resolution, resolve
from creep.domain.task import ResultCode, TaskOrder, TaskStatus
from creep.domain.task_spec import TaskSpec, rebind

TASK_COLUMNS: tuple[str, ...] = (
    "task_id", "idempotency_key", "tenant_id", "project_id", "env", "external_ref",
    "task_type", "task_category", "description", "priority", "timeout_ms", "max_total_cost",
    "currency", "business_value_hint", "status", "created_at", "queued_at", "started_at",
    "finished_at", "updated_at", "result_code", "result_message", "task_version", "lease_ids",
    "resource_hints", "constraints", "tenant_policies_version", "tags", "batch_id", "progress",
    "progress_message", "input_payload", "result_payload", "channel", "correlation_id",
    "depends_on", "attempt", "max_attempts", "run_after", "last_error", "claimed_by",
    "claim_expires_at", "cancel_requested", "deleted_at",
)
TASK_SELECT = ", ".join(TASK_COLUMNS)

#: How long an HTTP worker's claim_id that claimed is remembered (worker_claims): a send of
#: it that finds it claims nothing more. By then the claim's first send has long ended (its
#: wait is at most a minute) and a batch of it nobody heard has expired (claim_ttl is at
#: most an hour), so a resend that claims anew claims the only batch anyone reads.
CLAIM_IDS_KEPT = timedelta(hours=1)
#: Old worker_claims rows a claim prunes as it writes its own (bounded: a claim stays cheap).
CLAIM_IDS_PRUNED = 100


class ClaimedBefore(Exception):
    """Raised inside a claim's transaction to undo it: its claim_id claimed already."""


#: Columns written by an insert (claim and bookkeeping columns take their defaults).
INSERT_COLUMNS: tuple[str, ...] = (
    *TASK_COLUMNS[: TASK_COLUMNS.index("last_error")], "request_hash", "has_dependants",
)

#: SQLite: the prefix of a condition on task_events.task_id that lets the by-task index
#: (task_priority, task_id, event_id) serve it, e.g. f"{SQLITE_EVENTS_OF} task_id = ?"
#: (migration 0009 says why the index leads with the priority).
SQLITE_EVENTS_OF = f"task_priority IN ({', '.join(str(p) for p in range(101))}) AND"

#: Fields a caller may change through an update that names task_version.
UPDATABLE_FIELDS = frozenset(
    {
        "priority", "description", "tags", "external_ref", "task_category", "project_id",
        "timeout_ms", "max_total_cost", "business_value_hint",
    }
)
#: Of UPDATABLE_FIELDS, those a change may not set to None (the others clear to None).
NOT_NULL_UPDATES = ("priority", "timeout_ms", "tags")

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(slots=True, frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def check_known_schema(done: set[int], migrations: Sequence[Migration], target: int | None) -> None:
    """Refuse a database a newer creep migrated (its schema is not one this code was written
    for), a target below the current version (migrations only go forward) and one above the
    newest migration this code has."""
    newest, head = max(done, default=0), len(migrations)
    if newest > head:
        raise SchemaTooNew(newest, head)
    if target is not None and target < newest:
        raise ValidationError.single(
            "target", f"is below the current schema version {newest} (migrations only go "
            "forward)")
    if target is not None and target > head:
        # Stopping at head and reporting success would tell a deploy script the schema is at
        # a version this creep cannot reach.
        raise ValidationError.single(
            "target", f"is above the newest migration this creep has ({head}): upgrade creep")


def schema_mismatch(version: int, dialect: str) -> SchemaOutOfDate | None:
    """Why code with this creep's migrations must not use a schema at `version`, or None
    when that is the newest migration it has (the one rule of the store check at first
    use, /health/ready and `creep migrate`)."""
    head = len(load_migrations(dialect))
    if version > head:
        return SchemaTooNew(version, head)
    if version < head:
        return SchemaOutOfDate(version, head)
    return None


def migration_failed(migration: Migration, exc: Exception, done: set[int]) -> StorageError:
    """A migration the database refused. The run is one transaction, rolled back whole: the
    schema stays at the version it had (`done`)."""
    reason = " ".join(str(exc).split())  # one line (psycopg adds DETAIL/HINT lines)
    return StorageError(
        f"migration {migration.version:04d}_{migration.name} failed: {reason}; nothing was "
        f"applied (the schema is still at version {max(done, default=0)})")


def load_migrations(dialect: str) -> list[Migration]:
    folder = resources.files("creep.storage") / "migrations" / dialect
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..n: {versions}")
    return found


def dependency_failed_message(dependency_id: str, status: str) -> str:
    """The result_message of a task cancelled because `dependency_id` ended in `status`
    (the stores' cascades build the same text in SQL)."""
    return f"dependency {dependency_id} ended {status}"


def new_task(
    spec: TaskSpec, status: TaskStatus, now: datetime, dep_status: Mapping[str, str] | None = None,
) -> TaskOrder:
    """The stored form of a freshly created task; a CANCELLED one names its first dependency
    (in `dep_status`, the status of each) that ended without success."""
    # Positional, in TaskOrder's field order: a bulk submission builds thousands of these.
    if status is TaskStatus.CANCELLED:
        finished: datetime | None = now
        code: str | None = "DEPENDENCY_FAILED"
        deps = dep_status or {}
        dead = next((d for d in spec.depends_on if deps.get(d) in _DEAD_ENDS), None)
        message: str | None = (
            "a dependency did not succeed" if dead is None
            else dependency_failed_message(dead, TaskStatus(deps[dead]).value)
        )
    else:
        finished = code = message = None
    return TaskOrder(
        spec.task_id, spec.idempotency_key, spec.tenant_id, spec.project_id, spec.env,
        spec.external_ref, spec.task_type, spec.task_category, spec.description,
        spec.priority, spec.timeout_ms, spec.max_total_cost, spec.currency,
        spec.business_value_hint, status, now, now if status is TaskStatus.QUEUED else None,
        None, finished, now, code, message, 1, [], spec.resource_hints, spec.constraints,
        spec.tenant_policies_version, spec.tags, spec.batch_id, 0, None, spec.input_payload,
        None, spec.channel, spec.correlation_id, spec.depends_on, 0, spec.max_attempts,
        spec.run_after or now,
    )


def is_plain(spec: TaskSpec) -> bool:
    """True when every optional column of the new task keeps its table default (NULL, '[]',
    '{}'): the common bulk order. Stores then insert only the columns that vary."""
    return (
        spec.project_id is None and spec.external_ref is None and spec.task_category is None
        and spec.description is None and spec.max_total_cost is None
        and spec.business_value_hint is None and not spec.resource_hints
        and not spec.constraints and spec.tenant_policies_version is None and not spec.tags
        and spec.batch_id is None and spec.channel is None and not spec.depends_on
    )


#: The other INSERT_COLUMNS, with the value a new task row holds when the column keeps its
#: table default (as the stores' row builders write it): a batch may leave such columns out.
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "project_id": None, "external_ref": None, "task_category": None, "description": None,
    "max_total_cost": None, "business_value_hint": None, "started_at": None,
    "finished_at": None, "result_code": None, "result_message": None, "task_version": 1,
    "lease_ids": b"[]", "resource_hints": b"[]", "constraints": b"{}",
    "tenant_policies_version": None, "tags": b"[]", "batch_id": None, "progress": 0,
    "progress_message": None, "result_payload": None, "channel": None, "depends_on": b"[]",
    "attempt": 0, "has_dependants": 0,
}

#: The columns of a plain new task (see is_plain), in the order of plain_row's values.
PLAIN_COLUMNS: tuple[str, ...] = (
    "task_id", "idempotency_key", "request_hash", "tenant_id", "env", "task_type", "priority",
    "timeout_ms", "currency", "status", "created_at", "queued_at", "updated_at",
    "input_payload", "correlation_id", "max_attempts", "run_after",
)


def initial_status(
    spec: TaskSpec, dep_status: dict[str, str], now: datetime
) -> TaskStatus:
    """Where a new task starts, given the current status of each of its dependencies."""
    if not spec.depends_on:  # the bulk-enqueue common case
        if spec.run_after is not None and spec.run_after > now:
            return TaskStatus.PENDING
        return TaskStatus.QUEUED
    statuses = [dep_status[d] for d in spec.depends_on]
    if any(s in _DEAD_ENDS for s in statuses):
        return TaskStatus.CANCELLED
    if any(s != TaskStatus.SUCCESS for s in statuses):
        return TaskStatus.PENDING
    if spec.run_after is not None and spec.run_after > now:
        return TaskStatus.PENDING
    return TaskStatus.QUEUED


_DEAD_ENDS = frozenset(
    {TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMEOUT, TaskStatus.DEAD_LETTER}
)


def creation_events(task: TaskOrder) -> list[tuple[str, str | None, str, dict[str, Any]]]:
    """(event_type, from_status, to_status, payload) rows for a newly created task."""
    events: list[tuple[str, str | None, str, dict[str, Any]]] = [
        ("created", None, "PENDING", {"task_type": task.task_type, "priority": task.priority})
    ]
    if task.status is TaskStatus.QUEUED:
        events.append(("queued", "PENDING", "QUEUED", {}))
    elif task.status is TaskStatus.CANCELLED:
        events.append(("cancelled", "PENDING", "CANCELLED",
                       {"result_code": "DEPENDENCY_FAILED", "message": task.result_message}))
    return events


def resolution_payload(res: Resolution, error: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if res.result_code:
        payload["result_code"] = res.result_code
    if res.result_message:
        payload["message"] = res.result_message
    if error:
        payload["error"] = error[:4000]
    if res.status is TaskStatus.QUEUED and res.run_after is not None:
        payload["run_after"] = res.run_after.isoformat()
    return payload


def dumps(value: Any) -> bytes:
    if not value and type(value) in (list, dict):  # the usual empty tags/hints/constraints
        return b"[]" if type(value) is list else b"{}"
    return orjson.dumps(value, default=json_default)


def json_default(value: Any) -> Any:
    """What orjson cannot write itself, as creep stores it: Decimal as text, sets as lists."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def check_dependencies(
    specs: Sequence[TaskSpec], found: dict[str, tuple[str, str]],
    submitted: Sequence[TaskSpec] | None = None,
) -> dict[str, str]:
    """Reject unknown dependencies (a task of another tenant is unknown, too, and so is a
    deleted one: the stores leave tasks in the recycle bin out of `found`).

    `found` maps existing task ids to (status, tenant_id). Returns id -> status. An error
    names an order by its place in `submitted` (the orders as sent, when `specs` leaves
    replays out), else in `specs`.
    """
    in_batch = {s.task_id: s for s in specs}
    place: dict[str, int] = {}
    for i, spec in enumerate(submitted if submitted is not None else specs):
        place.setdefault(spec.task_id, i)
    errors = []
    for spec in specs:
        i = place[spec.task_id]
        for j, dep in enumerate(spec.depends_on):
            owner = in_batch[dep].tenant_id if dep in in_batch else found.get(dep, ("", ""))[1]
            if owner != spec.tenant_id:
                errors.append((f"tasks[{i}].depends_on[{j}]", f"unknown task id {dep}"))
    if errors:
        raise ValidationError(errors)
    return {task_id: status for task_id, (status, _) in found.items()}


class Unchanged(Exception):
    """Raised inside a write transaction that has nothing to do: it rolls back, so nothing
    is written, not even what rides along (the API's audit row); `task` is the answer."""

    def __init__(self, task: TaskOrder) -> None:
        super().__init__(task.task_id)
        self.task = task


def status_counts_where(
    tenant_id: str | None, deleted: bool, placeholder: str
) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause (and its parameters) of the task counts by status: the tasks not
    deleted, as the task list shows them, or (`deleted`) the recycle bin; of one tenant or
    of all."""
    where = "deleted_at IS NOT NULL" if deleted else "deleted_at IS NULL"
    if tenant_id:
        return f"tenant_id = {placeholder} AND {where}", (tenant_id,)
    return where, ()


def check_soft_delete(task: TaskOrder, delete: bool, expected_version: int | None) -> None:
    """Whether `task` (read under its row lock) may be deleted (`delete`) or restored:
    Unchanged when it already is, VersionConflict when it moved past `expected_version`,
    TaskUnfinished when a delete meets a task that has not finished (a deleted task never
    runs again: retry, cancel and update refuse it with TaskDeleted)."""
    if (task.deleted_at is not None) == delete:
        raise Unchanged(task)
    if expected_version is not None and task.task_version != expected_version:
        raise VersionConflict("task", task.task_id, expected_version, task.task_version)
    if delete and not task.is_terminal:
        raise TaskUnfinished(task.task_id, task.status.value)


def check_retry_dependencies(task: TaskOrder, found: dict[str, str]) -> None:
    """Refuse (ConflictError) to retry `task` unless every task its depends_on names
    (`found`: id -> status) ended SUCCESS. One that no longer exists (retention deleted it)
    passes only if `task` ever ran: it was queued only once every dependency had succeeded,
    and SUCCESS is final. Otherwise whether it succeeded is lost, and the retry is refused."""
    for dep in task.depends_on:
        status = found.get(dep)
        if status is None:
            if task.attempt > 0:
                continue
            raise ConflictError(
                f"task {task.task_id}: dependency {dep} no longer exists (retention deleted "
                "it), so whether it succeeded is unknown: submit the task anew")
        if status != TaskStatus.SUCCESS:
            raise ConflictError(
                f"task {task.task_id}: dependency {dep} is {status}, not SUCCESS")


@dataclass(slots=True)
class ReplayPlan:
    """How a submission splits into new tasks and replays of existing ones."""

    fresh: list[TaskSpec]
    slots: list[TaskOrder | str]  # an existing task (replayed), or the id of a fresh one

    def resolve(self, created: dict[str, TaskOrder]) -> list[TaskOrder]:
        out: list[TaskOrder] = []
        first_use: set[str] = set()
        for slot in self.slots:
            if isinstance(slot, TaskOrder):
                out.append(slot)
            elif slot in first_use:
                # The same key twice in one submission: the second is a replay of the first.
                twin = replace(created[slot], replayed=True)
                out.append(twin)
            else:
                first_use.add(slot)
                out.append(created[slot])
        return out


def plan_replays(
    specs: Sequence[TaskSpec], lookup: Callable[[TaskSpec], tuple[TaskOrder, str] | None]
) -> ReplayPlan:
    """Match each spec against an existing task with its idempotency key (and earlier specs
    in the same submission). Raises IdempotencyConflict when a body differs."""
    plan = ReplayPlan(fresh=[], slots=[])
    earlier: dict[tuple[str, str, str], TaskSpec] = {}
    for spec in specs:
        key = (spec.tenant_id, spec.env, spec.idempotency_key)
        existing = lookup(spec)
        if existing is not None:
            task, request_hash = existing
            if request_hash != spec.request_hash:
                raise IdempotencyConflict(*key, task.task_id)
            task.replayed = True
            plan.slots.append(task)
        elif key in earlier:
            first = earlier[key]
            if first.request_hash != spec.request_hash:
                raise IdempotencyConflict(*key, first.task_id)
            plan.slots.append(first.task_id)
        else:
            earlier[key] = spec
            plan.fresh.append(spec)
            plan.slots.append(spec.task_id)
    return plan


def set_replays_aside(
    specs: Sequence[TaskSpec], lookup: Callable[[TaskSpec], tuple[TaskOrder, str] | None]
) -> ReplayPlan | None:
    """For a submission refused for a dependency that is unknown now (deleted, or purged by
    retention): its orders that are resends (their idempotency key and body exist) are
    answered by the task written when the dependency was known, and only the others
    (`plan.fresh`) are checked and created. Returns the plan that resolves the answer; None
    when no order is a resend (the refusal stands)."""
    plan = plan_replays(specs, lookup)
    return None if len(plan.fresh) == len(specs) else plan


def sortable_cursor(after: str, *, micros: bool) -> tuple[Any, str]:
    """A `<created>/<id>` listing cursor as this store issued it: (microseconds, id) on
    SQLite (`micros`), (an aware datetime, id) on PostgreSQL. Anything else (another store's
    form, a forged one) is a ValidationError, not a database error."""
    created, _, key = after.partition("/")
    if is_uuid(key):
        if micros and created.isascii() and created.isdecimal() and len(created) <= 18:
            return int(created), key
        if not micros:
            try:
                when = datetime.fromisoformat(created)
            except ValueError:
                when = None
            if when is not None and when.tzinfo is not None:
                return when, key
    raise ValidationError.single("cursor", "is not a cursor this listing issued")


def bind_replayed_dependencies(
    specs: Sequence[TaskSpec], lookup: Callable[[TaskSpec], tuple[TaskOrder, str] | None]
) -> tuple[ReplayPlan | None, list[TaskSpec]]:
    """A submission whose orders depend on others of the same submission, some of which are
    replays (their idempotency key exists, or repeats an earlier order's): the dependants
    depend on the task a replay stands for, with its current status, not on a row that is
    never written, and are fingerprinted so (rebind), replays among them too. Returns the
    plan that resolves the answer and the orders to create, their depends_on rebound;
    (None, specs) when no order needs it."""
    ids = {s.task_id for s in specs}
    if not any(d in ids for s in specs for d in s.depends_on):
        return None, list(specs)
    # Which task each order stands for is decided by its key alone; whether its body
    # matches (plan_replays) is asked once its dependencies are bound.
    found = {s.task_id: lookup(s) for s in specs}
    first: dict[tuple[str, str, str], str] = {}
    alias: dict[str, str] = {}
    for spec in specs:
        hit = found[spec.task_id]
        target = hit[0].task_id if hit is not None else first.setdefault(
            (spec.tenant_id, spec.env, spec.idempotency_key), spec.task_id)
        if target != spec.task_id:
            alias[spec.task_id] = target
    bound = [rebind(s, alias) if any(d in alias for d in s.depends_on) else s for s in specs]
    plan = plan_replays(bound, lambda s: found[s.task_id])
    if len(plan.fresh) == len(specs):
        return None, bound
    return plan, plan.fresh


#: The result_message of a task cancelled when its attempt ended in a retry (or its worker
#: was lost) after a cancellation was requested: it is not run again.
CANCELLED_WHILE_ENDING = "cancellation requested while it ran; not retried"


def rescue(
    task_id: str, token: str, attempt: int, max_attempts: int, deadline: datetime | None,
    expires: datetime | None, now: datetime, backoff: Backoff, grace_ms: int | None = None,
) -> tuple[Outcome, Resolution]:
    """What the control plane does with a running task whose claim expired or deadline passed.
    `grace_ms` (the task's constraints.timeout_grace_ms, a schedule's timeout_grace_period)
    moves the point where it is called timed out to deadline + grace; a lost worker before
    that is a retry. What counts is when the claim expired, not when the sweep runs: a worker
    lost long before the deadline was lost, even if the sweep only comes after it."""
    if deadline is not None and grace_ms:
        deadline += timedelta(milliseconds=int(grace_ms))
    if deadline is not None and deadline < now and (expires is None or expires > deadline):
        outcome = Outcome(
            task_id, token, OutcomeKind.TIMED_OUT,
            message="deadline passed and the worker did not finish the task",
        )
    else:
        outcome = Outcome(
            task_id, token, OutcomeKind.RETRY,
            error=f"claim expired at {expires.isoformat() if expires else '?'} (worker lost)",
        )
    res = resolve(outcome, attempt=attempt, max_attempts=max_attempts, now=now, backoff=backoff)
    if outcome.kind is OutcomeKind.RETRY:  # structural: schedules read it (interrupted)
        res = replace(res, result_code=ResultCode.WORKER_LOST)
    return outcome, res


def given_task_ids(specs: Sequence[TaskSpec]) -> list[str]:
    """The task ids callers chose (TaskSpec.given_id), for reused_task_ids."""
    return sorted({s.task_id for s in specs if s.given_id})


def refuse_reused_task_ids(reused: Sequence[str]) -> None:
    """A task id names one task for good: once retention deleted a task, its ledger entries
    and leases still name it, and a new task of that id would inherit them (its budget
    counted the old task's costs). Such an id is refused, not reused."""
    if reused:
        raise ConflictError(
            f"task_id {sorted(reused)[0]} belonged to a task that retention deleted (its "
            "ledger entries or leases still name it): choose a new task_id")


#: PostgreSQL's advisory lock of a batch (its id the one parameter): task retention takes it
#: before it judges a large batch and marks it for deletion (batch_purges), task_retry shares
#: it before it reads the mark, so a retry either reopens the batch before it is judged or
#: finds it marked.
BATCH_PURGE_LOCK = "hashtext('creep.retention.batch.' || %s)"
#: Whether the batch is being deleted by task retention (migrations sqlite 0021, postgres 0022).
BATCH_PURGING = "SELECT 1 FROM batch_purges WHERE batch_id = ?"


def refuse_purging_batch(task_id: str, batch_id: str, marked: object) -> None:
    """A task of a batch task retention is deleting (`marked`: the batch_purges row; its
    tasks go in several transactions, the batch itself went first) is not retried: that
    would reopen a batch that is gone."""
    if marked:
        raise ConflictError(
            f"task {task_id}: its batch {batch_id} is being deleted by task retention")
