"""Tenants (admin keys only): create, list, read, and change a tenant's name and limits.

A limits change applies at once on the API process that answers it; every other process
reads a tenant's limits again at most TenantLimitsCache.ttl (5 s) after it last did."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from creep.api.audit import audited
from creep.api.auth import Admin, AdminWriter
from creep.api.limits import TenantLimitsCache
from creep.api.responses import decode_cursor, encode_cursor, json_response
from creep.api.schemas import TenantIn, TenantOut, TenantPage, TenantPatch, tenant_json
from creep.api.services import Services, services
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.errors import ValidationError
from creep.domain.tenancy import Tenant

router = APIRouter(prefix="/tenants", tags=["tenants and keys"])
Svc = Annotated[Services, Depends(services)]


@router.post("", status_code=201, response_model=TenantOut,
             responses={409: {"description": "the tenant exists"}})
def create_tenant(body: TenantIn, request: Request, principal: AdminWriter, svc: Svc) -> Any:
    tenant = Tenant(
        tenant_id=body.tenant_id, name=body.name or body.tenant_id,
        rate_limit_per_second=body.rate_limit_per_second,
        rate_limit_burst=body.rate_limit_burst, max_active_tasks=body.max_active_tasks,
        created_at=svc.clock.now(),
    )
    with audited(request, principal, AuditAction.CREATED, ResourceType.TENANT,
                 tenant.tenant_id, tenant_id=tenant.tenant_id):
        svc.store.tenant_create(tenant)
    return json_response(tenant_json(tenant), 201,
                         headers={"Location": f"/v1/tenants/{tenant.tenant_id}"})


@router.get("", response_model=TenantPage)
def list_tenants(
    principal: Admin, svc: Svc,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Any:
    after = decode_cursor(cursor, lambda raw: True) if cursor else None
    items = svc.store.tenant_list(after=after, limit=limit)
    next_cursor = encode_cursor(items[-1].tenant_id) if len(items) == limit else None
    return json_response({"items": [tenant_json(t) for t in items], "next_cursor": next_cursor})


@router.get("/{tenant_id}", response_model=TenantOut)
def get_tenant(tenant_id: str, principal: Admin, svc: Svc) -> Any:
    return json_response(tenant_json(svc.store.tenant_get(tenant_id)))


@router.patch("/{tenant_id}", response_model=TenantOut, responses={
    404: {"description": "no such tenant"},
    422: {"description": "validation failed; `errors` names each field"}})
def update_tenant(
    tenant_id: str, body: TenantPatch, request: Request, principal: AdminWriter, svc: Svc,
) -> Any:
    """Change the fields given: `name`, `rate_limit_per_second`, `rate_limit_burst`,
    `max_active_tasks` (validated as on create; a limit set to null is the server's
    default again). It applies to the tenant's next requests: at once on this server, within
    5 s on every other. Tasks the tenant has stay when its cap is lowered below them; new
    ones are refused until it is under the cap. A change of nothing writes nothing."""
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] is None:
        raise ValidationError.single("name", "must not be null")
    before = svc.store.tenant_get(tenant_id)
    if all(getattr(before, name) == value for name, value in changes.items()):
        return json_response(tenant_json(before))

    def stored(store: Any, conn: Any) -> dict[str, Any] | None:
        image: dict[str, Any] | None = store._api_snapshot(conn, "tenant", tenant_id)
        return image

    with audited(request, principal, AuditAction.UPDATED, ResourceType.TENANT, tenant_id,
                 old=stored, tenant_id=tenant_id):
        tenant = svc.store.tenant_update(tenant_id, changes)
    cache: TenantLimitsCache = request.app.state.tenant_limits
    cache.forget(tenant_id)
    return json_response(tenant_json(tenant))
