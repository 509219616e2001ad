"""The storage port of the REST API: tenants, keys, audit, batches and shared limits.

Both backends implement it through a mixin (`storage/sqlite_api.py`, `storage/postgres_api.py`),
so `Store` itself stays what the engine needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol

from creep.domain.audit import AuditEvent
from creep.domain.batch import Batch
from creep.domain.task import TaskOrder
from creep.domain.task_spec import TaskSpec
from creep.domain.tenancy import ApiKey, Tenant
from creep.ports import Store
from creep.storage.metrics_store import FoldStep, Mark, MetricsGauges


@dataclass(slots=True)
class AuditFilter:
    resource_type: str | None = None
    action: str | None = None
    principal: str | None = None  # key id (Principal.uid)
    resource_id: str | None = None
    request_id: str | None = None
    tenant_id: str | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None


@dataclass(slots=True)
class AuditRow:
    """An audit event as the API builds it; the store assigns seq."""

    id: str
    timestamp_ms: int
    action: str
    resource_type: str
    resource: dict[str, Any]
    user: dict[str, Any]
    tenant_id: str | None
    diff_object: dict[str, Any]
    client_ip: str | None
    user_agent: str | None
    request_method: str | None
    request_id: str | None
    data: dict[str, str]
    created_at: datetime


@dataclass(slots=True)
class BatchCancelled:
    """What a batch cancel did, in its one transaction."""

    cancelled: list[str] = field(default_factory=list)  # were PENDING/QUEUED, now CANCELLED
    requested: list[str] = field(default_factory=list)  # RUNNING, now asked to stop
    dependants: int = 0  # tasks elsewhere cancelled because they depended on those


class ApiStore(Store, Protocol):
    # tenants and keys
    def tenant_create(self, tenant: Tenant) -> Tenant: ...
    def tenant_get(self, tenant_id: str) -> Tenant: ...
    def tenant_update(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant: ...
    def tenant_list(self, *, after: str | None = None, limit: int = 100) -> list[Tenant]: ...
    def key_create(self, key: ApiKey, key_hash: str) -> ApiKey: ...
    def key_get(self, key_id: str) -> ApiKey: ...
    def key_by_hash(self, key_hash: str) -> ApiKey | None: ...
    def key_revoke(self, key_id: str, now: datetime) -> ApiKey: ...
    def key_ensure(self, key: ApiKey, key_hash: str) -> tuple[ApiKey, bool]: ...

    # audit
    def commit_pending(self) -> None: ...
    def snapshot(self, resource_type: str, resource_id: str) -> dict[str, Any] | None: ...
    def audit_list(
        self, flt: AuditFilter, *, after: int | None = None, limit: int = 100
    ) -> list[AuditEvent]: ...

    # batches
    def batch_get(self, batch_id: str, tenant_id: str | None = None) -> Batch: ...
    def batch_list(
        self, tenant_id: str | None, *, after: str | None = None, limit: int = 100
    ) -> list[Batch]: ...
    def batch_cursor(self, batch: Batch) -> str: ...
    def batch_task_counts(
        self, batch_id: str, tenant_id: str
    ) -> dict[str, tuple[int, int]]: ...
    def batch_cancel(
        self, batch_id: str, now: datetime, tenant_id: str | None = None
    ) -> tuple[Batch, BatchCancelled]: ...

    # limits shared by all API nodes
    def rate_take(self, bucket: str, rate: float, burst: int, now: datetime) -> float: ...

    # operations
    def ping(self, timeout: float) -> int: ...
    def queue_depth(self) -> list[tuple[str, int, int]]: ...
    def task_status_counts(
        self, tenant_id: str | None, *, deleted: bool = False
    ) -> dict[str, int]: ...
    # /metrics (storage/metrics_store.py)
    def metric_fold(self, name: str, step: FoldStep) -> bool: ...
    def metric_values(self, name: str | None = None) -> list[tuple[str, str, float]]: ...
    def metric_task_marks(
        self, task_ids: Sequence[str]) -> tuple[dict[str, str], list[Mark]]: ...
    def metric_gauges(self) -> MetricsGauges: ...
    def list_cursor(self, task: TaskOrder) -> str: ...
    # the API's group commits from the event loop, where the backend has a driver for it
    def async_task_inserter(self) -> AsyncTaskInserter | None: ...


class AsyncTaskInserter(Protocol):
    """Writes new tasks from an event loop (see storage/postgres_async.py)."""

    async def insert_new(
        self, specs: Sequence[TaskSpec], tasks: Mapping[str, TaskOrder], now: datetime,
        audits: Sequence[AuditRow],
    ) -> dict[str, TaskOrder]: ...
    async def aclose(self) -> None: ...


#: Rows in these tables are snapshotted into audit diffs by (table, key column). Columns that
#: hold secrets are never copied. Add a resource of your own here.
SNAPSHOT_TABLES: dict[str, tuple[str, str]] = {
    "batch": ("batches", "batch_id"),
    "tenant": ("tenants", "tenant_id"),
    "apiKey": ("api_keys", "key_id"),
    # assets, leases, asset events and the ledger (routes/assets.py, asset_events.py, ledger.py)
    "asset": ("assets", "asset_id"),
    "lease": ("leases", "lease_id"),
    "assetEvent": ("asset_events", "event_id"),
    "ledgerEntry": ("ledger_entries", "entry_id"),
}
SECRET_COLUMNS = frozenset({"key_hash", "claim_token", "request_hash"})


_SNAPSHOT_FIELDS = tuple(f.name for f in fields(TaskOrder) if f.name != "replayed")


def task_snapshot(task: TaskOrder) -> dict[str, Any]:
    """What an audit diff records of a task."""
    # Shallow on purpose (asdict deep-copies every nested value): this runs per request.
    return {name: getattr(task, name) for name in _SNAPSHOT_FIELDS}
