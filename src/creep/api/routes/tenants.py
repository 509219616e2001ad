"""Tenants (admin keys only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from creep.api.audit import audited
from creep.api.auth import Admin, AdminWriter
from creep.api.responses import decode_cursor, encode_cursor, json_response
from creep.api.schemas import TenantIn, TenantOut, TenantPage, tenant_json
from creep.api.services import Services, services
from creep.domain.audit import AuditAction, ResourceType
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
