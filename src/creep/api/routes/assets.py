"""Assets and leases: import (one or a list), list, read, ban / unban / archive, an asset's
events; leases by task, asset and status, and releasing one by hand.

Every read happens before the audited block: on PostgreSQL a read is a transaction too, and
the audit rows must ride the one transaction that makes the change."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from creep.api.asset_schemas import (
    AssetEventPage,
    AssetIn,
    AssetList,
    AssetOut,
    AssetPage,
    AssetPatch,
    AssetPatchList,
    AssetStatusName,
    LeaseListPage,
    LeaseOut,
    LeaseStatusName,
    ReasonIn,
    TimeOrder,
    asset_event_json,
    asset_json,
    lease_json,
)
from creep.api.audit import audit_write, audited, riding
from creep.api.auth import Authenticated, Principal, Writer
from creep.api.openapi import BODY_MODELS
from creep.api.preconditions import parse_if_match
from creep.api.problems import Problem
from creep.api.responses import (
    decode_cursor,
    decode_ordered_cursor,
    encode_cursor,
    encode_ordered_cursor,
    json_response,
)
from creep.api.schemas import UuidParam
from creep.api.services import Services, services
from creep.api.tenancy import foreign_tenant_filter, list_scope, owning_tenant, read_scope
from creep.domain.asset import (
    REVOKING,
    AssetFilter,
    AssetSnapshot,
    AssetSpec,
    AssetStatus,
    check_asset_transition,
    check_fields_changeable,
    name_items,
    sku_pattern_rule,
    validate_asset_changes,
    validate_asset_spec,
)
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.errors import (
    ConflictError,
    IdTaken,
    IllegalTransition,
    NotFound,
    ValidationError,
    VersionConflict,
)
from creep.domain.ids import is_uuid
from creep.ports_assets_api import AssetPagesStore, lease_cursor, valid_lease_cursor

router = APIRouter(tags=["assets"])
Svc = Annotated[Services, Depends(services)]
MAX_IMPORT = 1000
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such asset/lease (or not this tenant's)"},
    409: {"description": "the asset's status does not allow this change"},
    422: {"description": "validation failed; `errors` names each field"},
}


def store_of(svc: Services) -> AssetPagesStore:
    return cast(AssetPagesStore, svc.store)


# -- assets ------------------------------------------------------------------------------------


_ONE_ASSET: TypeAdapter[AssetIn] = TypeAdapter(AssetIn)
_ASSET_LIST: TypeAdapter[list[AssetIn]] = TypeAdapter(list[AssetIn])
BODY_MODELS.append(AssetIn)
_ASSET_REF = {"$ref": "#/components/schemas/AssetIn"}


def _parse_assets(raw: Any) -> list[AssetIn]:
    """One asset or a list, each problem named by its path (`[2].sku_code`)."""
    try:
        if isinstance(raw, list):
            items = _ASSET_LIST.validate_python(raw)
            if not 1 <= len(items) <= MAX_IMPORT:
                raise ValidationError.single("body", f"give 1 to {MAX_IMPORT} assets")
            return items
        return [_ONE_ASSET.validate_python(raw)]
    except PydanticValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None


@router.post(
    "/assets", status_code=201, response_model=AssetOut | AssetList,
    responses={200: {"model": AssetOut | AssetList, "description": "a replay: the assets "
                     "this create made already, as they are now (header "
                     "Idempotent-Replayed: true)"},
               409: {"description": "an asset_id of another asset, or existing assets "
                                    "beside new ones (idempotency-conflict)"},
               422: _PROBLEMS[422]},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"oneOf": [_ASSET_REF, {"type": "array", "items": _ASSET_REF,
                                           "minItems": 1, "maxItems": MAX_IMPORT}]}}}}},
)
def create_assets(
    body: Annotated[Any, Body()], request: Request, principal: Writer, svc: Svc
) -> Any:
    """Add one asset (answer: the asset) or a list of up to 1000 in one transaction (answer:
    `{items}`; all valid or none written). Each asset writes an IMPORTED event. The same
    create sent again with its asset_ids (after a lost answer) answers 200 with the assets
    as they are now and writes nothing: each asset the same tenant, project, env, SKU,
    attributes, max_concurrency, cooldown_seconds, cost_per_lease and currency as its body,
    and its status and health_score too while it is unchanged since (version 1)."""
    many = isinstance(body, list)
    items = _parse_assets(body)
    specs = []
    errors: list[tuple[str, str]] = []
    tenants: dict[str | None, str] = {}
    for i, item in enumerate(items):
        prefix = f"[{i}]." if many else ""
        try:
            if item.tenant_id not in tenants:
                tenants[item.tenant_id] = owning_tenant(
                    principal, item.tenant_id, svc.store, field=f"{prefix}tenant_id")
            specs.append(validate_asset_spec(item.fields(tenants[item.tenant_id]), prefix))
        except ValidationError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ValidationError(errors)
    writes = [
        audit_write(request, principal, AuditAction.CREATED, ResourceType.ASSET, s.asset_id,
                    tenant_id=s.tenant_id)
        for s in specs
    ]
    try:
        # A replay's transaction rolls back: its audit rows are not written.
        with riding(*writes):
            created, replayed = store_of(svc).asset_create_or_replay(specs, svc.clock.now())
    except IdTaken as exc:
        raise _indexed(exc, specs) if many else exc from None
    status, headers = (200, {"Idempotent-Replayed": "true"}) if replayed else (201, {})
    if many:
        return json_response({"items": [asset_json(a) for a in created]}, status, headers)
    asset = created[0]
    return json_response(asset_json(asset), status, {
        **headers, "Location": f"/v1/assets/{asset.asset_id}", "ETag": f'"{asset.version}"'})


def _indexed(exc: IdTaken, specs: list[AssetSpec]) -> IdTaken:
    """The store names an existing asset by id; a list import names it by index too
    (`[3].asset_id`), like every other error of the list, so a client can find the row."""
    return name_items(exc, [s.asset_id for s in specs], "[{}].")


@router.get("/assets", response_model=AssetPage, responses={422: _PROBLEMS[422]})
def list_assets(
    principal: Authenticated, svc: Svc,
    status: AssetStatusName | None = None,
    sku_category: Annotated[str | None, Query(max_length=200)] = None,
    sku_code: Annotated[str | None, Query(max_length=200,
                                          description="exact, or a `prefix.*` pattern")] = None,
    project_id: Annotated[str | None, Query(max_length=200)] = None,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Assets ordered by asset_id; pass `next_cursor` back as `cursor`."""
    if sku_code is not None and (rule := sku_pattern_rule(sku_code)) is not None:
        raise ValidationError.single("sku_code", rule)
    if foreign_tenant_filter(principal, tenant_id):
        return json_response({"items": [], "next_cursor": None})
    after = decode_cursor(cursor, is_uuid) if cursor else None
    flt = AssetFilter(list_scope(principal, tenant_id), status, sku_category, sku_code,
                      project_id)
    items = store_of(svc).asset_list(flt, after=after, limit=limit)
    next_cursor = encode_cursor(items[-1].asset_id) if len(items) == limit else None
    return json_response({"items": [asset_json(a) for a in items], "next_cursor": next_cursor})


@router.get("/assets/{asset_id}", response_model=AssetOut, responses={404: _PROBLEMS[404]})
def get_asset(asset_id: UuidParam, principal: Authenticated, svc: Svc) -> Any:
    asset = store_of(svc).asset_get(asset_id, read_scope(principal))
    return json_response(asset_json(asset), headers={"ETag": f'"{asset.version}"'})


_NULLABLE = frozenset({"project_id", "env"})


def _checked_changes(changes: dict[str, Any], prefix: str) -> dict[str, Any]:
    """An update's fields checked as the Python API does (`update_asset`); a null is a 422
    except for the fields that may be cleared."""
    nulls = [(prefix + name, "must not be null") for name, value in changes.items()
             if value is None and name not in _NULLABLE]
    if nulls:
        raise ValidationError(nulls)
    return validate_asset_changes(changes, prefix)




def _stale(asset_id: str, expected: int, current: int | None) -> Problem:
    return Problem(412, "Precondition failed",
                   f"asset {asset_id} is at version {current}, not {expected}",
                   type_="stale-version", current_version=current)


@router.patch(
    "/assets/{asset_id}", response_model=AssetOut,
    responses={**_PROBLEMS, 412: {"description": "If-Match names a stale version"},
               428: {"description": "If-Match is missing"}},
)
def patch_asset(
    asset_id: UuidParam, body: AssetPatch, request: Request, principal: Writer, svc: Svc,
    if_match: Annotated[str | None, Header()] = None,
) -> Any:
    """Change fields of an asset whose version still equals If-Match (`update_asset`): one
    UPDATED event for the fields, the status change's own event (NEW -> READY activates,
    -> SOLD sells and revokes its active leases). An illegal status change is a 409 and
    nothing is written; no field to change writes nothing."""
    expected = parse_if_match(if_match, read_from="GET /v1/assets/{id}", what="an asset version")
    changes = _checked_changes(body.changes(), "")
    store = store_of(svc)
    scope = read_scope(principal)
    before = store.asset_get(asset_id, scope)
    if before.version != expected:
        raise _stale(before.asset_id, expected, before.version)
    if not changes:
        return json_response(asset_json(before), headers={"ETag": f'"{before.version}"'})
    try:
        with audited(request, principal, AuditAction.UPDATED, ResourceType.ASSET, asset_id,
                     old=asset_json(before), tenant_id=before.tenant_id):
            [asset] = store.asset_update_many([(asset_id, expected, changes)],
                                              svc.clock.now(), tenant_id=scope)
    except VersionConflict as exc:
        raise _stale(asset_id, expected, exc.actual) from None
    return json_response(asset_json(asset), headers={"ETag": f'"{asset.version}"'})


@router.patch("/assets", response_model=AssetList, responses=_PROBLEMS)
def patch_assets(
    body: AssetPatchList, request: Request, principal: Writer, svc: Svc
) -> Any:
    """Change up to 1000 assets in one transaction, all or none (`update_assets`): each item
    names `asset_id`, the `expected_version` read and the fields to change. Errors name the
    item (`items[2].health_score`); a stale version is a 409 `version-conflict` naming the
    asset and its `current_version`; an illegal status change is a 409 too."""
    errors: list[tuple[str, str]] = []
    items: list[tuple[str, int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(body.items):
        try:
            items.append((item.asset_id, item.expected_version,
                          _checked_changes(item.changes(), f"items[{i}].")))
        except ValidationError as exc:
            errors.extend(exc.errors)
        first = seen.setdefault(item.asset_id, i)
        if first != i:
            errors.append((f"items[{i}].asset_id", f"repeats items[{first}].asset_id"))
    if errors:
        raise ValidationError(errors)
    store = store_of(svc)
    scope = read_scope(principal)
    before = [store.asset_get(asset_id, scope) for asset_id, _, _ in items]
    for i, (asset, (_, expected, changes)) in enumerate(zip(before, items, strict=True)):
        if asset.version != expected:
            raise _version_conflict(i, asset.asset_id, expected, asset.version)
        _check_status(i, asset, changes)
    writes = [
        audit_write(request, principal, AuditAction.UPDATED, ResourceType.ASSET, a.asset_id,
                    old=asset_json(a), tenant_id=a.tenant_id)
        for a, (_, _, changes) in zip(before, items, strict=True) if changes
    ]
    ids = [asset_id for asset_id, _, _ in items]
    try:
        with riding(*writes):
            updated = store.asset_update_many(items, svc.clock.now(), tenant_id=scope)
    except ValidationError as exc:  # max_concurrency below an asset's active leases
        raise name_items(exc, ids, "items[{}].") from None
    except VersionConflict as exc:
        raise _version_conflict(ids.index(str(exc.key)), str(exc.key), exc.expected,
                                exc.actual) from None
    return json_response({"items": [asset_json(a) for a in updated]})


def _check_status(index: int, asset: AssetSnapshot, changes: dict[str, Any]) -> None:
    """A change the asset as read cannot take (fields of a SOLD/ARCHIVED asset, a status
    change), named by its item (the store checks again under the row lock, but its errors
    do not say which of the items it was)."""
    try:
        check_fields_changeable(asset.asset_id, asset.status, changes)
    except ConflictError as exc:
        raise Problem(409, "Conflict", f"items[{index}]: {exc.message}", type_="conflict",
                      asset_id=asset.asset_id) from None
    status: AssetStatus | None = changes.get("status")
    if status is None:
        return
    if (status is not asset.status and status not in REVOKING
            and AssetStatus.IN_USE in (status, asset.status)):
        raise ValidationError.single(
            f"items[{index}].status", "IN_USE follows the asset's leases; it is not set by hand")
    try:
        check_asset_transition(asset.status, status)
    except IllegalTransition as exc:
        raise Problem(409, "Illegal transition", f"items[{index}]: asset {asset.asset_id}: "
                      f"{exc.message}; nothing changed", type_="illegal-transition",
                      asset_id=asset.asset_id) from None


def _version_conflict(index: int, asset_id: str, expected: int, current: int | None) -> Problem:
    return Problem(409, "Version conflict",
                   f"items[{index}]: asset {asset_id} is at version {current}, not {expected}; "
                   "nothing changed", type_="version-conflict", asset_id=asset_id,
                   current_version=current)


def _set_status(
    asset_id: str, status: AssetStatus, action: AuditAction, request: Request,
    principal: Principal, svc: Services, body: ReasonIn | None,
    only_from: AssetStatus | None = None,
) -> Any:
    store = store_of(svc)
    scope = read_scope(principal)
    before = store.asset_get(asset_id, scope)
    reason = body.reason if body else None
    with audited(request, principal, action, ResourceType.ASSET, asset_id,
                 old=asset_json(before), tenant_id=before.tenant_id,
                 data={"reason": reason} if reason else None):
        asset, _event = store.asset_set_status(
            asset_id, status, svc.clock.now(), tenant_id=scope, reason=reason,
            only_from=only_from,
        )
    return json_response(asset_json(asset), headers={"ETag": f'"{asset.version}"'})


@router.post("/assets/{asset_id}/ban", response_model=AssetOut, responses=_PROBLEMS)
def ban_asset(
    asset_id: UuidParam, request: Request, principal: Writer, svc: Svc,
    body: Annotated[ReasonIn | None, Body()] = None,
) -> Any:
    """BANNED by an operator: its active leases are REVOKED (event BANNED)."""
    return _set_status(asset_id, AssetStatus.BANNED, AuditAction.BANNED, request, principal,
                       svc, body)


@router.post("/assets/{asset_id}/unban", response_model=AssetOut, responses=_PROBLEMS)
def unban_asset(
    asset_id: UuidParam, request: Request, principal: Writer, svc: Svc,
    body: Annotated[ReasonIn | None, Body()] = None,
) -> Any:
    """BANNED -> READY (event UNBANNED); earlier failures no longer count to auto-ban. An
    asset that is not BANNED is a 409 and nothing changes."""
    return _set_status(asset_id, AssetStatus.READY, AuditAction.UNBANNED, request, principal,
                       svc, body, only_from=AssetStatus.BANNED)


@router.post("/assets/{asset_id}/archive", response_model=AssetOut, responses=_PROBLEMS)
def archive_asset(
    asset_id: UuidParam, request: Request, principal: Writer, svc: Svc,
    body: Annotated[ReasonIn | None, Body()] = None,
) -> Any:
    """ARCHIVED: never leased again; active leases are REVOKED (event ARCHIVED)."""
    return _set_status(asset_id, AssetStatus.ARCHIVED, AuditAction.ARCHIVED, request,
                       principal, svc, body)


@router.get("/assets/{asset_id}/events", response_model=AssetEventPage,
            responses={404: _PROBLEMS[404]})
def asset_events(
    asset_id: UuidParam, principal: Authenticated, svc: Svc,
    event_type: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    order: Annotated[TimeOrder, Query(
        description="`oldest` first (the default) or `newest` first")] = "oldest",
) -> Any:
    """The asset's events, oldest first, or the latest `limit` newest first
    (`GET /v1/events?asset_id=` pages through them)."""
    store = store_of(svc)
    scope = read_scope(principal)
    store.asset_get(asset_id, scope)
    events = store.asset_events_list(tenant_id=scope, asset_id=asset_id, event_type=event_type,
                                     limit=limit, newest_first=order == "newest")
    return json_response({"items": [asset_event_json(e) for e in events]})


# -- leases ------------------------------------------------------------------------------------


@router.get("/leases", response_model=LeaseListPage, tags=["leases"],
            responses={422: _PROBLEMS[422]})
def list_leases(
    principal: Authenticated, svc: Svc,
    task_id: Annotated[UuidParam | None, Query(max_length=64)] = None,
    asset_id: Annotated[UuidParam | None, Query(max_length=64)] = None,
    status: LeaseStatusName | None = None,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    order: Annotated[TimeOrder, Query(
        description="`oldest` first (the default) or `newest` first")] = "oldest",
) -> Any:
    """Leases by task, asset and status (the claim token is never shown), by acquired_at
    (then lease_id), oldest or newest first; pass `next_cursor` back as `cursor` (with the
    same `order`) for the next page."""
    tag = "newest" if order == "newest" else None
    after = decode_ordered_cursor(cursor, valid_lease_cursor, tag) if cursor else None
    if foreign_tenant_filter(principal, tenant_id):
        return json_response({"items": [], "next_cursor": None})
    leases = store_of(svc).lease_list(
        tenant_id=list_scope(principal, tenant_id), task_id=task_id, asset_id=asset_id,
        status=status, limit=limit, after=after, newest_first=tag is not None,
    )
    next_cursor = (
        encode_ordered_cursor(lease_cursor(leases[-1]), tag) if len(leases) == limit else None
    )
    return json_response({"items": [lease_json(x) for x in leases],
                          "next_cursor": next_cursor})


@router.post("/leases/{lease_id}/release", response_model=LeaseOut, tags=["leases"],
             responses=_PROBLEMS)
def release_lease(lease_id: UuidParam, request: Request, principal: Writer, svc: Svc) -> Any:
    """Release an ACTIVE lease by hand (e.g. one kept by constraints.keep_leases)."""
    store = store_of(svc)
    scope = read_scope(principal)
    old = store.snapshot(ResourceType.LEASE, lease_id) if is_uuid(lease_id) else None
    if old is None or (scope is not None and old.get("tenant_id") != scope):
        raise NotFound("lease", lease_id)
    with audited(request, principal, AuditAction.RELEASED, ResourceType.LEASE, lease_id,
                 old=old, tenant_id=str(old["tenant_id"])):
        lease = store.lease_release(lease_id, svc.clock.now(), tenant_id=scope)
    return json_response(lease_json(lease))
