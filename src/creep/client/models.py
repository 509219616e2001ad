"""Typed views of what the REST API returns. Each model keeps the full JSON in `raw`
(so fields added by a newer server are never lost) and parses timestamps to datetimes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Generic, Self, TypeVar


def _parse(name: str, value: Any) -> Any:
    if isinstance(value, str) and (name.endswith("_at") or name == "run_after"):
        return datetime.fromisoformat(value)
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


@dataclass(frozen=True, slots=True)
class Claimed(Model):
    """A task claimed over the HTTP worker protocol."""

    claim_token: str
    deadline_at: datetime

    @property
    def task(self) -> Task:
        return Task.from_json(self.raw["task"])


M = TypeVar("M", bound=Model)


@dataclass(frozen=True, slots=True)
class Page(Generic[M]):
    """One page of a list; pass `next_cursor` back as `cursor` (None: the last page)."""

    items: list[M]
    next_cursor: str | None
