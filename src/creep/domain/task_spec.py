"""Validation of a new task order: every problem named by field and rule, all reported at once."""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from creep.domain.asset import positional, sku_pattern_rule
from creep.domain.clock import INSTANT_RULE, storable_instant
from creep.domain.errors import ValidationError
from creep.domain.ids import uuid7
from creep.domain.text import bad_text, find_unwritable, json_default, may_be_unwritable
from creep.tracing import TRACEPARENT, span, stamp_traceparent, tracer, valid_traceparent

DEFAULT_PRIORITY = 50
DEFAULT_TIMEOUT_MS = 300_000
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
MAX_RETRIES_LIMIT = 1000
MAX_TAGS = 64
MAX_DEPENDENCIES = 1000

_CURRENCY = re.compile(r"^[A-Z]{3,4}$")
_IDENT_MAX = 255
_MONEY_MAX = Decimal("1e15")
_MONEY_MAX_PLACES = 10

KNOWN_FIELDS = frozenset(
    {
        "task_id", "idempotency_key", "tenant_id", "project_id", "env", "external_ref",
        "task_type", "task_category", "description", "priority", "timeout_ms",
        "max_total_cost", "currency", "business_value_hint", "resource_hints", "constraints",
        "tenant_policies_version", "tags", "batch_id", "input_payload", "channel",
        "correlation_id", "depends_on", "run_after",
    }
)


@dataclass(slots=True, frozen=True)
class Limits:
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    default_timeout_ms: int = DEFAULT_TIMEOUT_MS


@dataclass(slots=True)
class TaskSpec:
    """A validated, normalised request to create one task."""

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
    max_total_cost: Decimal | None
    currency: str
    business_value_hint: Decimal | None
    resource_hints: list[dict[str, Any]]
    constraints: dict[str, Any]
    tenant_policies_version: str | None
    tags: list[str]
    batch_id: str | None
    input_payload: Any
    input_payload_json: bytes
    channel: str | None
    correlation_id: str
    depends_on: list[str]
    run_after: datetime | None
    max_attempts: int
    request_hash: str = field(default="")
    #: The order request_hash was taken of, when that names its dependencies by id: see
    #: rebind. None when it names none (or names them otherwise: a batch's refs).
    sent: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    #: The caller chose task_id (else it was drawn): the store refuses an id that a task
    #: deleted by retention still holds in the ledger or in leases (reused_task_ids).
    given_id: bool = field(default=False, repr=False, compare=False)


class _Errors:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.items: list[tuple[str, str]] = []

    def add(self, name: str, rule: str) -> None:
        self.items.append((f"{self.prefix}{name}", rule))


def _text(
    errs: _Errors, data: Mapping[str, Any], name: str, *, required: bool = False,
    default: str | None = None, max_len: int = _IDENT_MAX,
) -> str | None:
    value = data.get(name)
    if value is None:
        if required and default is None:
            errs.add(name, "is required")
        return default
    if not isinstance(value, str):
        errs.add(name, "must be a string")
        return default
    if required and not value.strip():
        errs.add(name, "must not be empty")
        return default
    if len(value) > max_len:
        errs.add(name, f"must be at most {max_len} characters")
        return default
    rule = bad_text(value)
    if rule is not None:
        errs.add(name, rule)
        return default
    return value


def _int(
    errs: _Errors, data: Mapping[str, Any], name: str, default: int, lo: int, hi: int,
    rule: str,
) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        errs.add(name, f"must be an integer {rule}")
        return default
    if not lo <= value <= hi:
        errs.add(name, f"must be {rule} (got {value})")
        return default
    return value


def parse_money(value: Any) -> Decimal:
    """An exact, non-negative decimal; floats are taken by their shortest repr (5.0 -> 5.0)."""
    if isinstance(value, bool):
        raise ValueError("must be a decimal number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite decimal number")
        value = repr(value)
    try:
        amount = Decimal(value) if isinstance(value, (str, int, Decimal)) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        raise ValueError("must be a decimal number")
    if amount < 0:
        raise ValueError("must be >= 0")
    if amount >= _MONEY_MAX:
        raise ValueError(f"must be less than {_MONEY_MAX:f}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > _MONEY_MAX_PLACES:
        raise ValueError(f"must have at most {_MONEY_MAX_PLACES} decimal places")
    return positional(amount)


def _money(errs: _Errors, data: Mapping[str, Any], name: str) -> Decimal | None:
    value = data.get(name)
    if value is None:
        return None
    try:
        return parse_money(value)
    except ValueError as exc:
        errs.add(name, str(exc))
        return None


def _uuid(value: Any) -> str | None:
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _resource_hints(errs: _Errors, value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        errs.add("resource_hints", "must be a list of objects")
        return []
    hints: list[dict[str, Any]] = []
    for i, hint in enumerate(value):
        path = f"resource_hints[{i}]"
        if not isinstance(hint, Mapping):
            errs.add(path, "must be an object")
            continue
        unknown = set(hint) - {"sku_category", "sku_code", "min_count", "attributes"}
        if unknown:
            errs.add(path, f"unknown fields {sorted(unknown)}")
        cat = hint.get("sku_category")
        if not isinstance(cat, str) or not cat.strip():
            errs.add(f"{path}.sku_category", "is required and must be a non-empty string")
        code = hint.get("sku_code")
        if code is not None and (not isinstance(code, str) or not code):
            errs.add(f"{path}.sku_code", "must be a non-empty string (exact code or 'prefix.*')")
        elif isinstance(code, str) and (rule := sku_pattern_rule(code)) is not None:
            errs.add(f"{path}.sku_code", rule)
        count = hint.get("min_count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
            errs.add(f"{path}.min_count", "must be an integer from 1 to 100")
        attrs = hint.get("attributes", {})
        if not isinstance(attrs, Mapping):
            errs.add(f"{path}.attributes", "must be an object")
            attrs = {}
        hints.append(
            {"sku_category": cat, "sku_code": code, "min_count": count, "attributes": dict(attrs)}
        )
    return hints


MAX_GRACE_MS = 7 * 24 * 3600 * 1000


def retries_allowed(constraints: Mapping[str, Any]) -> int:
    """The retries a task's attempts allow (constraints.max_retries, default 3): at submit,
    and again each time it is retried by hand (fresh retries, whatever an earlier manual
    retry made max_attempts)."""
    retries = constraints.get("max_retries", DEFAULT_MAX_RETRIES)
    return retries if isinstance(retries, int) and not isinstance(retries, bool) \
        else DEFAULT_MAX_RETRIES


def _constraints(errs: _Errors, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errs.add("constraints", "must be an object")
        return {}
    out = dict(value)
    retries = out.get("max_retries", DEFAULT_MAX_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or not (
        0 <= retries <= MAX_RETRIES_LIMIT
    ):
        errs.add("constraints.max_retries", f"must be an integer from 0 to {MAX_RETRIES_LIMIT}")
    health = out.get("min_health_score")
    if health is not None and (
        isinstance(health, bool) or not isinstance(health, (int, float)) or not 0 <= health <= 100
    ):
        errs.add("constraints.min_health_score", "must be a number from 0 to 100")
    keep = out.get("keep_leases")
    if keep is not None and not isinstance(keep, bool):
        errs.add("constraints.keep_leases", "must be a boolean")
    grace = out.get("timeout_grace_ms")  # control plane: TIMEOUT only after timeout + grace
    if grace is not None and (
        isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= MAX_GRACE_MS
    ):
        errs.add("constraints.timeout_grace_ms", f"must be an integer from 0 to {MAX_GRACE_MS}")
    parent = out.get(TRACEPARENT)  # OpenTelemetry: the submitter's span (creep.tracing)
    if parent is not None and not valid_traceparent(parent):
        errs.add("constraints.traceparent",
                 "must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>, lower case")
    on_revoked = out.get("on_lease_revoked")
    if on_revoked is not None and on_revoked not in ("cancel", "continue"):
        errs.add("constraints.on_lease_revoked", 'must be "cancel" or "continue"')
    return out


def _tags(errs: _Errors, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        errs.add("tags", "must be a list of strings")
        return []
    if len(value) > MAX_TAGS:
        errs.add("tags", f"must have at most {MAX_TAGS} entries")
    for i, tag in enumerate(value):
        if not isinstance(tag, str):
            errs.add(f"tags[{i}]", "must be a string")
        elif not tag or len(tag) > 128:
            errs.add(f"tags[{i}]", "must be 1 to 128 characters")
        elif (rule := bad_text(tag)) is not None:
            errs.add(f"tags[{i}]", rule)
    return [t for t in value if isinstance(t, str)]


def _run_after(errs: _Errors, value: Any, now: datetime) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        try:
            return now + value
        except OverflowError:
            errs.add("run_after", INSTANT_RULE)
            return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            errs.add("run_after", "must be an ISO 8601 timestamp")
            return None
    if not isinstance(value, datetime):
        errs.add("run_after", "must be a timestamp or a timedelta")
        return None
    if value.tzinfo is None:
        errs.add("run_after", "must carry a time zone")
        return None
    if not storable_instant(value):
        errs.add("run_after", INSTANT_RULE)
        return None
    return value


def canonical_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=json_default)


def payload_dumps(value: Any) -> bytes:
    """orjson.dumps(value) as a bytes object of its own size. orjson's answer keeps the whole
    buffer it wrote into (4 KB for a small payload): a bulk submission holding 50,000 of them
    took 200 MB and a page fault per order. The copy costs less than the faults."""
    return b"".join((orjson.dumps(value, default=json_default), b""))




#: Plain text fields the fast path checks, with their maximum lengths (as in the full path).
_FAST_TEXT: dict[str, int] = {
    "tenant_id": 128, "env": 64, "task_type": 128, "idempotency_key": _IDENT_MAX,
    "project_id": 128, "external_ref": _IDENT_MAX, "task_category": 128,
    "description": 10_000, "tenant_policies_version": 128, "batch_id": 128, "channel": 64,
    "correlation_id": _IDENT_MAX,
}
_FAST_REQUIRED = frozenset({"tenant_id", "env", "task_type"})
_FAST_FIELDS = frozenset({*_FAST_TEXT, "priority", "timeout_ms", "tags", "input_payload"})


def _fast_spec(
    data: Mapping[str, Any], limits: Limits, traced: bool | None
) -> TaskSpec | None:
    """The common order (text fields, priority, timeout_ms, tags, input_payload), validated
    without the per-field helpers. Returns None for anything else, valid or not: the full
    path then decides, so every rule and message lives in one place."""
    payload_json = fast_check(data, limits)
    return None if payload_json is None else fast_build(data, payload_json, limits, traced)


def fast_check(
    data: Mapping[str, Any], limits: Limits, *, finite: bool = False
) -> bytes | None:
    """The checking half of the fast path: the input payload's JSON when `data` is a common
    order that is valid, else None (the full path, validate_task_spec, decides). `finite`:
    orjson read `data` from JSON text, so it holds no NaN or infinity to look for."""
    if (
        type(data) is not dict or data.get("task_type") is None
        or not data.keys() <= _FAST_FIELDS
    ):
        return None
    for name, value in data.items():  # strings first: most of a common order's values
        if type(value) is str:
            max_len = _FAST_TEXT.get(name)
            if max_len is None:
                if name != "input_payload":
                    return None  # a string priority, timeout_ms or tags
            elif len(value) > max_len or (name in _FAST_REQUIRED and not value.strip()) \
                    or "\x00" in value or (not value.isascii() and bad_text(value) is not None):
                return None
        elif value is None or name == "input_payload":
            continue
        elif name == "priority":
            if type(value) is not int or not 0 <= value <= 100:
                return None
        elif name == "timeout_ms":
            if type(value) is not int or not 1 <= value <= MAX_TIMEOUT_MS:
                return None
        elif name != "tags" or not _plain_tags(value):
            return None  # a text field that is no string, or tags the full path must see
    try:
        payload_json = payload_dumps(data.get("input_payload"))
    except TypeError:
        return None
    if len(payload_json) > limits.max_payload_bytes or (
        may_be_unwritable(payload_json, data.get("input_payload"), finite=finite)
        and find_unwritable(data.get("input_payload")) is not None
    ):
        return None
    return payload_json


def fast_build(
    data: Mapping[str, Any], payload_json: bytes, limits: Limits, traced: bool | None
) -> TaskSpec:
    """The building half of the fast path, for `data` that fast_check accepted: a new task
    id, the defaults, the request fingerprint. Cannot fail."""
    spec = common_spec(data, payload_json, uuid7(), limits.default_timeout_ms)
    if traced is None:
        traced = tracer() is not None
    if traced:
        trace_submit(spec)
    return spec


def common_spec(
    data: Mapping[str, Any], payload_json: bytes, task_id: str, default_timeout_ms: int
) -> TaskSpec:
    """The spec of a common order (fast_check accepted it) with this task id: the defaults
    and the request fingerprint. fast_build and bulk_specs.fast_build_many both build here."""
    get = data.get
    priority = get("priority")
    timeout_ms = get("timeout_ms")
    return TaskSpec(
        task_id, get("idempotency_key") or task_id, get("tenant_id") or "default",
        get("project_id"), get("env") or "default", get("external_ref"), data["task_type"],
        get("task_category"), get("description"),
        DEFAULT_PRIORITY if priority is None else priority,
        default_timeout_ms if timeout_ms is None else timeout_ms, None, "USD", None,
        [], {}, get("tenant_policies_version"), list(get("tags") or ()), get("batch_id"),
        get("input_payload"), payload_json, get("channel"), get("correlation_id") or task_id,
        [], None, DEFAULT_MAX_RETRIES + 1, fast_fingerprint(data),
    )


def _plain_tags(value: Any) -> bool:
    """Tags the full path (_tags) would accept unchanged."""
    return type(value) is list and len(value) <= MAX_TAGS and all(
        type(tag) is str and 0 < len(tag) <= 128 and bad_text(tag) is None for tag in value
    )


def trace_submit(spec: TaskSpec) -> None:
    stamp_traceparent(spec.constraints)
    with span("creep.task.submit", {"creep.task_id": spec.task_id,
                                     "creep.task_type": spec.task_type}):
        pass  # marks the submission in the submitter's trace


def validate_task_spec(
    data: Mapping[str, Any], *, now: datetime, limits: Limits = Limits(), prefix: str = "",
    traced: bool | None = None,
) -> TaskSpec:
    """Validate one task order; raise ValidationError naming every bad field.

    `traced`: whether a tracer is set (None: look it up); a bulk caller asks once."""
    fast = _fast_spec(data, limits, traced)
    if fast is not None:
        return fast
    return validate_full(data, now=now, limits=limits, prefix=prefix, traced=traced)


def validate_full(
    data: Mapping[str, Any], *, now: datetime, limits: Limits, prefix: str = "",
    traced: bool | None = None,
) -> TaskSpec:
    """validate_task_spec without its fast path: for an order fast_check turned down."""
    errs = _Errors(prefix)
    if not isinstance(data, Mapping):
        raise ValidationError.single(prefix.rstrip(".") or "task", "must be an object")
    unknown = set(data) - KNOWN_FIELDS
    if unknown:
        for name in sorted(unknown):
            errs.add(name, "is not a TaskOrder field")

    task_id: str | None
    if data.get("task_id") is not None:
        task_id = _uuid(data["task_id"])
        if task_id is None:
            errs.add("task_id", "must be a UUID")
    else:
        task_id = uuid7()
    tenant_id = _text(errs, data, "tenant_id", required=True, default="default", max_len=128)
    env = _text(errs, data, "env", required=True, default="default", max_len=64)
    task_type = _text(errs, data, "task_type", required=True, max_len=128)
    idem = _text(errs, data, "idempotency_key", max_len=_IDENT_MAX)
    priority = _int(errs, data, "priority", DEFAULT_PRIORITY, 0, 100, "from 0 to 100")
    timeout_ms = _int(
        errs, data, "timeout_ms", limits.default_timeout_ms, 1, MAX_TIMEOUT_MS,
        f"> 0 and at most {MAX_TIMEOUT_MS}",
    )
    currency = data.get("currency")
    if currency is None:  # left out or null: the default, as for every other optional field
        currency = "USD"
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        errs.add("currency", "must be a 3-4 letter upper-case currency code such as USD or USDT")
        currency = "USD"
    constraints = _constraints(errs, data.get("constraints"))
    max_attempts = retries_allowed(constraints) + 1

    depends_raw = data.get("depends_on") or []
    depends_on: list[str] = []
    if not isinstance(depends_raw, list):
        errs.add("depends_on", "must be a list of task ids")
    else:
        if len(depends_raw) > MAX_DEPENDENCIES:
            errs.add("depends_on", f"must have at most {MAX_DEPENDENCIES} entries")
        for i, dep in enumerate(depends_raw):
            dep_id = _uuid(dep)
            if dep_id is None:
                errs.add(f"depends_on[{i}]", "must be a task id (UUID)")
            elif dep_id == task_id:
                errs.add(f"depends_on[{i}]", "a task cannot depend on itself")
            elif dep_id not in depends_on:
                depends_on.append(dep_id)

    payload = data.get("input_payload")
    try:
        payload_json = payload_dumps(payload)
    except TypeError as exc:
        errs.add("input_payload", f"must be JSON-serialisable ({exc})")
        payload_json = b"null"
    if may_be_unwritable(payload_json, payload):
        found = find_unwritable(payload, "input_payload")
        if found is not None:
            errs.add(*found)
    if len(payload_json) > limits.max_payload_bytes:
        errs.add(
            "input_payload",
            f"is {len(payload_json)} bytes; the limit is {limits.max_payload_bytes} bytes",
        )

    spec_hints = _resource_hints(errs, data.get("resource_hints"))
    for name, value in (("constraints", constraints), ("resource_hints", spec_hints)):
        found = find_unwritable(data.get(name), name)
        if found is not None:
            errs.add(*found)
            continue
        try:  # as the store will write them: else its TypeError, not a ValidationError
            payload_dumps(value)
        except TypeError as exc:
            errs.add(name, f"must be JSON-serialisable ({exc})")
    spec = TaskSpec(
        task_id=task_id or "",
        idempotency_key=idem or task_id or "",
        tenant_id=tenant_id or "default",
        project_id=_text(errs, data, "project_id", max_len=128),
        env=env or "default",
        external_ref=_text(errs, data, "external_ref"),
        task_type=task_type or "",
        task_category=_text(errs, data, "task_category", max_len=128),
        description=_text(errs, data, "description", max_len=10_000),
        priority=priority,
        timeout_ms=timeout_ms,
        max_total_cost=_money(errs, data, "max_total_cost"),
        currency=currency,
        business_value_hint=_money(errs, data, "business_value_hint"),
        resource_hints=spec_hints,
        constraints=constraints,
        tenant_policies_version=_text(errs, data, "tenant_policies_version", max_len=128),
        tags=_tags(errs, data.get("tags")),
        batch_id=_text(errs, data, "batch_id", max_len=128),
        input_payload=payload,
        input_payload_json=payload_json,
        channel=_text(errs, data, "channel", max_len=64),
        correlation_id=_text(errs, data, "correlation_id") or task_id or "",
        depends_on=depends_on,
        run_after=_run_after(errs, data.get("run_after"), now),
        max_attempts=max_attempts,
    )
    if errs.items:
        raise ValidationError(errs.items)
    spec.request_hash = request_fingerprint(data)  # of what was sent: before the stamp
    spec.given_id = data.get("task_id") is not None
    if depends_on:
        spec.sent = data
    if traced is None:
        traced = tracer() is not None
    if traced:
        trace_submit(spec)
    return spec


def request_fingerprint(data: Mapping[str, Any]) -> str:
    """Hash of the request body as the caller sent it, minus fields the server may fill in.

    Two creates with one idempotency key are the same request iff their fingerprints match.
    """
    body = {k: v for k, v in data.items() if k not in ("task_id", "idempotency_key") and v is not None}
    if isinstance(body.get("run_after"), timedelta):
        # A relative delay is re-evaluated on every call; only its size identifies the request.
        body["run_after"] = f"+{body['run_after'].total_seconds()}s"
    elif isinstance(body.get("run_after"), datetime):
        body["run_after"] = body["run_after"].isoformat()
    for money in ("max_total_cost", "business_value_hint"):
        if money in body:
            with contextlib.suppress(ValueError):
                body[money] = str(parse_money(body[money]).normalize())
    return hashlib.sha256(canonical_json(body)).hexdigest()


def rebind(spec: TaskSpec, alias: Mapping[str, str]) -> TaskSpec:
    """`spec` depending on the tasks `alias` stands for (the id of an order of the same
    submission -> the id of the task it replays). A fingerprint of the ids sent is taken
    again of the ids bound: sent again with ids drawn anew, the submission fingerprints as
    the first one did, and replays instead of conflicting."""
    depends_on = list(dict.fromkeys(alias.get(d, d) for d in spec.depends_on))
    if spec.sent is None:
        return replace(spec, depends_on=depends_on)

    def bound(dep: Any) -> Any:  # the others as sent: the fingerprint took them so
        key = _uuid(dep)
        return dep if key is None else alias.get(key, dep)

    sent = {**spec.sent, "depends_on": [bound(d) for d in spec.sent["depends_on"]]}
    return replace(spec, depends_on=depends_on, request_hash=request_fingerprint(sent),
                   sent=sent)


def fast_fingerprint(data: Mapping[str, Any]) -> str:
    """request_fingerprint of an order fast_check accepted, for less: such an order holds no
    task_id, run_after or money field, so only the idempotency key and the None values are
    left out (tests compare the two)."""
    body = dict(data)
    body.pop("idempotency_key", None)
    if None in body.values():  # rare in bulk: copying and popping is cheaper than filtering
        body = {k: v for k, v in body.items() if v is not None}
    return hashlib.sha256(
        orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=json_default)
    ).hexdigest()
