"""AssetEvent v1.0 (seed 001, S-04): what happened to an asset, why, caused by what.

Append-only: corrections are new events. `correlation_id` strings a request's events into
one timeline; `causation_id` names the event that directly caused this one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from creep.domain.asset import AssetStatus, asset_text
from creep.domain.clock import INSTANT_RULE, storable_instant
from creep.domain.errors import ValidationError
from creep.domain.text import bad_text, find_bad_json


class Severity(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


class AssetEventType(StrEnum):
    """Event types the control plane writes itself (reporters may use any other: see
    CREEP_EVENT_TYPES)."""

    IMPORTED = "IMPORTED"
    UPDATED = "UPDATED"
    ALLOCATED = "ALLOCATED"
    RELEASED = "RELEASED"
    LEASE_EXPIRED = "LEASE_EXPIRED"
    LEASE_REVOKED = "LEASE_REVOKED"
    TASK_SUCCESS = "TASK_SUCCESS"
    TASK_FAIL = "TASK_FAIL"
    TASK_TIMEOUT = "TASK_TIMEOUT"
    COOLING_START = "COOLING_START"
    COOLING_END = "COOLING_END"
    BANNED = "BANNED"  # by an operator
    ASSET_BANNED = "ASSET_BANNED"  # by the auto-ban policy (seed 001, scenario 2)
    UNBANNED = "UNBANNED"
    SOLD = "SOLD"
    ARCHIVED = "ARCHIVED"


class Source(StrEnum):
    CONTROL_PLANE = "control_plane"
    WORKER_NODE = "worker_node"
    EXTERNAL_PROVIDER = "external_provider"
    FINOPS_DAEMON = "finops_daemon"
    OPERATOR = "operator"


@dataclass(slots=True)
class AssetEvent:
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
    severity: Severity | None
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
    tags: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EVENT_FIELDS: tuple[str, ...] = tuple(AssetEvent.__dataclass_fields__)

#: The longest causation chain returned (the event and up to this many causes in all).
MAX_CHAIN = 10_000
#: latency_ms fits a signed 64-bit column on both backends.
MAX_LATENCY_MS = 2**63 - 1

#: Event types creep writes itself, never accepted from a reporter: each says the control
#: plane did it (a lease, a task's outcome, a status change it applied). A reporter states a
#: status change with new_status under a type of its own (e.g. PROVIDER_BANNED, new_status
#: BANNED); creep applies it and writes the change's own event (BANNED, UNBANNED,
#: COOLING_START, ...) caused by the report, as the auto-ban writes ASSET_BANNED.
CREEP_EVENT_TYPES: frozenset[str] = frozenset(
    {t.value for t in AssetEventType} | {f"STATUS_{s.value}" for s in AssetStatus}
)
_STATUS_RULE = f"must be one of {[s.value for s in AssetStatus]}"

#: How far after the server's clock a reported occurred_at may lie (clock skew between the
#: reporter and the server): an event that has not happened yet is refused.
MAX_OCCURRED_AHEAD = timedelta(minutes=5)

#: Fields a reporter (handler, operator, provider hook) may set. `task_id` is the TaskOrder
#: that caused the event (seed 001 §3.2); the store checks it, and the lease named, against
#: the event's tenant and asset.
REPORTABLE = frozenset(
    {"event_id", "asset_id", "task_id", "lease_id", "correlation_id", "causation_id",
     "event_type", "source", "severity", "old_status", "new_status", "message", "error_code",
     "error_message", "provider_status", "http_status", "latency_ms", "retryable",
     "occurred_at", "tags", "context", "project_id", "env"}
)


def _opt_text(errors: list[tuple[str, str]], name: str, value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        errors.append((name, f"must be a string of at most {limit} characters"))
        return None
    if (rule := bad_text(value)) is not None:
        errors.append((name, rule))
        return None
    return value


def _opt_uuid(errors: list[tuple[str, str]], name: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        errors.append((name, "must be a UUID"))
        return None


def occurred_at_rule(occurred: datetime | None, now: datetime) -> str | None:
    """The rule an occurred_at (a reported event's, a ledger entry's) more than
    MAX_OCCURRED_AHEAD after `now` (the server's clock) breaks, else None: what has not
    happened yet would sort after what is still to come (and sit in an auto-ban's windows, a
    summary's ranges) for good."""
    if occurred is not None and occurred > now + MAX_OCCURRED_AHEAD:
        return (f"must not be more than {int(MAX_OCCURRED_AHEAD.total_seconds())} seconds "
                f"after the server's time ({now.isoformat()})")
    return None


def check_occurred_at(occurred: datetime | None, now: datetime) -> None:
    """A reported occurred_at past occurred_at_rule's bound is a ValidationError."""
    if (rule := occurred_at_rule(occurred, now)) is not None:
        raise ValidationError.single("occurred_at", rule)


def validate_reported_event(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check a reported event's fields against seed 001's types and ranges."""
    errors: list[tuple[str, str]] = []
    unknown = sorted(set(data) - REPORTABLE)
    errors.extend((k, "unknown or not reportable field") for k in unknown)
    out: dict[str, Any] = {}
    etype = data.get("event_type")
    if not isinstance(etype, str) or not etype.strip() or len(etype) > 100:
        errors.append(("event_type", "is required and must be a non-empty string"))
    elif (rule := bad_text(etype)) is not None:
        errors.append(("event_type", rule))
    elif etype in CREEP_EVENT_TYPES:
        errors.append(("event_type", f"{etype} is written by creep itself; report a type of "
                       "your own (with new_status to change the asset's status)"))
    out["event_type"] = etype
    for name in ("event_id", "asset_id", "task_id", "lease_id", "causation_id"):
        out[name] = _opt_uuid(errors, name, data.get(name))
    for name in ("old_status", "new_status"):  # the asset's status before / after the event
        status = data.get(name)
        if status is not None:
            if isinstance(status, str) and status in AssetStatus.__members__:
                status = AssetStatus(status).value
            else:
                errors.append((name, _STATUS_RULE))
                status = None
        out[name] = status
    for name, limit in (("correlation_id", 200), ("source", 100), ("message", 2000),
                        ("error_code", 200),
                        ("error_message", 4000), ("provider_status", 100),
                        ("project_id", 200), ("env", 50)):
        out[name] = _opt_text(errors, name, data.get(name), limit)
    if out["source"] == Source.CONTROL_PLANE.value:
        # Seed 001's source tells creep's own logic from the world outside it.
        errors.append(("source", "control_plane is creep's own; report worker_node, "
                                 "external_provider, finops_daemon, operator or a name of yours"))
    severity = data.get("severity")
    if severity is not None:
        try:
            out["severity"] = Severity(severity)
        except ValueError:
            errors.append(("severity", "must be one of DEBUG, INFO, WARN, ERROR"))
    else:
        out["severity"] = None
    http = data.get("http_status")
    if http is not None and (isinstance(http, bool) or not isinstance(http, int)
                             or not 100 <= http <= 599):
        errors.append(("http_status", "must be an integer from 100 to 599"))
    out["http_status"] = http
    latency = data.get("latency_ms")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int)
                                or not 0 <= latency <= MAX_LATENCY_MS):
        errors.append(("latency_ms", f"must be an integer from 0 to {MAX_LATENCY_MS}"))
    out["latency_ms"] = latency
    retryable = data.get("retryable")
    if retryable is not None and not isinstance(retryable, bool):
        errors.append(("retryable", "must be a boolean"))
    out["retryable"] = retryable
    occurred = data.get("occurred_at")
    if occurred is not None and not storable_instant(occurred):
        errors.append(("occurred_at", INSTANT_RULE))
    out["occurred_at"] = occurred
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        errors.append(("tags", "must be a list of strings"))
        tags = []
    elif (found := find_bad_json(tags, "tags")) is not None:
        errors.append(found)
    out["tags"] = tags
    context = data.get("context") or {}
    if not isinstance(context, Mapping):
        errors.append(("context", "must be an object"))
        context = {}
    elif (found := find_bad_json(dict(context), "context")) is not None:
        errors.append(found)
    out["context"] = dict(context)
    if errors:
        raise ValidationError(errors)
    return out


@dataclass(slots=True)
class BanPolicy:
    """Auto-ban (seed 001, scenario 2): `max_failures` failure events on one asset within
    `window_seconds` ban it. A failure is an event whose type is in `failure_event_types`,
    or, when that is empty, any type ending in `_FAIL` or equal to TASK_TIMEOUT."""

    tenant_id: str
    sku_category: str
    max_failures: int
    window_seconds: int
    failure_event_types: list[str] = field(default_factory=list)
    #: When it was last set (as stored; None on a policy not read from or written to a store).
    updated_at: datetime | None = field(default=None, compare=False)

    def is_failure(self, event_type: str) -> bool:
        if self.failure_event_types:
            return event_type in self.failure_event_types
        return event_type.endswith("_FAIL") or event_type == AssetEventType.TASK_TIMEOUT


#: The most event types one ban policy may name.
MAX_FAILURE_TYPES = 100


def validate_ban_policy(
    tenant_id: str, sku_category: str, max_failures: Any, window_seconds: Any,
    failure_event_types: Any,
) -> BanPolicy:
    errors: list[tuple[str, str]] = []
    asset_text(errors, "tenant_id", tenant_id)  # as an asset's: the policy applies to them
    asset_text(errors, "sku_category", sku_category)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or not (
        1 <= max_failures <= 10_000
    ):
        errors.append(("max_failures", "must be an integer from 1 to 10000"))
    if isinstance(window_seconds, bool) or not isinstance(window_seconds, int) or not (
        1 <= window_seconds <= 10**7
    ):
        errors.append(("window_seconds", "must be an integer from 1 to 10^7"))
    types = failure_event_types or []
    if not isinstance(types, list) or len(types) > MAX_FAILURE_TYPES or not all(
        isinstance(t, str) and t.strip() and len(t) <= 100 for t in types
    ):
        # An event type is at most 100 characters (validate_reported_event): a longer one
        # could never match.
        errors.append(("failure_event_types", f"must be a list of at most {MAX_FAILURE_TYPES} "
                       "event types, each a non-blank string of at most 100 characters"))
        types = []
    elif (found := find_bad_json(types, "failure_event_types")) is not None:
        errors.append(found)
    if errors:
        raise ValidationError(errors)
    return BanPolicy(tenant_id, sku_category, max_failures, window_seconds, list(types))
