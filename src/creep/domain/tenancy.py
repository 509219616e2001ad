"""Tenants and API keys: who may call the REST API, and for which tenant."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from creep.domain.errors import CreepError

#: Every key starts with this, so a leaked one is easy to recognise (and to grep for).
KEY_PREFIX = "crp_"


class Role(StrEnum):
    ADMIN = "admin"  # all tenants, tenant and key management, audit
    TENANT = "tenant"  # its own tenant's objects only


class PrincipalType(StrEnum):
    """Seed 003's Principal.type."""

    USER = "user"
    SERVICE = "service"
    ANONYMOUS = "anonymous"


@dataclass(slots=True)
class Tenant:
    tenant_id: str
    name: str
    #: Per-tenant overrides of the server-wide limits (None: the server default).
    rate_limit_per_second: float | None
    rate_limit_burst: int | None
    max_active_tasks: int | None
    created_at: datetime


#: The fields of a tenant an update may set (PATCH /v1/tenants/{id}).
TENANT_CHANGEABLE = frozenset(
    {"name", "rate_limit_per_second", "rate_limit_burst", "max_active_tasks"})


@dataclass(slots=True)
class ApiKey:
    """A stored key: only the sha256 of the secret is kept."""

    key_id: str
    name: str
    role: Role
    tenant_id: str | None
    read_only: bool
    principal_type: PrincipalType
    key_hint: str  # the first characters of the key, to tell keys apart in listings
    created_at: datetime
    revoked_at: datetime | None


class QuotaExceeded(CreepError):
    """The tenant has as many unfinished (pending, queued or running) tasks as it may."""

    def __init__(self, tenant_id: str, limit: int) -> None:
        self.tenant_id = tenant_id
        self.limit = limit
        super().__init__(
            f"tenant {tenant_id!r} may have at most {limit} unfinished (pending, queued or "
            "running) tasks"
        )


def new_key_secret() -> str:
    """A fresh API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    """Keys are random and long, so one fast hash is enough (no salt/stretching needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()
