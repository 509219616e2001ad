"""Probes and metrics (no authentication): /health/live, /health/ready, /metrics (an admin
key with CREEP_METRICS_REQUIRE_KEY)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from creep.api.auth import principal_of
from creep.api.problems import Problem
from creep.api.responses import json_response
from creep.api.services import Services, services
from creep.domain.errors import SchemaTooNew
from creep.storage.common import schema_mismatch

router = APIRouter(tags=["operations"])
Svc = Annotated[Services, Depends(services)]


class Live(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    schema_version: int
    #: Set when a newer creep migrated the database after this process started: it goes on
    #: serving (migrations keep running processes working) until it is replaced.
    warning: str | None = None


@router.get("/health/live", response_model=Live)
async def live() -> Any:
    """The process is up and serving."""
    return json_response({"status": "ok"})


@router.get(
    "/health/ready", response_model=Ready,
    responses={503: {"description": "database unreachable or schema older than this creep"}},
)
async def ready(svc: Svc) -> Any:
    """The database answers (within ready_timeout_seconds) and its schema is current, or
    newer: a rolling deploy runs `creep migrate` before it replaces the processes, and the
    old ones must stay in their load balancers' rotation until then."""
    timeout = svc.settings.ready_timeout_seconds
    try:
        version = await asyncio.wait_for(
            run_in_threadpool(svc.store.ping, timeout), timeout=timeout + 0.5
        )
    except TimeoutError:
        raise Problem(503, "Not ready", f"the database did not answer within {timeout:g} s",
                      type_="not-ready") from None
    except Exception as exc:
        raise Problem(503, "Not ready", f"the database is not reachable: {exc}",
                      type_="not-ready") from None
    problem = schema_mismatch(version, svc.store.dialect)
    if isinstance(problem, SchemaTooNew):
        return json_response(
            {"status": "ready", "schema_version": version, "warning": problem.message})
    if problem is not None:
        raise Problem(503, "Not ready", problem.message, type_="not-ready")
    return json_response({"status": "ready", "schema_version": version})


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format. With CREEP_METRICS_REQUIRE_KEY, for an admin key only (the
    numbers are every tenant's): Prometheus sends it as `authorization: {credentials: ...}`."""
    if request.app.state.services.settings.metrics_require_key:
        principal = await principal_of(request)
        if not principal.is_admin:
            raise Problem(403, "Forbidden", "/metrics needs an admin key", type_="admin-only")
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
