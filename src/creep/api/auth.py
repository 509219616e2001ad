"""Authentication: `Authorization: Bearer <key>` -> a typed Principal.

Keys are looked up by their sha256; a verified key is cached for `key_cache_seconds`
(so revocation reaches other API processes within that time; this process forgets at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from creep.api.problems import Problem
from creep.api.services import Services
from creep.domain.tenancy import ApiKey, PrincipalType, Role, hash_key


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: one API key."""

    key_id: str
    name: str
    role: Role
    tenant_id: str | None  # None for admin keys
    read_only: bool
    principal_type: PrincipalType = PrincipalType.SERVICE

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def audit_user(self) -> dict[str, Any]:
        """Seed 003's Principal {uid, username, type}."""
        return {"uid": self.key_id, "username": self.name, "type": self.principal_type.value}

    @classmethod
    def from_key(cls, key: ApiKey) -> Principal:
        return cls(key.key_id, key.name, key.role, key.tenant_id, key.read_only,
                   key.principal_type)


class KeyCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[Principal | None, float]] = {}
        self._lock = threading.Lock()
        #: Revocations seen (forget_key): a lookup that began before one may have read the
        #: revoked key as live, so what it found is not cached.
        self.revocations = 0

    def get(self, key_hash: str) -> tuple[bool, Principal | None]:
        entry = self._entries.get(key_hash)  # one dict read is atomic: no lock (per request)
        if entry is None or entry[1] < time.monotonic():
            return False, None
        return True, entry[0]

    def put(self, key_hash: str, principal: Principal | None, revocations: int) -> None:
        """Cache a lookup begun when `revocations` was the count (skipped if one came since)."""
        if self.ttl <= 0:
            return
        with self._lock:
            if revocations != self.revocations:
                return
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (principal, time.monotonic() + self.ttl)

    def forget_key(self, key_id: str) -> None:
        with self._lock:
            self.revocations += 1
            for h, (p, _) in list(self._entries.items()):
                if p is not None and p.key_id == key_id:
                    del self._entries[h]


_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="creep"'}


def _lookup(svc: Services, key_hash: str) -> Principal | None:
    key = svc.store.key_by_hash(key_hash)
    if key is None or key.revoked_at is not None:
        return None
    return Principal.from_key(key)


_bearer = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <key>")


async def authenticate(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """FastAPI dependency: the caller's Principal, or a 401 problem."""
    return await principal_of(request)


async def principal_of(request: Request, *, write: bool = False) -> Principal:
    """The caller's Principal (401 problem if none; 403 for a read-only key when `write`).
    Call it directly from a hot route that avoids dependency injection."""
    principal = await principal_from_header(
        request.app.state, request.headers.get("authorization", ""), write=write
    )
    request.state.principal = principal
    return principal


async def principal_from_header(state: Any, header: str, *, write: bool = False) -> Principal:
    """principal_of for a route that read the Authorization header itself (`state`: the
    app's state): the same checks, rate limit and answers."""
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Problem(401, "Unauthorized", "send Authorization: Bearer <api key>",
                      type_="unauthorized", headers=_UNAUTHORIZED)
    principal = await _resolve(state, hash_key(secret.strip()))
    if principal is None:
        raise key_refused()
    if principal.tenant_id is not None:  # tenants may have a rate even if the default is off
        await state.rate_limiter.check(principal.tenant_id)
    if write and principal.read_only:
        raise Problem(403, "Forbidden", "this API key is read-only", type_="read-only-key")
    return principal


def key_refused() -> Problem:
    """The 401 for a key that is unknown or revoked."""
    return Problem(401, "Unauthorized", "unknown or revoked API key", type_="unauthorized",
                   headers=_UNAUTHORIZED)


async def _resolve(state: Any, key_hash: str) -> Principal | None:
    """The live key with this hash (None: unknown or revoked), through the key cache."""
    cache: KeyCache = state.key_cache
    hit, principal = cache.get(key_hash)
    if not hit:
        revocations = cache.revocations
        principal = await run_in_threadpool(_lookup, state.services, key_hash)
        cache.put(key_hash, principal, revocations)
    return principal


def key_check(request: Request) -> Callable[[], Awaitable[bool]]:
    """For a route that authenticated once and then runs on (an SSE stream, a claim's long
    poll): a check, to call before each poll or event sent, of whether the request's key
    would still authenticate a new request. It goes through the same key cache (a key
    revoked on this node is forgotten at once; elsewhere within key_cache_seconds) and
    charges no rate limit."""
    _, _, secret = request.headers.get("authorization", "").partition(" ")
    key_hash = hash_key(secret.strip())

    async def still_valid() -> bool:
        return await _resolve(request.app.state, key_hash) is not None

    return still_valid


async def writer(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """FastAPI dependency for mutating routes: read-only keys get 403."""
    if principal.read_only:
        raise Problem(403, "Forbidden", "this API key is read-only", type_="read-only-key")
    return principal


async def admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """FastAPI dependency for admin-only routes."""
    if not principal.is_admin:
        raise Problem(403, "Forbidden", "this route needs an admin key", type_="admin-only")
    return principal


async def admin_writer(principal: Annotated[Principal, Depends(admin)]) -> Principal:
    if principal.read_only:
        raise Problem(403, "Forbidden", "this API key is read-only", type_="read-only-key")
    return principal


Authenticated = Annotated[Principal, Depends(authenticate)]
Writer = Annotated[Principal, Depends(writer)]
Admin = Annotated[Principal, Depends(admin)]
AdminWriter = Annotated[Principal, Depends(admin_writer)]
