"""The storage port: one method per intent. SQLite and PostgreSQL implement it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from creep.domain.artifacts import Artifact
from creep.domain.asset import (
    AssetFilter,
    AssetMaintenanceReport,
    AssetSnapshot,
    AssetSpec,
    AssetStatus,
)
from creep.domain.asset_event import MAX_CHAIN, AssetEvent, BanPolicy
from creep.domain.errors import StorageError
from creep.domain.events import TaskEvent
from creep.domain.lease import Lease
from creep.domain.ledger import LedgerEntry, LedgerSummary
from creep.domain.outcomes import Backoff, Outcome, Resolution
from creep.domain.task import TaskOrder
from creep.domain.task_spec import TaskSpec

_DECODE_LOCK = threading.Lock()


class ClaimedTask:
    """A task this worker claimed, with its claim token and handler deadline.

    `task` (the whole TaskOrder) may be decoded lazily: a store can hand over the raw row and
    a decoder (`ClaimedTask.lazy`), so a worker that only needs the id, type and attempt
    counters never pays for ~45 decoded columns; the first read of `task` decodes it.
    `leased`: the claim took asset leases for it (a store that does not say leaves it False);
    the worker writes such a task's completion with its next claim (see Worker._completer)."""

    __slots__ = (
        "_decode", "_row", "_task", "attempt", "claim_token", "deadline_at", "leased",
        "max_attempts", "task_id", "task_type",
    )

    def __init__(
        self, task: TaskOrder, claim_token: str, deadline_at: datetime, leased: bool = False
    ) -> None:
        self._task: TaskOrder | None = task
        self._row: Any = None
        self._decode: Callable[[Any], TaskOrder] | None = None
        self.claim_token = claim_token
        self.deadline_at = deadline_at
        self.task_id = task.task_id
        self.task_type = task.task_type
        self.attempt = task.attempt
        self.max_attempts = task.max_attempts
        self.leased = leased

    @classmethod
    def lazy(
        cls, row: Any, decode: Callable[[Any], TaskOrder], claim_token: str,
        deadline_at: datetime, task_id: str, task_type: str, attempt: int, max_attempts: int,
        leased: bool = False,
    ) -> ClaimedTask:
        """A claimed task whose TaskOrder is `decode(row)`, built on first access."""
        self = cls.__new__(cls)
        self._task, self._row, self._decode = None, row, decode
        self.claim_token, self.deadline_at = claim_token, deadline_at
        self.task_id, self.task_type = task_id, task_type
        self.attempt, self.max_attempts = attempt, max_attempts
        self.leased = leased
        return self

    @property
    def task(self) -> TaskOrder:
        task = self._task
        if task is None:
            # A sync handler's thread and the event loop may both read it first: one decodes,
            # both get the same object (the lock is taken only until it is decoded).
            with _DECODE_LOCK:
                task = self._task
                if task is None:
                    assert self._decode is not None
                    task = self._task = self._decode(self._row)
                    self._row = self._decode = None
        return task

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClaimedTask):
            return NotImplemented
        return (self.task, self.claim_token, self.deadline_at) == (
            other.task, other.claim_token, other.deadline_at)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        return (f"ClaimedTask(task_id={self.task_id!r}, task_type={self.task_type!r}, "
                f"attempt={self.attempt}, claim_token={self.claim_token!r})")


@dataclass(slots=True)
class HeartbeatResult:
    #: Claims this worker no longer holds (rescued, timed out by the control plane, fenced).
    lost: list[str] = field(default_factory=list)
    #: Tasks whose cancellation was requested while they run.
    cancel_requested: list[str] = field(default_factory=list)
    #: Leases of held claims that a ban/archive REVOKED: task_id -> lease ids (asset work).
    revoked: dict[str, list[str]] = field(default_factory=dict)


@dataclass(slots=True)
class Completion:
    outcome: Outcome
    resolution: Resolution


class LaneFailed(StorageError):
    """A store's task_complete_and_claim ran in claim lanes, one transaction each, and some
    of them failed while others committed: those claimed `claimed` (to run) and wrote their
    completions; `unwritten` were not written (to write again)."""

    def __init__(
        self, message: str, claimed: Sequence[ClaimedTask], unwritten: Sequence[Completion]
    ) -> None:
        super().__init__(message)
        self.claimed = list(claimed)
        self.unwritten = list(unwritten)


@dataclass(slots=True)
class MaintenanceReport:
    promoted: int = 0
    rescued: int = 0
    timed_out: int = 0
    dead_lettered: int = 0

    def total(self) -> int:
        return self.promoted + self.rescued + self.timed_out + self.dead_lettered


@dataclass(slots=True)
class TaskFilter:
    tenant_id: str | None = None
    status: str | None = None
    task_type: str | None = None
    task_category: str | None = None
    tag: str | None = None
    batch_id: str | None = None
    project_id: str | None = None
    env: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    #: False: the tasks that are not deleted (the usual list); True: only the deleted ones.
    deleted: bool = False


class Listener(Protocol):
    """Wake-up hints from other processes (Postgres LISTEN). Polling remains the guarantee."""

    def start(self, on_wake: Callable[[str, str], None]) -> None: ...

    def stop(self) -> None: ...


class Store(Protocol):
    url: str
    dialect: str

    # schema
    def migrate(self, target: int | None = None) -> list[int]: ...
    def schema_version(self) -> int: ...
    def close(self) -> None: ...

    # tasks
    def task_create_many(self, specs: Sequence[TaskSpec], now: datetime) -> list[TaskOrder]: ...
    def task_get(self, task_id: str, tenant_id: str | None = None) -> TaskOrder: ...
    def task_get_many(
        self, task_ids: Sequence[str], tenant_id: str | None = None
    ) -> dict[str, TaskOrder]:
        """The tasks of these ids that exist (and are the tenant's), by id: one read."""
        ...
    def task_list(
        self, flt: TaskFilter, *, after: str | None = None, limit: int = 100
    ) -> list[TaskOrder]: ...
    def task_claim(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float, claim_token: str | None = None,
    ) -> list[ClaimedTask]: ...
    def task_heartbeat(
        self, worker_id: str, claims: Sequence[tuple[str, str]], now: datetime, claim_ttl: float
    ) -> HeartbeatResult: ...
    def task_complete_many(self, completions: Sequence[Completion], now: datetime) -> list[str]: ...
    def task_progress(
        self, task_id: str, claim_token: str, progress: int, message: str | None, now: datetime
    ) -> bool: ...
    def task_cancel(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None,
        reason: str | None = None,
    ) -> TaskOrder: ...
    def task_retry(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None
    ) -> TaskOrder: ...
    def task_update(
        self, task_id: str, expected_version: int, changes: dict[str, Any], now: datetime,
        *, tenant_id: str | None = None,
    ) -> TaskOrder: ...
    def task_delete(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None,
        expected_version: int | None = None,
    ) -> TaskOrder:
        """Set a finished task's deleted_at (TaskUnfinished otherwise); one already deleted
        is answered as it is, nothing written."""
        ...
    def task_restore(
        self, task_id: str, now: datetime, *, tenant_id: str | None = None,
        expected_version: int | None = None,
    ) -> TaskOrder:
        """Clear a deleted task's deleted_at; one not deleted is answered as it is."""
        ...
    def task_events(self, task_id: str, tenant_id: str | None = None) -> list[TaskEvent]: ...
    def task_events_after(
        self, cursor: str | None, *, limit: int = 500, task_id: str | None = None,
        tenant_id: str | None = None,
    ) -> list[TaskEvent]: ...
    def task_has_events_after(
        self, cursor: str | None, *, task_id: str, tenant_id: str | None = None
    ) -> bool: ...

    # leader-only maintenance
    def task_maintain(
        self, now: datetime, backoff: Backoff, timeout_grace: float
    ) -> MaintenanceReport: ...

    # locks (leadership)
    def lock_acquire(
        self, lock_key: str, holder_id: str, ttl: float, now: datetime, purpose: str = ""
    ) -> str | None: ...
    def lock_renew(
        self, lock_key: str, holder_id: str, token: str, ttl: float, now: datetime
    ) -> bool: ...
    def lock_release(self, lock_key: str, token: str, now: datetime) -> bool: ...

    # wake-ups
    def listener(self) -> Listener | None: ...
    def notify(self, channel: str, payload: str) -> None: ...

    # -- assets, leases, ledger, asset events (issue 3; implemented once for both backends in
    # -- storage/asset_store.py). Matching and leasing run inside task_claim; lease release,
    # -- task effects and auto-ban inside task_complete_many; expiry inside task_maintain.
    def asset_create_many(
        self, specs: Sequence[AssetSpec], now: datetime
    ) -> list[AssetSnapshot]: ...
    def asset_create_or_replay(
        self, specs: Sequence[AssetSpec], now: datetime
    ) -> tuple[list[AssetSnapshot], bool]: ...
    def asset_get(self, asset_id: str, tenant_id: str | None = None) -> AssetSnapshot: ...
    def asset_list(
        self, flt: AssetFilter, *, after: str | None = None, limit: int = 100
    ) -> list[AssetSnapshot]: ...
    def asset_update_many(
        self, items: Sequence[tuple[str, int, dict[str, Any]]], now: datetime, *,
        tenant_id: str | None = None,
    ) -> list[AssetSnapshot]: ...
    def asset_set_status(
        self, asset_id: str, status: AssetStatus, now: datetime, *,
        tenant_id: str | None = None, reason: str | None = None, source: str = "operator",
        only_from: AssetStatus | None = None,
    ) -> tuple[AssetSnapshot, AssetEvent]: ...
    def ban_policy_set(self, policy: BanPolicy, now: datetime) -> BanPolicy: ...
    def ban_policy_get(self, tenant_id: str, sku_category: str) -> BanPolicy | None: ...
    def ban_policy_list(
        self, tenant_id: str | None = None, *, after: tuple[str, str] | None = None,
        limit: int = 1000,
    ) -> list[BanPolicy]: ...
    def ban_policy_delete(self, tenant_id: str, sku_category: str) -> BanPolicy: ...
    def lease_list(
        self, *, tenant_id: str | None = None, task_id: str | None = None,
        asset_id: str | None = None, status: str | None = None, limit: int = 1000,
        after: str | None = None, newest_first: bool = False,
    ) -> list[Lease]: ...
    def lease_release(
        self, lease_id: str, now: datetime, *, tenant_id: str | None = None
    ) -> Lease: ...
    def asset_event_report(
        self, fields: dict[str, Any], now: datetime, *, tenant_id: str,
        task_id: str | None = None, claim_token: str | None = None,
    ) -> list[AssetEvent]: ...
    def asset_event_report_or_replay(
        self, fields: dict[str, Any], now: datetime, *, tenant_id: str,
        task_id: str | None = None, claim_token: str | None = None,
    ) -> tuple[list[AssetEvent], bool]: ...
    def asset_events_list(
        self, *, tenant_id: str | None = None, asset_id: str | None = None,
        task_id: str | None = None, correlation_id: str | None = None,
        event_type: str | None = None, limit: int = 1000, newest_first: bool = False,
    ) -> list[AssetEvent]: ...
    def asset_event_get(self, event_id: str, tenant_id: str | None = None) -> AssetEvent: ...
    def asset_event_chain(
        self, event_id: str, tenant_id: str | None = None, max_depth: int = MAX_CHAIN
    ) -> list[AssetEvent]: ...
    def ledger_record(
        self, entry: LedgerEntry, *, enforce_budget: bool = True,
        claim_token: str | None = None,
    ) -> LedgerEntry: ...
    def ledger_append(
        self, entry: LedgerEntry, *, enforce_budget: bool = True,
        claim_token: str | None = None, occurred_given: bool = False,
    ) -> tuple[LedgerEntry, bool]: ...
    def ledger_list(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 1000,
    ) -> list[LedgerEntry]: ...
    def ledger_summary(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerSummary]: ...
    def asset_maintain(self, now: datetime, limit: int = 1000) -> AssetMaintenanceReport: ...
    # -- task artifacts and the HTTP worker protocol (storage/*_artifacts.py) ------------------
    def artifact_create(self, artifact: Artifact) -> Artifact: ...
    def artifact_get(self, artifact_id: str, tenant_id: str | None = None) -> Artifact: ...
    def artifact_list(
        self, task_id: str, tenant_id: str | None = None, kind: str | None = None
    ) -> list[Artifact]: ...
    def artifact_scan(self, after: str | None = None, limit: int = 1000) -> list[Artifact]: ...
    def artifact_remove(
        self, artifact_ids: Sequence[str], reason: str, now: datetime
    ) -> list[Artifact]: ...
    def task_claim_scoped(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float, tenant_id: str, claim_token: str | None = None,
    ) -> list[ClaimedTask]: ...
    def task_claim_once(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float, claim_id: str, tenant_id: str | None = None,
    ) -> list[ClaimedTask] | None: ...
    def task_claim_forget(
        self, worker_id: str, claim_id: str, tenant_id: str | None = None
    ) -> None: ...
    def task_claimed(
        self, worker_id: str, claim_token: str, tenant_id: str | None = None
    ) -> list[ClaimedTask]: ...
    def task_claim_held(self, task_id: str, claim_token: str) -> bool: ...
    def task_event_append(
        self, task_id: str, claim_token: str, event_type: str, payload: dict[str, Any],
        now: datetime,
    ) -> TaskEvent | None: ...
