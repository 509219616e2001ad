"""Request and response bodies of /v1/assets, /v1/leases, /v1/events and /v1/ledger
(PRODUCT.md §1 AssetSnapshot, Lease, LedgerEntry; seed 001 AssetEvent).

Shapes and ranges are checked here; the domain validators (`validate_asset_spec`,
`validate_reported_event`, `make_entry`) apply the rules and name each field. Money travels
as decimal strings (a JSON number is accepted on input, never produced)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt

from creep.api.schemas import Timestamp, UuidParam, _In
from creep.domain.asset import AssetSnapshot
from creep.domain.asset_event import MAX_FAILURE_TYPES, AssetEvent, BanPolicy
from creep.domain.lease import Lease
from creep.domain.ledger import LedgerEntry, LedgerSummary

AssetStatusName = Literal["NEW", "READY", "IN_USE", "COOLING", "BANNED", "SOLD", "ARCHIVED"]
LeaseStatusName = Literal["ACTIVE", "RELEASED", "EXPIRED", "REVOKED"]
SeverityName = Literal["DEBUG", "INFO", "WARN", "ERROR"]
EntryTypeName = Literal["COST", "REVENUE", "REFUND", "TASK_BURN", "ADJUSTMENT"]
Money = Field(description="decimal, as a string")
#: The order of a list of asset events or leases (by time, then write order or lease_id).
TimeOrder = Literal["oldest", "newest"]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _shallow(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict without copying nested values (orjson writes them as
    they are); `dataclasses.asdict` deep-copies and cost more than the rest of a page."""
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


# -- assets ------------------------------------------------------------------------------------


class AssetIn(_In):
    """An asset to add to the pool. `tenant_id` comes from a tenant key; an admin names it."""

    asset_id: str | None = Field(default=None, max_length=64, description="a UUID (generated)")
    tenant_id: str | None = Field(default=None, min_length=1, max_length=128)
    project_id: str | None = Field(default=None, max_length=200)
    env: str | None = Field(default=None, max_length=200)
    sku_category: str = Field(min_length=1, max_length=200)
    sku_code: str = Field(min_length=1, max_length=200)
    attributes: dict[str, Any] | None = None
    status: Literal["NEW", "READY"] | None = None
    max_concurrency: StrictInt | None = Field(default=None, ge=1, le=100_000)
    health_score: StrictInt | None = Field(default=None, ge=0, le=100)
    cooldown_seconds: StrictInt | None = Field(default=None, ge=0, le=10**8)
    cost_per_lease: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3,4}$")

    def fields(self, tenant_id: str) -> dict[str, Any]:
        data = self.model_dump(exclude_unset=True, exclude_none=True)
        data["tenant_id"] = tenant_id
        return data


class AssetPatch(_In):
    """Fields of an asset to change (with If-Match: <version>); those left out stay as they
    are. `status`: a change the transition table allows (NEW -> READY activates an asset,
    READY -> SOLD sells it); IN_USE follows the asset's leases and is not set by hand.
    `project_id` and `env` may be null (cleared); the others may not."""

    project_id: str | None = Field(default=None, max_length=200)
    env: str | None = Field(default=None, max_length=200)
    sku_code: str | None = Field(default=None, min_length=1, max_length=200)
    attributes: dict[str, Any] | None = None
    status: AssetStatusName | None = None
    max_concurrency: StrictInt | None = Field(
        default=None, ge=1, le=100_000, description="not below the active leases")
    health_score: StrictInt | None = Field(default=None, ge=0, le=100)
    cooldown_seconds: StrictInt | None = Field(default=None, ge=0, le=10**8)
    cost_per_lease: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3,4}$")

    def changes(self) -> dict[str, Any]:
        """The fields as sent (unset ones left out)."""
        return self.model_dump(exclude_unset=True, exclude=_ITEM_KEYS)


#: Fields of a bulk item that name the asset, not a change.
_ITEM_KEYS = {"asset_id", "expected_version"}


class AssetPatchItem(AssetPatch):
    """One asset of a bulk update: which, the version read, and the fields to change."""

    asset_id: UuidParam = Field(max_length=64, description="a UUID")
    expected_version: StrictInt = Field(ge=1, le=2**53,
                                        description="the asset's version as read")


class AssetPatchList(_In):
    """Up to 1000 asset updates in one transaction: all are applied, or none."""

    items: list[AssetPatchItem] = Field(min_length=1, max_length=1000)


class AssetOut(BaseModel):
    asset_id: str
    tenant_id: str
    project_id: str | None
    env: str | None
    sku_category: str
    sku_code: str
    attributes: dict[str, Any]
    status: AssetStatusName
    max_concurrency: int
    current_concurrency: int
    health_score: int
    cooldown_seconds: int
    cooldown_until: datetime | None
    cost_per_lease: str = Money
    currency: str
    version: int
    created_at: datetime
    updated_at: datetime


class AssetList(BaseModel):
    items: list[AssetOut]


class AssetPage(AssetList):
    next_cursor: str | None


class ReasonIn(_In):
    reason: str | None = Field(default=None, max_length=1000)


def asset_json(a: AssetSnapshot) -> dict[str, Any]:
    d = _shallow(a)
    d["status"] = a.status.value
    d["cost_per_lease"] = str(a.cost_per_lease)
    for name in ("cooldown_until", "created_at", "updated_at"):
        d[name] = _iso(d[name])
    return d


# -- ban policies ------------------------------------------------------------------------------


class BanPolicyIn(_In):
    """An auto-ban policy for one sku_category (the path's): `max_failures` failure events
    on one asset within `window_seconds` ban it. A failure is an event whose type is in
    `failure_event_types`, or, when that is empty or left out, any type ending in `_FAIL`
    or equal to TASK_TIMEOUT."""

    max_failures: StrictInt = Field(ge=1, le=10_000)
    window_seconds: StrictInt = Field(ge=1, le=10**7)
    failure_event_types: list[str] | None = Field(
        default=None, max_length=MAX_FAILURE_TYPES,
        description="event types that count as failures (each at most 100 characters)")


class BanPolicyOut(BaseModel):
    tenant_id: str
    sku_category: str
    max_failures: int
    window_seconds: int
    failure_event_types: list[str]
    updated_at: datetime | None


class BanPolicyPage(BaseModel):
    items: list[BanPolicyOut]
    next_cursor: str | None


def ban_policy_json(p: BanPolicy) -> dict[str, Any]:
    d = _shallow(p)
    d["updated_at"] = _iso(p.updated_at)
    return d


# -- leases ------------------------------------------------------------------------------------


class LeaseOut(BaseModel):
    lease_id: str
    tenant_id: str
    task_id: str
    asset_id: str
    status: LeaseStatusName
    acquired_at: datetime
    expires_at: datetime | None
    released_at: datetime | None
    cost: str = Money
    currency: str
    hint_index: int


class LeasePage(BaseModel):
    items: list[LeaseOut]


class LeaseListPage(LeasePage):
    next_cursor: str | None


def lease_json(lease: Lease) -> dict[str, Any]:
    d = _shallow(lease)
    d.pop("claim_token", None)  # the worker's fencing token is not for API clients
    d["status"] = lease.status.value
    d["cost"] = str(lease.cost)
    for name in ("acquired_at", "expires_at", "released_at"):
        d[name] = _iso(d[name])
    return d


# -- asset events ------------------------------------------------------------------------------


class AssetEventIn(_In):
    """An event about an asset (seed 001), e.g. a provider's webhook or a probe's failure. The
    auto-ban policy of the asset's sku_category applies to it."""

    event_id: str | None = Field(default=None, max_length=64, description="a UUID (generated)")
    tenant_id: str | None = Field(default=None, min_length=1, max_length=128)
    asset_id: str = Field(max_length=64, description="a UUID")
    task_id: str | None = Field(
        default=None, max_length=64,
        description="the TaskOrder that caused the event (one of the tenant's); follows from "
        "lease_id when left out")
    lease_id: str | None = Field(
        default=None, max_length=64,
        description="a lease of the tenant's on asset_id (and of task_id when given)")
    correlation_id: str | None = Field(default=None, max_length=200)
    causation_id: str | None = Field(default=None, max_length=64)
    event_type: str = Field(
        min_length=1, max_length=100,
        description="a type of the reporter's own: creep's (ALLOCATED, BANNED, UNBANNED, "
        "COOLING_START, TASK_FAIL, ...) are a 422")
    source: str | None = Field(default=None, max_length=100)
    severity: SeverityName | None = None
    old_status: AssetStatusName | None = Field(
        default=None,
        description="the asset's status before the event, as the reporter saw it: another "
        "status than the asset's is a 409, nothing stored (left out: the asset's)")
    new_status: AssetStatusName | None = Field(
        default=None,
        description="the asset's status after the event: another than its current one is "
        "applied as the transition table allows (BANNED revokes its leases), by an event of "
        "creep's caused by this one, listed in `caused`")
    message: str | None = Field(default=None, max_length=2000)
    error_code: str | None = Field(default=None, max_length=200)
    error_message: str | None = Field(default=None, max_length=4000)
    provider_status: str | None = Field(default=None, max_length=100)
    http_status: StrictInt | None = Field(default=None, ge=100, le=599)
    latency_ms: StrictInt | None = Field(default=None, ge=0, le=2**53)
    retryable: StrictBool | None = None
    occurred_at: Timestamp | None = None
    tags: list[str] | None = Field(default=None, max_length=64)
    context: dict[str, Any] | None = None
    project_id: str | None = Field(default=None, max_length=200)
    env: str | None = Field(default=None, max_length=50)

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude={"tenant_id"})


class AssetEventOut(BaseModel):
    event_id: str
    tenant_id: str
    project_id: str | None
    env: str | None
    asset_id: str
    task_id: str | None
    lease_id: str | None
    correlation_id: str | None
    causation_id: str | None
    event_type: str
    source: str | None
    severity: SeverityName | None
    old_status: str | None
    new_status: str | None
    message: str | None
    error_code: str | None
    error_message: str | None
    provider_status: str | None
    http_status: int | None
    latency_ms: int | None
    retryable: bool | None
    occurred_at: datetime
    recorded_at: datetime
    tags: list[str]
    context: dict[str, Any]
    version: int


class AssetEventPage(BaseModel):
    items: list[AssetEventOut]


class ReportedEventOut(BaseModel):
    event: AssetEventOut
    caused: list[AssetEventOut] = Field(
        description="events the report caused in the same transaction (e.g. ASSET_BANNED)")


def asset_event_json(e: AssetEvent) -> dict[str, Any]:
    d = _shallow(e)
    d["severity"] = None if e.severity is None else str(e.severity)
    d["occurred_at"] = e.occurred_at.isoformat()
    d["recorded_at"] = e.recorded_at.isoformat()
    return d


EVENT_CSV_COLUMNS = list(AssetEventOut.model_fields)


# -- ledger ------------------------------------------------------------------------------------


class LedgerEntryIn(_In):
    """A REVENUE, REFUND or ADJUSTMENT entry (COST is written by creep itself, for leases
    and ctx.charge; TASK_BURN through the Python API). Tied to a task: the currency must be the task's and a cost-raising entry must
    keep the task within max_total_cost."""

    entry_type: Literal["REVENUE", "REFUND", "ADJUSTMENT"]
    amount: Decimal = Field(allow_inf_nan=False, description="> 0; an ADJUSTMENT is signed")
    currency: str = Field(pattern=r"^[A-Z]{3,4}$")
    tenant_id: str | None = Field(default=None, min_length=1, max_length=128)
    project_id: str | None = Field(default=None, max_length=200)
    task_id: str | None = Field(default=None, max_length=64)
    asset_id: str | None = Field(default=None, max_length=64)
    lease_id: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=2000)
    occurred_at: Timestamp | None = None
    entry_id: str | None = Field(
        default=None, max_length=64,
        description="a UUID the client picks: the same entry sent again (after a lost "
        "answer) answers the entry written the first time (200, Idempotent-Replayed: true) "
        "and writes nothing; another entry under that id is a 409 idempotency-conflict")


class LedgerEntryOut(BaseModel):
    entry_id: str
    tenant_id: str
    project_id: str | None
    task_id: str | None
    asset_id: str | None
    lease_id: str | None
    entry_type: EntryTypeName
    amount: str = Money
    currency: str
    description: str | None
    occurred_at: datetime
    recorded_at: datetime


class LedgerPage(BaseModel):
    items: list[LedgerEntryOut]


def ledger_json(e: LedgerEntry) -> dict[str, Any]:
    d = _shallow(e)
    d["entry_type"] = e.entry_type.value
    d["amount"] = str(e.amount)
    d["occurred_at"] = e.occurred_at.isoformat()
    d["recorded_at"] = e.recorded_at.isoformat()
    return d


LEDGER_CSV_COLUMNS = list(LedgerEntryOut.model_fields)


class LedgerGroupOut(BaseModel):
    tenant_id: str | None = None
    project_id: str | None = None
    task_id: str | None = None
    currency: str
    cost: str = Money
    revenue: str = Money
    margin: str = Field(description="revenue - cost, decimal as a string")
    entries: int


class LedgerSummaryOut(BaseModel):
    group_by: list[str]
    items: list[LedgerGroupOut]


def summary_json(group: dict[str, str | None], s: LedgerSummary) -> dict[str, Any]:
    return {**group, "currency": s.currency, "cost": str(s.cost), "revenue": str(s.revenue),
            "margin": str(s.margin), "entries": s.entries}
