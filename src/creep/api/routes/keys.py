"""API keys (admin keys only): the key itself is in the create response, once."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from creep.api.audit import audited
from creep.api.auth import AdminWriter, KeyCache
from creep.api.responses import json_response
from creep.api.schemas import KeyCreated, KeyIn, KeyOut, UuidParam, key_json
from creep.api.services import Services, services
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.errors import NotFound, ValidationError
from creep.domain.tenancy import ApiKey, PrincipalType, Role, hash_key, new_key_secret

router = APIRouter(prefix="/keys", tags=["tenants and keys"])
Svc = Annotated[Services, Depends(services)]


def make_key(
    name: str, role: Role, tenant_id: str | None, read_only: bool,
    principal_type: PrincipalType, svc: Services,
) -> tuple[ApiKey, str]:
    secret = new_key_secret()
    key = ApiKey(
        key_id=str(uuid.uuid4()), name=name, role=role, tenant_id=tenant_id,
        read_only=read_only, principal_type=principal_type, key_hint=secret[:8],
        created_at=svc.clock.now(), revoked_at=None,
    )
    return key, secret


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(body: KeyIn, request: Request, principal: AdminWriter, svc: Svc) -> Any:
    role = Role(body.role)
    if role is Role.ADMIN and body.tenant_id is not None:
        raise ValidationError.single("tenant_id", "must be omitted for an admin key")
    if role is Role.TENANT:
        if body.tenant_id is None:
            raise ValidationError.single("tenant_id", "is required for a tenant key")
        try:
            svc.store.tenant_get(body.tenant_id)
        except NotFound:
            raise ValidationError.single("tenant_id", f"unknown tenant {body.tenant_id!r}") from None
    key, secret = make_key(body.name, role, body.tenant_id, body.read_only,
                           PrincipalType(body.principal_type), svc)
    with audited(request, principal, AuditAction.CREATED, ResourceType.API_KEY, key.key_id,
                 tenant_id=key.tenant_id):
        svc.store.key_create(key, hash_key(secret))
    return json_response({**key_json(key), "key": secret}, 201)


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(key_id: UuidParam, request: Request, principal: AdminWriter, svc: Svc) -> Any:
    before = svc.store.key_get(key_id)
    old = svc.store.snapshot(ResourceType.API_KEY, key_id)
    with audited(request, principal, AuditAction.REVOKED, ResourceType.API_KEY, key_id,
                 old=old, tenant_id=before.tenant_id):
        key = svc.store.key_revoke(key_id, svc.clock.now())
    cache: KeyCache = request.app.state.key_cache
    cache.forget_key(key_id)
    return json_response(key_json(key))
