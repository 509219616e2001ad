"""The app factory: `create_app(settings)` wires the store, auth, problems, metrics and every
router; all resource routes live under /v1."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from fastapi import APIRouter, FastAPI
from fastapi.responses import ORJSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from creep.api import problems
from creep.api.auth import KeyCache
from creep.api.context import RequestContextMiddleware
from creep.api.create_batcher import CreateBatcher
from creep.api.limits import RateLimiter, TenantLimitsCache
from creep.api.metrics import Metrics
from creep.api.openapi import install_openapi
from creep.api.routes import (  # issue 5 item 7
    admin,
    artifacts,
    asset_events,
    assets,
    audit,
    ban_policies,
    batches,
    health,
    keys,
    ledger,
    schedules,
    stats,
    tasks,
    tenants,
    workers,
)
from creep.api.services import Services
from creep.api.settings import Settings
from creep.domain.clock import Clock, SystemClock
from creep.domain.tenancy import ApiKey, PrincipalType, Role, hash_key
from creep.engine.maintainer import Maintainer
from creep.gc_tuning import settle_long_lived
from creep.ports_api import ApiStore
from creep.ui import mount_dashboard

log = logging.getLogger("creep.api")

#: Routers mounted under /v1, in the order they appear in the docs. Add yours here.
V1_ROUTERS: list[APIRouter] = [
    tasks.router, batches.router, tenants.router, keys.router, audit.router, admin.router,
    artifacts.router, workers.router,  # artifacts and the HTTP worker protocol (api2)
    schedules.router, assets.router, ban_policies.router, asset_events.router, ledger.router,
    stats.router, stats.whoami_router,  # counts and the signed-in key, for the dashboard
]


def ensure_admin_key(store: ApiStore, secret: str, clock: Clock) -> None:
    """Make CREEP_ADMIN_KEY a valid admin key (idempotent; safe from many nodes at once)."""
    key = ApiKey(
        key_id=str(uuid.uuid4()), name="bootstrap (CREEP_ADMIN_KEY)", role=Role.ADMIN,
        tenant_id=None, read_only=False, principal_type=PrincipalType.SERVICE,
        key_hint=secret[:8], created_at=clock.now(), revoked_at=None,
    )
    stored, created = store.key_ensure(key, hash_key(secret))
    if created:
        log.info("created the admin key from CREEP_ADMIN_KEY", extra={"key_id": stored.key_id})
    elif stored.revoked_at is not None:
        log.warning("CREEP_ADMIN_KEY names a revoked key; it will not authenticate",
                    extra={"key_id": stored.key_id})


class CreepApp(FastAPI):
    """FastAPI, except that the fast routes (fast_routes.py) skip Starlette's outer layers
    (server-error and exception middleware, FastAPI's telemetry hooks): they run through the
    app's own middleware alone, whose RequestContextMiddleware answers them (500 problems
    included)."""

    fast_paths: frozenset[tuple[str, str]] = frozenset()
    _fast_stack: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in self.fast_paths:
            if self._fast_stack is None:
                self._fast_stack = self._build_fast_stack()
            scope["app"] = self
            await self._fast_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _build_fast_stack(self) -> ASGIApp:
        async def unreachable(scope: Scope, receive: Receive, send: Send) -> None:
            raise RuntimeError("a fast route reached the end of the middleware")

        app: ASGIApp = unreachable
        for middleware in reversed(self.user_middleware):
            app = middleware.cls(app, *middleware.args, **middleware.kwargs)
        return app


def create_app(
    settings: Settings, *, store: ApiStore | None = None, clock: Clock | None = None,
    settle_heap: bool = False,
) -> FastAPI:
    """A FastAPI app for `settings`. The store opens (and migrates, if auto_migrate) at
    startup, not here; pass `store` to share one you opened yourself. `settle_heap`: once
    started, tune the garbage collector for a long-running server process (`creep server`
    does; gc_tuning.settle_long_lived)."""
    clock = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from creep.storage import open_store, require_current_schema

        opened = store is None
        the_store = store or cast(ApiStore, open_store(settings.database_url))
        try:
            if settings.auto_migrate:
                the_store.migrate()
            else:  # checked once: a schema this creep does not know is not served
                require_current_schema(the_store)
            if settings.admin_key:
                ensure_admin_key(the_store, settings.admin_key, clock)
            svc = Services(settings=settings, store=the_store, clock=clock)
            app.state.services = svc
            app.state.key_cache = KeyCache(settings.key_cache_seconds)
            app.state.tenant_limits = TenantLimitsCache(svc)
            # Buckets live in the database when several processes serve: PostgreSQL (any
            # number of nodes) or SQLite with --workers > 1; one process keeps them in memory.
            app.state.rate_limiter = RateLimiter(
                svc, app.state.tenant_limits,
                shared=the_store.dialect == "postgres" or settings.workers > 1,
            )
            app.state.metrics = Metrics(the_store, settings.metrics_cache_seconds,
                                        rate_limited=lambda: app.state.rate_limiter.rejected,
                                        max_task_types=settings.metrics_max_task_types,
                                        max_currencies=settings.metrics_max_currencies)
            app.state.create_batcher = CreateBatcher(svc)
            # Rescue expired claims, time out overdue tasks (HTTP workers cannot): api2.
            maintainer = None
            if settings.maintenance_interval_seconds > 0:
                maintainer = Maintainer(the_store, clock,
                                        interval=settings.maintenance_interval_seconds)
                maintainer.start()
            if settle_heap:
                settle_long_lived()
            try:
                yield
            finally:
                if maintainer is not None:
                    maintainer.stop()
                await app.state.create_batcher.aclose()
        finally:
            if opened:
                the_store.close()

    app = CreepApp(
        title="creep",
        version="1",
        summary="A durable task control plane: tasks, batches, tenants, keys and audit.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    problems.install(app)
    install_openapi(app)

    def on_done(method: str, route: str, status: int, seconds: float) -> None:
        metrics: Metrics | None = getattr(app.state, "metrics", None)
        if metrics is not None:
            metrics.observe_request(method, route, status, seconds)

    # POST /v1/tasks is answered by the middleware itself (see fast_routes.py).
    fast = {("POST", "/v1/tasks"): tasks.create_task}
    app.add_middleware(RequestContextMiddleware, on_done=on_done, fast=fast,
                       max_body=settings.max_request_bytes)
    app.fast_paths = frozenset(fast)
    app.include_router(health.router)
    v1 = APIRouter(prefix="/v1")
    for router in V1_ROUTERS:
        v1.include_router(router)
    app.include_router(v1)
    mount_dashboard(app)
    return app
