"""Request and response bodies (Pydantic v2). Field names and enums follow the seeds.

Requests are checked for shape here and for the seed's rules by the domain validators (which
name every field and rule); responses are built by the `*_json` helpers, which produce exactly
the models below (the OpenAPI contract schemathesis checks).

A request's integers, booleans and numbers must be JSON's own (StrictInt, StrictBool,
StrictFloat: a float takes an integer too): `"90"` or `true` is no priority, `"true"` no
`retryable`; lax parsing would turn them into 90, 1 and True before the domain validators,
which refuse them from Python, ever saw them. Timestamps are ISO 8601 strings (`Timestamp`);
money stays a Decimal from a string or a number."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)
from pydantic_core import PydanticCustomError

from creep.api.settings import MIN_RATE_PER_SECOND
from creep.domain.audit import AuditEvent
from creep.domain.batch import Batch, BatchCounts
from creep.domain.errors import ValidationError
from creep.domain.events import TaskEvent
from creep.domain.ids import canonical_uuid
from creep.domain.task import TaskOrder
from creep.domain.tenancy import ApiKey, Tenant
from creep.domain.text import find_bad_text

Str255 = Field(default=None, max_length=255)


def _timestamp_text(value: Any) -> Any:
    """A request's timestamp is ISO 8601 text: a number is no instant (lax parsing read 60,
    or "60", as 1970-01-01T00:01:00Z), nor is a bool."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
    raise PydanticCustomError("datetime_type", "Input should be an ISO 8601 timestamp string")


#: A request body's timestamp: an ISO 8601 string (the time zone is checked by the routes).
Timestamp = Annotated[datetime, BeforeValidator(_timestamp_text)]

#: A path or query parameter naming a task, asset, lease, event, artifact, batch or API key
#: by its UUID, in creep's form (lower case): SQLite then finds it as PostgreSQL does in any
#: case (and batch and key ids, text on both, are found at all). Text that is no UUID passes
#: unchanged and names nothing (a 404 or an empty page, as before).
UuidParam = Annotated[str, AfterValidator(canonical_uuid)]


class _In(BaseModel):
    """Base of request bodies: unknown fields and unstorable text are validation errors."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        found = find_bad_text(data)
        if found is not None:
            # Not a ValueError: Pydantic would report it on the model ("body"); a CreepError
            # passes through validation and its 422 names the field itself.
            raise ValidationError.single(found[0] or "body", found[1])
        return data


# -- tasks -------------------------------------------------------------------------------------


class ResourceHintIn(_In):
    sku_category: str = Field(min_length=1, max_length=255)
    sku_code: str | None = Field(default=None, min_length=1, max_length=255)
    min_count: StrictInt = Field(default=1, ge=1, le=100)
    attributes: dict[str, Any] = Field(default_factory=dict)


class TaskOrderIn(_In):
    """A TaskOrder (seed 000) to create. `tenant_id` is taken from a tenant key; an admin
    key names it."""

    task_id: uuid.UUID | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    tenant_id: str | None = Field(default=None, min_length=1, max_length=128)
    project_id: str | None = Field(default=None, max_length=128)
    env: str | None = Field(default=None, min_length=1, max_length=64)
    external_ref: str | None = Field(default=None, max_length=255)
    task_type: str = Field(min_length=1, max_length=128)
    task_category: str | None = Field(default=None, max_length=128)
    description: str | None = Field(default=None, max_length=10_000)
    priority: StrictInt | None = Field(default=None, ge=0, le=100)
    timeout_ms: StrictInt | None = Field(default=None, ge=1, le=7 * 24 * 3600 * 1000)
    max_total_cost: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3,4}$")
    business_value_hint: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    resource_hints: list[ResourceHintIn] | None = Field(default=None, max_length=100)
    constraints: dict[str, Any] | None = None
    tenant_policies_version: str | None = Field(default=None, max_length=128)
    tags: list[str] | None = Field(default=None, max_length=64)
    batch_id: str | None = Field(default=None, max_length=128)
    input_payload: Any = None
    channel: str | None = Field(default=None, max_length=64)
    correlation_id: str | None = Field(default=None, max_length=255)
    depends_on: list[uuid.UUID] | None = Field(default=None, max_length=1000)
    run_after: Timestamp | None = None

    def fields(self) -> dict[str, Any]:
        """The fields as sent (unset ones left out), for the domain validator."""
        data = self.model_dump(exclude_unset=True)
        if data.get("resource_hints") is not None:
            data["resource_hints"] = [
                h.model_dump(exclude_unset=True) for h in self.resource_hints or []
            ]
        if data.get("task_id") is not None:
            data["task_id"] = str(data["task_id"])
        if data.get("depends_on") is not None:
            data["depends_on"] = [str(d) for d in data["depends_on"]]
        return data


class TaskPatch(_In):
    """Fields that may change after creation (with If-Match: <task_version>)."""

    priority: StrictInt | None = Field(default=None, ge=0, le=100)
    description: str | None = Field(default=None, max_length=10_000)
    tags: list[str] | None = Field(default=None, max_length=64)
    external_ref: str | None = Field(default=None, max_length=255)
    task_category: str | None = Field(default=None, max_length=128)
    project_id: str | None = Field(default=None, max_length=128)
    timeout_ms: StrictInt | None = Field(default=None, ge=1, le=7 * 24 * 3600 * 1000)
    max_total_cost: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    business_value_hint: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)


class CancelIn(_In):
    reason: str | None = Field(default=None, max_length=1000)


class TaskOut(BaseModel):
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
    max_total_cost: str | None = Field(description="decimal, as a string")
    currency: str
    business_value_hint: str | None = Field(description="decimal, as a string")
    status: Literal[
        "PENDING", "QUEUED", "RUNNING", "SUCCESS", "FAILED", "CANCELLED", "TIMEOUT",
        "DEAD_LETTER",
    ]
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
    last_error: str | None
    claimed_by: str | None
    claim_expires_at: datetime | None
    cancel_requested: bool
    deleted_at: datetime | None


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None


class TaskEventOut(BaseModel):
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


class TaskEventPage(BaseModel):
    items: list[TaskEventOut]
    next_cursor: str | None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


_TASK_FIELDS = [f.name for f in dataclass_fields(TaskOrder) if f.name != "replayed"]


def task_json(task: TaskOrder) -> dict[str, Any]:
    # Shallow (orjson serialises nested values as they are); asdict would deep-copy them.
    # orjson writes datetimes as isoformat() does and enums as their values; only Decimal
    # needs a hand.
    d = {name: getattr(task, name) for name in _TASK_FIELDS}
    for name in ("max_total_cost", "business_value_hint"):
        value = d[name]
        if value is not None:
            d[name] = str(value)
    return d


def event_json(event: TaskEvent) -> dict[str, Any]:
    d = asdict(event)
    d["created_at"] = event.created_at.isoformat()
    return d


# -- tenants and keys --------------------------------------------------------------------------


def _rate(value: float | None) -> float | None:
    if value is not None and 0 < value < MIN_RATE_PER_SECOND:
        raise PydanticCustomError("rate", "must be 0 (no limit) or at least {min}",
                                  {"min": MIN_RATE_PER_SECOND})
    return value


#: A tenant's own limits (None: the server's default), the same on create and on PATCH.
RateLimitPerSecond = Annotated[
    StrictFloat | None, Field(ge=0, le=1_000_000), AfterValidator(_rate)]
RateLimitBurst = Annotated[StrictInt | None, Field(ge=1, le=1_000_000)]
MaxActiveTasks = Annotated[StrictInt | None, Field(ge=0, le=1_000_000_000)]


class TenantIn(_In):
    tenant_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: str | None = Field(default=None, max_length=255)
    rate_limit_per_second: RateLimitPerSecond = None
    rate_limit_burst: RateLimitBurst = None
    max_active_tasks: MaxActiveTasks = None


class TenantPatch(_In):
    """The fields to change; a limit set to null is the server's default again."""

    name: str | None = Field(default=None, min_length=1, max_length=255)
    rate_limit_per_second: RateLimitPerSecond = None
    rate_limit_burst: RateLimitBurst = None
    max_active_tasks: MaxActiveTasks = None


class TenantOut(BaseModel):
    tenant_id: str
    name: str
    rate_limit_per_second: float | None
    rate_limit_burst: int | None
    max_active_tasks: int | None
    created_at: datetime


class TenantPage(BaseModel):
    items: list[TenantOut]
    next_cursor: str | None


def tenant_json(t: Tenant) -> dict[str, Any]:
    d = asdict(t)
    d["created_at"] = t.created_at.isoformat()
    return d


class KeyIn(_In):
    name: str = Field(min_length=1, max_length=255)
    role: Literal["admin", "tenant"] = "tenant"
    tenant_id: str | None = Field(default=None, min_length=1, max_length=128)
    read_only: StrictBool = False
    principal_type: Literal["user", "service"] = "service"


class KeyOut(BaseModel):
    key_id: str
    name: str
    role: Literal["admin", "tenant"]
    tenant_id: str | None
    read_only: bool
    principal_type: Literal["user", "service"]
    key_hint: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="the API key itself; shown only in this response")


def key_json(k: ApiKey) -> dict[str, Any]:
    d = asdict(k)
    d["role"] = k.role.value
    d["principal_type"] = k.principal_type.value
    d["created_at"] = k.created_at.isoformat()
    d["revoked_at"] = _iso(k.revoked_at)
    return d


# -- batches -----------------------------------------------------------------------------------


class BatchTaskIn(TaskOrderIn):
    """A task of a batch: a TaskOrder plus a local `ref` other tasks of the batch may name
    in `depends_on` (besides ids of existing tasks)."""

    ref: str | None = Field(default=None, min_length=1, max_length=128)
    depends_on: list[str] | None = Field(default=None, max_length=1000)  # type: ignore[assignment]

    def fields(self) -> dict[str, Any]:
        data = super().fields()
        data.pop("ref", None)
        return data


class BatchIn(_In):
    title: str = Field(min_length=1, max_length=255)
    tenant_id: str | None = Field(default=None, min_length=1, max_length=128)
    metadata: dict[str, Any] = Field(default_factory=dict)
    tasks: list[BatchTaskIn] = Field(min_length=1, max_length=10_000)


class BatchTaskRef(BaseModel):
    ref: str | None
    task_id: str


class BatchOut(BaseModel):
    batch_id: str
    tenant_id: str
    title: str
    metadata: dict[str, Any]
    status: Literal["pending", "running", "completed", "failed", "cancelled"]
    total_count: int
    completed_count: int
    failed_count: int
    cancelled_count: int
    running_count: int
    progress: int
    created_at: datetime
    updated_at: datetime
    cancelled_at: datetime | None
    tasks: list[BatchTaskRef] | None = None


def batch_json(
    b: Batch, counts: BatchCounts, refs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "batch_id": b.batch_id, "tenant_id": b.tenant_id, "title": b.title,
        "metadata": b.metadata, "status": counts.status.value,
        "total_count": max(b.total_count, counts.total_count),
        "completed_count": counts.completed_count, "failed_count": counts.failed_count,
        "cancelled_count": counts.cancelled_count, "running_count": counts.running_count,
        "progress": counts.progress, "created_at": b.created_at.isoformat(),
        "updated_at": b.updated_at.isoformat(), "cancelled_at": _iso(b.cancelled_at),
        "tasks": refs,
    }


# -- audit -------------------------------------------------------------------------------------


class AuditOut(BaseModel):
    id: str
    seq: int
    timestamp: int = Field(description="Unix milliseconds")
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


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None


def audit_json(a: AuditEvent) -> dict[str, Any]:
    d = asdict(a)
    d["created_at"] = a.created_at.isoformat()
    return d


# -- admin -------------------------------------------------------------------------------------


class LogLevelIn(_In):
    level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]
    logger: str = Field(default="", max_length=255, description="'' is the root logger")


class LogLevelOut(BaseModel):
    logger: str
    level: str
