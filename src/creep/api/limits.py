"""Per-tenant limits (seed 002): a request-rate token bucket (429 + Retry-After) and a cap on
unfinished (PENDING, QUEUED, RUNNING) tasks. On PostgreSQL both live in the database, so every API process shares
them; on SQLite (one machine) the bucket is kept in this process."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from creep.api.problems import Problem
from creep.api.services import Services
from creep.domain.errors import NotFound
from creep.domain.tenancy import QuotaExceeded


@dataclass(slots=True)
class TenantLimits:
    rate_per_second: float
    burst: int
    max_active_tasks: int


class TenantLimitsCache:
    """Tenants' own limits (overrides of the server defaults), cached briefly: a change made
    through another API process applies here at most `ttl` seconds later; one made through
    this process (PATCH /v1/tenants/{id}) calls `forget`, and applies at once."""

    def __init__(self, svc: Services, ttl: float = 5.0) -> None:
        self.svc = svc
        self.ttl = ttl
        self._cache: dict[str, tuple[TenantLimits, float]] = {}
        self._lock = threading.Lock()
        self._forgotten = 0  # forget() calls so far: a read begun before one is not cached

    def peek(self, tenant_id: str) -> TenantLimits | None:
        """Cached limits, or None (then call `get` off the event loop)."""
        hit = self._cache.get(tenant_id)  # one dict read is atomic: no lock (per request)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def get(self, tenant_id: str) -> TenantLimits:
        cached = self.peek(tenant_id)
        if cached is not None:
            return cached
        forgotten = self._forgotten
        s = self.svc.settings
        limits = TenantLimits(s.rate_limit_per_second, s.rate_limit_burst, s.max_active_tasks)
        try:
            tenant = self.svc.store.tenant_get(tenant_id)
        except NotFound:
            tenant = None
        if tenant is not None:
            if tenant.rate_limit_per_second is not None:
                limits.rate_per_second = tenant.rate_limit_per_second
            if tenant.rate_limit_burst is not None:
                limits.burst = tenant.rate_limit_burst
            if tenant.max_active_tasks is not None:
                limits.max_active_tasks = tenant.max_active_tasks
        with self._lock:
            if self._forgotten == forgotten:  # else it may have read the row before a change
                self._cache[tenant_id] = (limits, time.monotonic() + self.ttl)
        return limits

    def forget(self, tenant_id: str) -> None:
        """Read the tenant's limits again at its next request (they changed)."""
        with self._lock:
            self._forgotten += 1
            self._cache.pop(tenant_id, None)


class RateLimiter:
    def __init__(self, svc: Services, tenants: TenantLimitsCache, *, shared: bool) -> None:
        self.svc = svc
        self.tenants = tenants
        self.shared = shared
        self._local: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.rejected = 0

    def _take_local(self, bucket: str, rate: float, burst: int) -> float:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._local.get(bucket, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._local[bucket] = (tokens - 1.0, now)
                return 0.0
            self._local[bucket] = (tokens, now)
            return (1.0 - tokens) / rate

    def _take(self, tenant_id: str) -> float:
        limits = self.tenants.get(tenant_id)
        if limits.rate_per_second <= 0:
            return 0.0
        if self.shared:
            return self.svc.store.rate_take(
                f"tenant:{tenant_id}", limits.rate_per_second, limits.burst, self.svc.clock.now()
            )
        return self._take_local(tenant_id, limits.rate_per_second, limits.burst)

    async def check(self, tenant_id: str) -> None:
        limits = self.tenants.peek(tenant_id)
        if limits is None:
            limits = await run_in_threadpool(self.tenants.get, tenant_id)
        if limits.rate_per_second <= 0:
            return
        if self.shared:
            wait = await run_in_threadpool(self._take, tenant_id)
        else:
            wait = self._take_local(tenant_id, limits.rate_per_second, limits.burst)
        if wait > 0:
            self.rejected += 1
            raise Problem(
                429, "Too many requests",
                f"tenant {tenant_id!r} is limited to {limits.rate_per_second:g} requests/s "
                f"(burst {limits.burst})",
                type_="rate-limited", headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )


@dataclass(slots=True)
class QuotaCheck:
    """A pending write: refuse the transaction when it leaves the tenant over its cap of
    unfinished tasks (a delayed or dependent PENDING one counts from its creation). Runs after the inserts, before commit, under a per-tenant lock."""

    tenant_id: str
    limit: int
    task_ids: list[str]

    def apply(self, store: Any, conn: Any) -> bool:
        if self.limit <= 0 or not self.task_ids:
            return True
        store._api_lock_tenant(conn, self.tenant_id)
        if not store._api_any_exists(conn, self.task_ids):
            return True  # nothing new (a replay): nothing to refuse
        if store._api_active_tasks(conn, self.tenant_id) > self.limit:
            raise QuotaExceeded(self.tenant_id, self.limit)
        return True
