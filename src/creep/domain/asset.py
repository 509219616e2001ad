"""AssetSnapshot (S-01): the current state of one pooled resource, with its status machine."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypeVar

import orjson

from creep.domain.errors import ConflictError, IdTaken, IllegalTransition, ValidationError
from creep.domain.text import bad_text, find_bad_json, json_default


class AssetStatus(StrEnum):
    NEW = "NEW"
    READY = "READY"
    IN_USE = "IN_USE"
    COOLING = "COOLING"
    BANNED = "BANNED"
    SOLD = "SOLD"
    ARCHIVED = "ARCHIVED"


A = AssetStatus

#: The one table of legal asset transitions; a self-transition is illegal. IN_USE <-> READY
#: follows current_concurrency (first lease / last release); COOLING follows a release when
#: the asset has a cooldown; BANNED, SOLD and ARCHIVED revoke the asset's active leases.
ASSET_TRANSITIONS: dict[AssetStatus, frozenset[AssetStatus]] = {
    A.NEW: frozenset({A.READY, A.BANNED, A.ARCHIVED}),
    A.READY: frozenset({A.IN_USE, A.COOLING, A.BANNED, A.SOLD, A.ARCHIVED}),
    A.IN_USE: frozenset({A.READY, A.COOLING, A.BANNED, A.SOLD, A.ARCHIVED}),
    A.COOLING: frozenset({A.READY, A.BANNED, A.SOLD, A.ARCHIVED}),
    A.BANNED: frozenset({A.READY, A.ARCHIVED}),
    A.SOLD: frozenset({A.ARCHIVED}),
    A.ARCHIVED: frozenset(),
}

#: Statuses in which an asset can be leased (with spare concurrency).
LEASABLE: frozenset[AssetStatus] = frozenset({A.READY, A.IN_USE})
#: Statuses that end every active lease on the asset (REVOKED).
REVOKING: frozenset[AssetStatus] = frozenset({A.BANNED, A.SOLD, A.ARCHIVED})
#: Final statuses: the asset's fields can no longer change (SOLD may still be ARCHIVED).
FINAL: frozenset[AssetStatus] = frozenset({A.SOLD, A.ARCHIVED})


def check_fields_changeable(asset_id: str, status: AssetStatus, fields: Mapping[str, Any]
                            ) -> None:
    """A change of fields (not of status) of a SOLD or ARCHIVED asset is a ConflictError."""
    if status in FINAL and any(name != "status" for name in fields):
        raise ConflictError(
            f"asset {asset_id} is {status.value}: its fields can no longer be changed; "
            "nothing changed")


def check_asset_transition(old: AssetStatus | str, new: AssetStatus | str) -> None:
    old_s, new_s = AssetStatus(old), AssetStatus(new)
    if new_s not in ASSET_TRANSITIONS[old_s]:
        raise IllegalTransition("asset", old_s.value, new_s.value)


def asset_transition_pairs() -> list[str]:
    """'OLD>NEW' for every legal pair, for the database-level guard."""
    return sorted(f"{o.value}>{n.value}" for o, ts in ASSET_TRANSITIONS.items() for n in ts)


@dataclass(slots=True)
class AssetSnapshot:
    asset_id: str
    tenant_id: str
    project_id: str | None
    env: str | None
    sku_category: str
    sku_code: str
    attributes: dict[str, Any]
    status: AssetStatus
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ASSET_FIELDS: tuple[str, ...] = tuple(AssetSnapshot.__dataclass_fields__)

#: Fields an update (naming `version`) may change; status changes go through the table.
ASSET_UPDATABLE = frozenset(
    {"project_id", "env", "sku_code", "attributes", "status", "max_concurrency",
     "health_score", "cooldown_seconds", "cost_per_lease", "currency"}
)

_CURRENCY = re.compile(r"[A-Z]{3,4}")
#: Money carries at most this many decimal places (exact in both backends).
MONEY_PLACES = 6


@dataclass(slots=True)
class AssetSpec:
    """A validated asset to create."""

    asset_id: str
    tenant_id: str
    project_id: str | None
    env: str | None
    sku_category: str
    sku_code: str
    attributes: dict[str, Any] = field(default_factory=dict)
    status: AssetStatus = A.READY
    max_concurrency: int = 1
    health_score: int = 100
    cooldown_seconds: int = 0
    cost_per_lease: Decimal = Decimal(0)
    currency: str = "USD"


def money(errors: list[tuple[str, str]], name: str, value: Any, *, signed: bool = False) -> Decimal:
    """A Decimal from a Decimal, int or numeric string (never a float: floats are inexact)."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        errors.append((name, "must be a Decimal, an int or a decimal string (not a float)"))
        return Decimal(0)
    try:
        d = Decimal(value)
    except InvalidOperation:
        errors.append((name, "is not a decimal number"))
        return Decimal(0)
    if not d.is_finite():
        errors.append((name, "must be finite"))
        return Decimal(0)
    if not signed and d < 0:
        errors.append((name, "must be >= 0"))
    exponent = d.as_tuple().exponent
    too_fine = isinstance(exponent, int) and exponent < -MONEY_PLACES
    if too_fine:
        errors.append((name, f"has more than {MONEY_PLACES} decimal places"))
    try:
        too_big = abs(d) >= Decimal(10) ** 15
    except ArithmeticError:  # beyond the decimal context (abs() overflows): far too big
        too_big = True
    if too_big:
        errors.append((name, "must be below 10^15"))
    if too_big or too_fine:
        # Refused: never written out in digits ('1e-999999999' would be a 1 GB string).
        return Decimal(0)
    return positional(d)


def positional(amount: Decimal) -> Decimal:
    """The amount as written out in digits ('1E+3' -> 1000, '1.50' stays 1.50): how
    PostgreSQL's numeric gives it back, so both backends (and the answer to the write that
    stored it) show the same text."""
    return Decimal(format(amount, "f"))


def currency_code(errors: list[tuple[str, str]], name: str, value: Any) -> str:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        errors.append((name, "must be a 3-4 letter upper-case currency code such as USD"))
        return "USD"
    return value


def _int(errors: list[tuple[str, str]], name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        errors.append((name, f"must be an integer from {lo} to {hi}"))
        return lo
    return value


def _text(errors: list[tuple[str, str]], name: str, value: Any, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        errors.append((name, "is required and must be a non-empty string of at most 200 chars"
                       if required else "must be a non-empty string of at most 200 chars"))
        return None
    if (rule := bad_text(value)) is not None:
        errors.append((name, rule))
        return None
    return value


def asset_text(errors: list[tuple[str, str]], name: str, value: Any) -> str:
    """A required text field as an asset's tenant_id and sku_category are checked."""
    return _text(errors, name, value, required=True) or ""


_SPEC_KEYS = frozenset(
    {"asset_id", "tenant_id", "project_id", "env", "sku_category", "sku_code", "attributes",
     "status", "max_concurrency", "health_score", "cooldown_seconds", "cost_per_lease",
     "currency"}
)


def validate_asset_spec(data: Mapping[str, Any], prefix: str = "") -> AssetSpec:
    errors: list[tuple[str, str]] = []
    p = prefix
    unknown = sorted(set(data) - _SPEC_KEYS)
    if unknown:
        errors.extend((f"{p}{k}", "unknown field") for k in unknown)
    asset_id = data.get("asset_id") or str(uuid.uuid4())
    try:
        asset_id = str(uuid.UUID(str(asset_id)))
    except ValueError:
        errors.append((f"{p}asset_id", "must be a UUID"))
    status_raw = data.get("status", "READY")
    status = A.READY
    if status_raw not in ("NEW", "READY"):
        errors.append((f"{p}status", "a new asset starts NEW or READY"))
    else:
        status = AssetStatus(status_raw)
    attrs = data.get("attributes") or {}
    if not isinstance(attrs, Mapping):
        errors.append((f"{p}attributes", "must be an object"))
        attrs = {}
    elif (found := find_bad_json(attrs, f"{p}attributes")) is not None:
        errors.append(found)
    spec = AssetSpec(
        asset_id=asset_id,
        tenant_id=_text(errors, f"{p}tenant_id", data.get("tenant_id", "default"),
                        required=True) or "",
        project_id=_text(errors, f"{p}project_id", data.get("project_id"), required=False),
        env=_text(errors, f"{p}env", data.get("env"), required=False),
        sku_category=_text(errors, f"{p}sku_category", data.get("sku_category"),
                           required=True) or "",
        sku_code=_text(errors, f"{p}sku_code", data.get("sku_code"), required=True) or "",
        attributes=dict(attrs),
        status=status,
        max_concurrency=_int(errors, f"{p}max_concurrency", data.get("max_concurrency", 1),
                             1, 100_000),
        health_score=_int(errors, f"{p}health_score", data.get("health_score", 100), 0, 100),
        cooldown_seconds=_int(errors, f"{p}cooldown_seconds", data.get("cooldown_seconds", 0),
                              0, 10**8),
        cost_per_lease=money(errors, f"{p}cost_per_lease", data.get("cost_per_lease", 0)),
        currency=currency_code(errors, f"{p}currency", data.get("currency", "USD")),
    )
    if "*" in spec.sku_code:
        errors.append((f"{p}sku_code", "an asset's sku_code is exact (no '*')"))
    if errors:
        raise ValidationError(errors)
    return spec


#: What a create sets that only an update changes afterwards: a create sent again names
#: each as the asset has it.
_CREATED_FIELDS = ("tenant_id", "project_id", "env", "sku_category", "sku_code",
                   "max_concurrency", "cooldown_seconds", "cost_per_lease", "currency")
#: What a create only starts the asset with: creep moves them itself (a lease takes an asset
#: IN_USE, task outcomes move its health, a ban, a cooldown), so they are the create's only
#: while the asset is as created (version 1).
_STARTING_FIELDS = ("status", "health_score")


def is_created_by(asset: AssetSnapshot, spec: AssetSpec) -> bool:
    """Whether `spec` (validated: defaults filled) is the create that made `asset`, sent
    again: the same tenant, project, env, SKU, attributes (as JSON), max_concurrency,
    cooldown_seconds, cost_per_lease (as a number) and currency as the asset has now, and,
    while the asset is unchanged since (version 1), the same status and health_score."""
    if any(getattr(asset, name) != getattr(spec, name) for name in _CREATED_FIELDS):
        return False
    if not _same_json(asset.attributes, orjson.loads(orjson.dumps(spec.attributes,
                                                                  default=json_default))):
        return False
    return asset.version > 1 or all(
        getattr(asset, name) == getattr(spec, name) for name in _STARTING_FIELDS)


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality, as matching reads attributes: `true` is not `1`; numbers by value (a
    database may write 1e20 back as 100000000000000000000)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


E = TypeVar("E", ValidationError, IdTaken)


def name_items(exc: E, asset_ids: Sequence[str], template: str) -> E:
    """The errors of a bulk call named by item: an error whose message names one of the
    call's assets (as the store's do: "asset <id> already exists") gets that item's name
    (`template.format(i)` + field, e.g. `assets[3].asset_id`), like the call's other errors."""
    index = {asset_id: i for i, asset_id in enumerate(asset_ids)}
    errors = []
    for name, rule in exc.errors:
        hit = next((i for asset_id, i in index.items() if asset_id in rule), None)
        errors.append((name if hit is None else f"{template.format(hit)}{name}", rule))
    return type(exc)(errors)


def validate_asset_changes(changes: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Check an update's fields; returns them normalised. Errors are named `prefix` + field."""
    try:
        return _asset_changes(changes)
    except ValidationError as exc:
        if not prefix:
            raise
        raise ValidationError([(prefix + f, rule) for f, rule in exc.errors]) from None


def _asset_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    errors: list[tuple[str, str]] = []
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in ASSET_UPDATABLE:
            errors.append((name, "cannot be changed (or is not an asset field)"))
        elif name == "status":
            try:
                out[name] = AssetStatus(value)
            except ValueError:
                errors.append((name, f"must be one of {[s.value for s in AssetStatus]}"))
        elif name == "attributes":
            if not isinstance(value, Mapping):
                errors.append((name, "must be an object"))
            elif (found := find_bad_json(value, name)) is not None:
                errors.append(found)
            else:
                out[name] = dict(value)
        elif name == "max_concurrency":
            out[name] = _int(errors, name, value, 1, 100_000)
        elif name == "health_score":
            out[name] = _int(errors, name, value, 0, 100)
        elif name == "cooldown_seconds":
            out[name] = _int(errors, name, value, 0, 10**8)
        elif name == "cost_per_lease":
            out[name] = money(errors, name, value)
        elif name == "currency":
            out[name] = currency_code(errors, name, value)
        elif name == "sku_code":
            text = _text(errors, name, value, required=True)
            if text is not None and "*" in text:
                errors.append((name, "an asset's sku_code is exact (no '*')"))
            out[name] = text
        else:
            out[name] = _text(errors, name, value, required=False)
    if errors:
        raise ValidationError(errors)
    return out


#: How a finished task moves the health_score of each asset it leased (clamped to 0..100).
HEALTH_DELTA: dict[str, int] = {"TASK_SUCCESS": +1, "TASK_FAIL": -5, "TASK_TIMEOUT": -10}


def next_health(score: int, effect: str) -> int:
    return max(0, min(100, score + HEALTH_DELTA.get(effect, 0)))


def sku_pattern_rule(code: str) -> str | None:
    """Why `code` is not a sku_code to match by (a hint's, a listing's), or None: an exact
    code, or `prefix.*` with a non-empty prefix (codes starting with `prefix.`). '.*' alone
    would match only codes starting with '.', so it is refused, not read as 'any code'."""
    if "*" not in code or (len(code) > 2 and code.endswith(".*") and "*" not in code[:-2]):
        return None
    return "a pattern must be a non-empty prefix ending in '.*' (leave sku_code out to " \
        "match every code)"


@dataclass(slots=True)
class AssetFilter:
    tenant_id: str | None = None
    status: str | None = None
    sku_category: str | None = None
    sku_code: str | None = None  # exact, or 'prefix.*'
    project_id: str | None = None


@dataclass(slots=True)
class AssetMaintenanceReport:
    cooled: int = 0
    no_resource: int = 0

    def total(self) -> int:
        return self.cooled + self.no_resource
