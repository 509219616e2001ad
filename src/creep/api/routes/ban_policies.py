"""Auto-ban policies, one per (tenant, sku_category): list, read, create or replace, delete
(the Python API's `set_ban_policy` / `get_ban_policy`).

A policy is named by its sku_category in the path (the rest of the path: a category may hold
a `/`, sent as is or as %2F) and its tenant: a tenant key's own (naming
another is answered as if it had none), or the `tenant_id` an admin key names. A change takes
effect at an asset's next failure event; nothing is banned or unbanned by the change itself.
Audit rows (`banPolicy`) show the policy replaced or removed as the change's own transaction
read it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, cast
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from creep.api.asset_schemas import BanPolicyIn, BanPolicyOut, BanPolicyPage, ban_policy_json
from creep.api.audit import audit_write, riding
from creep.api.auth import Authenticated, Principal, Writer
from creep.api.responses import decode_cursor, encode_cursor, json_response
from creep.api.services import Services, services
from creep.api.tenancy import foreign_tenant_filter, list_scope, owning_tenant
from creep.domain.asset_event import validate_ban_policy
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.errors import NotFound, ValidationError
from creep.ports_assets_api import AssetPagesStore

router = APIRouter(prefix="/ban-policies", tags=["assets"])
Svc = Annotated[Services, Depends(services)]
TenantQuery = Annotated[str | None, Query(
    max_length=128, description="the policy's tenant: required with an admin key; a tenant "
                                "key's own if omitted")]
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "the tenant has no policy for this sku_category"},
    422: {"description": "validation failed; `errors` names each field"},
}


def _store(svc: Services) -> AssetPagesStore:
    return cast(AssetPagesStore, svc.store)


def _tenant(principal: Principal, requested: str | None, sku_category: str) -> str:
    """The tenant whose policy a read or delete names; another tenant's is not found, as a
    missing one (tenant keys), and an admin must say which tenant."""
    if principal.is_admin:
        if requested is None:
            raise ValidationError.single("tenant_id", "is required with an admin key")
        return requested
    assert principal.tenant_id is not None
    if requested is not None and requested != principal.tenant_id:
        raise NotFound("ban policy", sku_category)
    return principal.tenant_id


def _stored(tenant_id: str, sku_category: str) -> Callable[[Any, Any], dict[str, Any] | None]:
    """The audit image of the policy as the changing transaction reads it (the one replaced
    or deleted, read just before the change; after it, the one saved)."""

    def view(store: Any, conn: Any) -> dict[str, Any] | None:
        found = cast(AssetPagesStore, store).ban_policy_in_transaction(
            conn, tenant_id, sku_category)
        return None if found is None else ban_policy_json(found)

    return view


def _cursor_key(raw: str) -> tuple[str, str] | None:
    """The (tenant_id, sku_category) a page cursor continues after, None if it is not one."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[0], value[1]
    return None


@router.get("", response_model=BanPolicyPage, responses={422: _PROBLEMS[422]})
def list_ban_policies(
    principal: Authenticated, svc: Svc,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """The tenant's policies by sku_category (an admin key: every tenant's, or the one
    `tenant_id` names, by tenant then sku_category); pass `next_cursor` back as `cursor`."""
    after = _cursor_key(decode_cursor(cursor, lambda raw: _cursor_key(raw) is not None)
                        ) if cursor else None
    if foreign_tenant_filter(principal, tenant_id):
        return json_response({"items": [], "next_cursor": None})
    policies = _store(svc).ban_policy_list(list_scope(principal, tenant_id), after=after,
                                           limit=limit)
    next_cursor = None
    if len(policies) == limit:
        last = policies[-1]
        next_cursor = encode_cursor(orjson.dumps([last.tenant_id, last.sku_category]).decode())
    return json_response({"items": [ban_policy_json(p) for p in policies],
                          "next_cursor": next_cursor})


@router.get("/{sku_category:path}", response_model=BanPolicyOut, responses=_PROBLEMS)
def get_ban_policy(
    sku_category: str, principal: Authenticated, svc: Svc, tenant_id: TenantQuery = None,
) -> Any:
    """The policy of `sku_category`; 404 when the tenant has none (no auto-ban)."""
    tenant = _tenant(principal, tenant_id, sku_category)
    policy = _store(svc).ban_policy_get(tenant, sku_category)
    if policy is None:
        raise NotFound("ban policy", sku_category)
    return json_response(ban_policy_json(policy))


@router.put("/{sku_category:path}", response_model=BanPolicyOut,
            responses={201: {"description": "created (200: replaced)", "model": BanPolicyOut},
                       422: _PROBLEMS[422]})
def put_ban_policy(
    sku_category: str, body: BanPolicyIn, request: Request, principal: Writer, svc: Svc,
    tenant_id: TenantQuery = None,
) -> Any:
    """Create (201) or replace (200) the policy of `sku_category`: every field is set, a
    left-out `failure_event_types` is the default rule. It applies from the next failure
    event of an asset of the category: assets are not banned (or unbanned) by it."""
    tenant = owning_tenant(principal, tenant_id, svc.store)
    policy = validate_ban_policy(tenant, sku_category, body.max_failures, body.window_seconds,
                                 body.failure_event_types)
    view = _stored(tenant, sku_category)

    def replaced(store: Any, conn: Any) -> dict[str, Any] | None:
        old = view(store, conn)
        # As the change's transaction sees it (read again if its insert found a row after
        # all): none is a create.
        write.row.action = (AuditAction.CREATED if old is None else AuditAction.UPDATED).value
        return old

    write = audit_write(request, principal, AuditAction.UPDATED, ResourceType.BAN_POLICY,
                        sku_category, old=replaced, new=view, tenant_id=tenant)
    with riding(write):
        saved = _store(svc).ban_policy_set(policy, svc.clock.now())
    if write.row.action != AuditAction.CREATED.value:
        return json_response(ban_policy_json(saved))
    location = f"/v1/ban-policies/{quote(sku_category, safe='')}"
    if principal.is_admin:
        location += f"?tenant_id={quote(tenant, safe='')}"
    return json_response(ban_policy_json(saved), 201, {"Location": location})


@router.delete("/{sku_category:path}", status_code=204, response_class=Response,
               responses={404: _PROBLEMS[404], 422: _PROBLEMS[422]})
def delete_ban_policy(
    sku_category: str, request: Request, principal: Writer, svc: Svc,
    tenant_id: TenantQuery = None,
) -> Response:
    """Stop auto-banning assets of `sku_category`: assets it banned stay BANNED (unban them)
    and their failure events stay in the log. 404 when the tenant has no policy for it."""
    tenant = _tenant(principal, tenant_id, sku_category)
    with riding(audit_write(request, principal, AuditAction.DELETED, ResourceType.BAN_POLICY,
                            sku_category, old=_stored(tenant, sku_category), new=None,
                            tenant_id=tenant)):
        _store(svc).ban_policy_delete(tenant, sku_category)
    return Response(status_code=204)
