"""Typed views of what the REST API returns. Each model keeps the full JSON in `raw`
(so fields added by a newer server are never lost) and parses timestamps to datetimes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Self, TypeVar

# Money travels as decimal strings; the models hold Decimals (never floats).
_MONEY = frozenset({"cost_per_lease", "cost", "amount", "revenue", "margin", "max_total_cost",
                    "business_value_hint"})
_TIMES = frozenset({"run_after", "next_run", "cooldown_until"})


def _parse(name: str, value: Any) -> Any:
    if isinstance(value, str):
        if name.endswith("_at") or name in _TIMES:
            return datetime.fromisoformat(value)
        if name in _MONEY:
            return Decimal(value)
    return value


@dataclass(frozen=True, slots=True)
class Model:
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)} - {"raw"}
        kwargs = {n: _parse(n, data.get(n)) for n in names}
        return cls(raw=data, **kwargs)


@dataclass(frozen=True, slots=True)
class Task(Model):
    task_id: str
    tenant_id: str
    env: str
    idempotency_key: str
    task_type: str
    status: str
    priority: int
    attempt: int
    max_attempts: int
    progress: int
    progress_message: str | None
    result_code: str | None
    result_message: str | None
    result_payload: Any
    input_payload: Any
    task_version: int
    batch_id: str | None
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    max_total_cost: Decimal | None
    currency: str
    run_after: datetime
    # The rest of the TaskOrder (seed 000, seed 004) and of the queue's fields.
    project_id: str | None
    external_ref: str | None
    task_category: str | None
    description: str | None
    timeout_ms: int
    business_value_hint: Decimal | None
    queued_at: datetime | None
    started_at: datetime | None
    lease_ids: list[str]
    resource_hints: list[dict[str, Any]]
    constraints: dict[str, Any]
    tenant_policies_version: str | None
    channel: str | None
    correlation_id: str
    depends_on: list[str]
    last_error: str | None
    claimed_by: str | None
    claim_expires_at: datetime | None
    cancel_requested: bool
    deleted_at: datetime | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({"SUCCESS", "FAILED", "CANCELLED", "TIMEOUT", "DEAD_LETTER"})


@dataclass(frozen=True, slots=True)
class TaskEvent(Model):
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


@dataclass(frozen=True, slots=True)
class Tenant(Model):
    tenant_id: str
    name: str
    rate_limit_per_second: float | None
    rate_limit_burst: int | None
    max_active_tasks: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey(Model):
    key_id: str
    name: str
    role: str
    tenant_id: str | None
    read_only: bool
    principal_type: str
    key_hint: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class CreatedKey(ApiKey):
    #: The secret itself: the only time the server shows it.
    key: str


@dataclass(frozen=True, slots=True)
class Batch(Model):
    batch_id: str
    tenant_id: str
    title: str
    status: str
    total_count: int
    completed_count: int
    failed_count: int
    cancelled_count: int
    running_count: int
    progress: int
    created_at: datetime
    cancelled_at: datetime | None
    tasks: list[dict[str, Any]] | None
    metadata: dict[str, Any]
    updated_at: datetime

    @property
    def is_finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class AuditEvent(Model):
    id: str
    seq: int
    action: str
    resource_type: str
    resource: dict[str, Any]
    user: dict[str, Any]
    tenant_id: str | None
    request_id: str | None
    created_at: datetime
    # Seed 003's AuditEvent: Unix milliseconds, the old/new images, the request's client.
    timestamp: int
    diff_object: dict[str, Any]
    client_ip: str | None
    user_agent: str | None
    request_method: str | None
    data: dict[str, str]


@dataclass(frozen=True, slots=True)
class Artifact(Model):
    artifact_id: str
    task_id: str
    tenant_id: str
    kind: str
    file_name: str
    mime_type: str
    size_bytes: int
    checksum: str
    url: str
    created_at: datetime
    width: int | None
    height: int | None
    object_key: str
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Claimed(Model):
    """A task claimed over the HTTP worker protocol."""

    claim_token: str
    deadline_at: datetime

    @property
    def task(self) -> Task:
        return Task.from_json(self.raw["task"])


@dataclass(frozen=True, slots=True)
class Asset(Model):
    """A pooled asset (PRODUCT.md AssetSnapshot)."""

    asset_id: str
    tenant_id: str
    project_id: str | None
    env: str | None
    sku_category: str
    sku_code: str
    attributes: dict[str, Any]
    status: str
    max_concurrency: int
    current_concurrency: int
    health_score: int
    cooldown_seconds: int
    cooldown_until: datetime | None
    cost_per_lease: Decimal
    currency: str
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class BanPolicy(Model):
    """An auto-ban policy: `max_failures` failure events on one asset of `sku_category`
    within `window_seconds` ban it (failure types: `failure_event_types`, or when empty any
    type ending in `_FAIL` and TASK_TIMEOUT)."""

    tenant_id: str
    sku_category: str
    max_failures: int
    window_seconds: int
    failure_event_types: list[str]
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Lease(Model):
    lease_id: str
    tenant_id: str
    task_id: str
    asset_id: str
    status: str
    acquired_at: datetime
    expires_at: datetime | None
    released_at: datetime | None
    cost: Decimal
    currency: str
    hint_index: int


@dataclass(frozen=True, slots=True)
class AssetEvent(Model):
    """What happened to an asset (seed 001): reported, or written by creep itself."""

    event_id: str
    tenant_id: str
    asset_id: str
    task_id: str | None
    lease_id: str | None
    correlation_id: str | None
    causation_id: str | None
    event_type: str
    source: str | None
    severity: str | None
    old_status: str | None
    new_status: str | None
    message: str | None
    error_code: str | None
    http_status: int | None
    occurred_at: datetime
    recorded_at: datetime
    tags: list[str]
    context: dict[str, Any]
    # The rest of seed 001's fields.
    project_id: str | None
    env: str | None
    error_message: str | None
    provider_status: str | None
    latency_ms: int | None
    retryable: bool | None
    version: int


@dataclass(frozen=True, slots=True)
class ReportedEvent(Model):
    """The answer to reporting an event: the event and what it caused (e.g. ASSET_BANNED)."""

    @property
    def event(self) -> AssetEvent:
        return AssetEvent.from_json(self.raw["event"])

    @property
    def caused(self) -> list[AssetEvent]:
        return [AssetEvent.from_json(e) for e in self.raw.get("caused", [])]


@dataclass(frozen=True, slots=True)
class LedgerEntry(Model):
    entry_id: str
    tenant_id: str
    project_id: str | None
    task_id: str | None
    asset_id: str | None
    lease_id: str | None
    entry_type: str
    amount: Decimal
    currency: str
    description: str | None
    occurred_at: datetime
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class LedgerGroup(Model):
    """One row of a ledger summary (the grouping fields not asked for are None)."""

    tenant_id: str | None
    project_id: str | None
    task_id: str | None
    currency: str
    cost: Decimal
    revenue: Decimal
    margin: Decimal
    entries: int


@dataclass(frozen=True, slots=True)
class LedgerSummary(Model):
    group_by: list[str]

    @property
    def items(self) -> list[LedgerGroup]:
        return [LedgerGroup.from_json(g) for g in self.raw.get("items", [])]


@dataclass(frozen=True, slots=True)
class Schedule(Model):
    """A ScheduledTask (seed 003): each firing creates a task of `type`."""

    uid: str
    tenant_id: str
    name: str
    type: str
    description: str | None
    is_recurring: bool
    cron_expr: str | None
    interval: int | None
    timezone: str
    next_run: datetime | None
    enabled: bool
    max_concurrent: int
    priority: int
    data: Any
    env: str
    max_total_cost: Decimal | None
    total_executions: int
    success_executions: int
    failure_executions: int
    last_executed_at: datetime | None
    version: int
    created_at: datetime | None
    updated_at: datetime | None
    # The rest of seed 003's ScheduledTask and of the TaskOrder template.
    max_duration_seconds: int
    max_retries: int
    timeout_grace_period: int
    labels: dict[str, str]
    misfire_policy: str
    misfire_limit: int
    misfire_grace_seconds: int
    project_id: str | None
    resource_hints: list[dict[str, Any]]
    tags: list[str]
    currency: str
    consecutive_failures: int
    last_failure_error: str | None


@dataclass(frozen=True, slots=True)
class Execution(Model):
    """One firing of a schedule (TaskExecution)."""

    id: int
    tenant_id: str
    task_uid: str
    task_name: str
    execution_uid: str
    task_id: str | None
    run_by: str
    scheduled_at: datetime
    started_at: datetime
    finished_at: datetime | None
    state: str
    error_message: str | None
    duration_ms: int
    trigger_type: str
    trigger_by: str | None
    # The rest of seed 003's TaskExecution.
    task_type: str
    result: str | None
    result_truncated: bool
    error_stack: str | None
    error_stack_truncated: bool
    progress: int
    retry_count: int
    created_at: datetime
    updated_at: datetime


M = TypeVar("M", bound=Model)


@dataclass(frozen=True, slots=True)
class Page(Generic[M]):
    """One page of a list; pass `next_cursor` back as `cursor` (None: the last page)."""

    items: list[M]
    next_cursor: str | None
