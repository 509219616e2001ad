"""Request and response bodies of /v1/schedules (seed 003's ScheduledTask and TaskExecution).

Shapes and ranges are checked here; the seed's rules (cron syntax, grace < max duration, data
at most 10 KB, ...) and the TaskOrder template's (the task validator's own: currency, tags,
hints, max_total_cost, ...) by `creep.domain.schedule.validate_schedule`, which names each
field."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, Field, StrictBool, StrictInt

from creep.api.schemas import ResourceHintIn, Timestamp, _In
from creep.domain.errors import ValidationError
from creep.domain.execution import TaskExecution
from creep.domain.schedule import MAX_INTERVAL_S, ScheduledTask
from creep.domain.text import find_unwritable

_DAY = 24 * 3600
MisfireName = Literal["skip", "once", "all"]
ExecutionStateName = Literal[
    "pending", "running", "success", "failure", "timeout", "cancelled", "interrupted"
]


class _ScheduleFields(_In):
    """Fields shared by create and patch (every one optional here)."""

    name: str | None = Field(default=None, min_length=1, max_length=255)
    type: str | None = Field(default=None, min_length=1, max_length=128,
                             description="the task_type of the TaskOrder each firing creates")
    description: str | None = Field(default=None, max_length=10_000)
    cron_expr: str | None = Field(default=None, min_length=1, max_length=255,
                                  description="5 fields (minute hour day month weekday)")
    interval: StrictInt | None = Field(default=None, ge=1, le=MAX_INTERVAL_S, description="seconds")
    timezone: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="IANA zone the cron_expr is read in (UTC)")
    next_run: Timestamp | None = Field(
        default=None, description="first run (interval) or the one run of a one-off schedule")
    enabled: StrictBool | None = None
    max_duration_seconds: StrictInt | None = Field(default=None, ge=1, le=7 * _DAY)
    max_retries: StrictInt | None = Field(default=None, ge=0, le=1000)
    timeout_grace_period: StrictInt | None = Field(default=None, ge=0, le=7 * _DAY)
    max_concurrent: StrictInt | None = Field(default=None, ge=1, le=10_000)
    priority: StrictInt | None = Field(default=None, ge=0, le=100)
    labels: dict[str, str] | None = None
    data: Any = Field(default=None, description="any JSON value, at most 10 KB encoded")
    misfire_policy: MisfireName | None = None
    misfire_limit: StrictInt | None = Field(default=None, ge=1, le=1000)
    misfire_grace_seconds: StrictInt | None = Field(default=None, ge=0, le=7 * _DAY)
    project_id: str | None = Field(default=None, max_length=128)
    env: str | None = Field(default=None, min_length=1, max_length=64)
    resource_hints: list[ResourceHintIn] | None = Field(default=None, max_length=100)
    tags: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=64)
    max_total_cost: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3,4}$")

    def fields(self) -> dict[str, Any]:
        """The fields as sent (unset ones left out), in the domain validator's terms."""
        data = self.model_dump(exclude_unset=True, exclude={"tenant_id"})
        if "resource_hints" in data and self.resource_hints is not None:
            data["resource_hints"] = [
                h.model_dump(exclude_unset=True) for h in self.resource_hints
            ]
        if "data" in data:
            # `data` travels as a JSON value; the schedule stores its JSON text. Checked
            # first: orjson fails past 254 levels (a 500), and a NUL no database stores.
            if (bad := find_unwritable(self.data, "data")) is not None:
                raise ValidationError.single(*bad)
            data["data"] = None if self.data is None else orjson.dumps(self.data).decode()
        return data


class ScheduleIn(_ScheduleFields):
    """A ScheduledTask to create: `name`, `type` and one of `cron_expr`, `interval` or (a
    one-off) `next_run`. `tenant_id` comes from a tenant key; an admin key names it."""

    name: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=128,
                      description="the task_type of the TaskOrder each firing creates")
    tenant_id: str | None = Field(default=None, min_length=1, max_length=128)


class SchedulePatch(_ScheduleFields):
    """Fields to change (send If-Match: <version>); next_run is recomputed when the timing
    or `enabled` changes."""


class ScheduleOut(BaseModel):
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
    max_duration_seconds: int
    max_retries: int
    timeout_grace_period: int
    max_concurrent: int
    priority: int
    labels: dict[str, str]
    data: Any = Field(description="the JSON value given at create/patch (null if none)")
    misfire_policy: MisfireName
    misfire_limit: int
    misfire_grace_seconds: int
    project_id: str | None
    env: str
    resource_hints: list[dict[str, Any]]
    tags: list[str]
    max_total_cost: str | None = Field(description="decimal, as a string")
    currency: str
    total_executions: int
    success_executions: int
    failure_executions: int
    consecutive_failures: int
    last_executed_at: datetime | None
    last_failure_error: str | None
    version: int
    created_at: datetime | None
    updated_at: datetime | None


class SchedulePage(BaseModel):
    items: list[ScheduleOut]


class ExecutionOut(BaseModel):
    id: int
    tenant_id: str
    task_uid: str = Field(description="the schedule's uid")
    task_name: str
    task_type: str
    execution_uid: str
    task_id: str | None = Field(description="the TaskOrder this firing created")
    run_by: str
    scheduled_at: datetime
    started_at: datetime
    finished_at: datetime | None
    state: ExecutionStateName
    result: str | None
    result_truncated: bool
    error_message: str | None
    error_stack: str | None
    error_stack_truncated: bool
    duration_ms: int
    progress: int
    retry_count: int
    trigger_type: Literal["scheduled", "manual"]
    trigger_by: str | None
    created_at: datetime
    updated_at: datetime


class ExecutionPage(BaseModel):
    items: list[ExecutionOut]
    next_cursor: str | None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def schedule_json(s: ScheduledTask) -> dict[str, Any]:
    d = {name: getattr(s, name) for name in s.__dataclass_fields__}
    d.pop("anchor_at", None)
    d["misfire_policy"] = s.misfire_policy.value
    d["data"] = None if s.data is None else orjson.loads(s.data)
    d["max_total_cost"] = None if s.max_total_cost is None else str(s.max_total_cost)
    for name in ("next_run", "last_executed_at", "created_at", "updated_at"):
        d[name] = _iso(d[name])
    return d


def execution_json(e: TaskExecution) -> dict[str, Any]:
    d = {name: getattr(e, name) for name in e.__dataclass_fields__}  # no deep copy
    d["state"] = e.state.value
    d["trigger_type"] = e.trigger_type.value
    for name in ("scheduled_at", "started_at", "finished_at", "created_at", "updated_at"):
        d[name] = _iso(d[name])
    return d
