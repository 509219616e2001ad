"""Tenant scoping: a tenant key sees only its tenant's objects, an admin sees all.

Another tenant's object is reported exactly like a missing one (404, never 403), so neither
existence nor counts leak.
"""

from __future__ import annotations

from creep.api.auth import Principal
from creep.domain.errors import NotFound, ValidationError
from creep.ports_api import ApiStore


def read_scope(principal: Principal) -> str | None:
    """The tenant_id to pass to store reads: the key's tenant, or None (all) for admins."""
    return None if principal.is_admin else principal.tenant_id


def list_scope(principal: Principal, requested: str | None) -> str | None:
    """The tenant filter for a list: tenant keys are pinned to their own tenant whatever
    they ask for (asking for another one yields an empty list, as if it had nothing)."""
    if principal.is_admin:
        return requested
    return principal.tenant_id


def foreign_tenant_filter(principal: Principal, requested: str | None) -> bool:
    """True when a tenant key filters by a tenant other than its own (answer: nothing)."""
    return not principal.is_admin and requested is not None and requested != principal.tenant_id


def owning_tenant(
    principal: Principal, requested: str | None, store: ApiStore, field: str = "tenant_id"
) -> str:
    """The tenant a new object belongs to: a tenant key's own (naming another is an error),
    or the one an admin names (it must exist)."""
    if not principal.is_admin:
        assert principal.tenant_id is not None
        if requested is not None and requested != principal.tenant_id:
            raise ValidationError.single(field, "must be your API key's tenant or omitted")
        return principal.tenant_id
    if requested is None:
        raise ValidationError.single(field, "is required with an admin key")
    try:
        store.tenant_get(requested)
    except NotFound:
        raise ValidationError.single(field, f"unknown tenant {requested!r}") from None
    return requested

