"""Schedules (seed 003): CRUD, a manual trigger and the execution history.

Every read happens before the audited block: on PostgreSQL a schedule read is a transaction
too, and the audit row must ride the one transaction that makes the change."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response

from creep.api.audit import audited
from creep.api.auth import Authenticated, Writer
from creep.api.preconditions import parse_if_match
from creep.api.problems import Problem
from creep.api.responses import aware, decode_cursor, encode_cursor, json_response
from creep.api.schedule_schemas import (
    ExecutionOut,
    ExecutionPage,
    ExecutionStateName,
    ScheduleIn,
    ScheduleOut,
    SchedulePage,
    SchedulePatch,
    execution_json,
    schedule_json,
)
from creep.api.services import Services, services
from creep.api.tenancy import foreign_tenant_filter, list_scope, owning_tenant, read_scope
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.errors import ValidationError, VersionConflict
from creep.domain.execution import (
    ExecutionFilter,
    execution_cursor,
    parse_execution_cursor,
)
from creep.domain.schedule import (
    Firing,
    ScheduledTask,
    changes_timing,
    validate_schedule,
)
from creep.engine.scheduler import fire_manually
from creep.schedule_port import ScheduleStore

router = APIRouter(prefix="/schedules", tags=["schedules"])
Svc = Annotated[Services, Depends(services)]
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such schedule (or not this tenant's)"},
    409: {"description": "a schedule with this name exists already in the tenant"},
    422: {"description": "validation failed; `errors` names each field"},
}


def _store(svc: Services) -> ScheduleStore:
    return cast(ScheduleStore, svc.store)


def _etag(sched: ScheduledTask) -> dict[str, str]:
    return {"ETag": f'"{sched.version}"'}


def _audit_view(sched: ScheduledTask) -> dict[str, Any]:
    return schedule_json(sched)


def _saved_view(uid: str) -> Callable[[Any, Any], dict[str, Any] | None]:
    """The audit image of the schedule as saved, read inside the saving (or, for a delete,
    deleting) transaction: an update that keeps the timing keeps the stored next_run, which
    the leader may have moved (and the statistics with it) since the request read the
    schedule."""

    def view(store: Any, conn: Any) -> dict[str, Any] | None:
        saved = cast(ScheduleStore, store).schedule_in_transaction(conn, uid)
        return None if saved is None else _audit_view(saved)

    return view


@router.post("", status_code=201, response_model=ScheduleOut, responses=_PROBLEMS)
def create_schedule(body: ScheduleIn, request: Request, principal: Writer, svc: Svc) -> Any:
    """Create a schedule; its next_run is computed from cron_expr / interval / next_run."""
    store = _store(svc)
    fields = body.fields()
    fields["tenant_id"] = owning_tenant(principal, body.tenant_id, svc.store)
    sched = validate_schedule(fields, now=svc.clock.now(), limits=svc.limits)
    with audited(request, principal, AuditAction.CREATED, ResourceType.SCHEDULED_TASK,
                 sched.uid, new=_audit_view(sched), tenant_id=sched.tenant_id):
        created = store.schedule_create(sched)
    headers = {**_etag(created), "Location": f"/v1/schedules/{created.uid}"}
    return json_response(schedule_json(created), 201, headers)


@router.get("", response_model=SchedulePage, responses={422: _PROBLEMS[422]})
def list_schedules(
    principal: Authenticated, svc: Svc,
    enabled: bool | None = None,
    task_type: Annotated[str | None, Query(alias="type", max_length=255)] = None,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> Any:
    """Schedules ordered by tenant and name."""
    if foreign_tenant_filter(principal, tenant_id):
        return json_response({"items": []})
    items = _store(svc).schedule_list(
        tenant_id=list_scope(principal, tenant_id), enabled=enabled, type=task_type, limit=limit
    )
    return json_response({"items": [schedule_json(s) for s in items]})


@router.get("/{uid}", response_model=ScheduleOut, responses={404: _PROBLEMS[404]})
def get_schedule(uid: str, principal: Authenticated, svc: Svc) -> Any:
    """By uid (a tenant key may also name its own schedule by name)."""
    sched = _store(svc).schedule_get(uid, read_scope(principal))
    return json_response(schedule_json(sched), headers=_etag(sched))




@router.patch(
    "/{uid}", response_model=ScheduleOut,
    responses={**_PROBLEMS, 412: {"description": "If-Match names a stale version"},
               428: {"description": "If-Match is missing"}},
)
def patch_schedule(
    uid: str, body: SchedulePatch, request: Request, principal: Writer, svc: Svc,
    if_match: Annotated[str | None, Header()] = None,
) -> Any:
    """Change fields of a schedule whose version still equals If-Match."""
    expected = parse_if_match(if_match, read_from="GET /v1/schedules/{uid}", what="a schedule version")
    store = _store(svc)
    current = store.schedule_get(uid, read_scope(principal))
    if current.version != expected:
        raise Problem(412, "Precondition failed",
                      f"schedule {current.uid} is at version {current.version}, not {expected}",
                      type_="stale-version", current_version=current.version)
    changes = body.fields()
    updated = validate_schedule(changes, now=svc.clock.now(), existing=current, limits=svc.limits)
    try:
        with audited(request, principal, AuditAction.UPDATED, ResourceType.SCHEDULED_TASK,
                     current.uid, old=_audit_view(current), new=_saved_view(current.uid),
                     tenant_id=current.tenant_id):
            saved = store.schedule_save(
                updated, expected, timing=changes_timing(changes, current, updated))
    except VersionConflict as exc:
        raise Problem(412, "Precondition failed", exc.message, type_="stale-version",
                      current_version=exc.actual) from None
    return json_response(schedule_json(saved), headers=_etag(saved))


@router.delete("/{uid}", status_code=204, response_class=Response,
               responses={404: _PROBLEMS[404]})
def delete_schedule(uid: str, request: Request, principal: Writer, svc: Svc) -> Response:
    """Delete a schedule; its execution history stays until retention removes it."""
    store = _store(svc)
    scope = read_scope(principal)
    current = store.schedule_get(uid, scope)
    with audited(request, principal, AuditAction.DELETED, ResourceType.SCHEDULED_TASK,
                 current.uid, old=_saved_view(current.uid), new=None,
                 tenant_id=current.tenant_id):
        store.schedule_delete(current.uid, scope)
    return Response(status_code=204)


@router.post("/{uid}/trigger", status_code=201, response_model=ExecutionOut,
             responses={404: _PROBLEMS[404]})
def trigger_schedule(uid: str, request: Request, principal: Writer, svc: Svc) -> Any:
    """Fire the schedule now: an execution with trigger_type `manual` and trigger_by the
    caller's key id, and its task. max_concurrent still applies: beyond it the execution is
    recorded `cancelled` with the reason (and no task is created)."""
    store = _store(svc)

    def audit(sched: ScheduledTask, firing: Firing, now: datetime) -> AbstractContextManager[Any]:
        view = {"execution_uid": firing.execution_uid, "task_id": firing.task_id,
                "trigger_type": "manual", "trigger_by": principal.key_id,
                "scheduled_at": now.isoformat()}
        return audited(request, principal, AuditAction.TRIGGERED, ResourceType.SCHEDULED_TASK,
                       sched.uid, new=view, tenant_id=sched.tenant_id,
                       resource_data={"execution_uid": firing.execution_uid})

    # A built-in job unknown to the server (no retention jobs of its own): a 422.
    done = fire_manually(store, uid, tenant_id=read_scope(principal),
                         trigger_by=principal.key_id, clock=svc.clock, limits=svc.limits,
                         jobs={}, around=audit)
    return json_response(execution_json(done), 201,
                         {"Location": f"/v1/schedules/{done.task_uid}/executions"})


def _valid_execution_cursor(raw: str) -> bool:
    try:
        parse_execution_cursor(raw)
    except ValidationError:
        return False
    return True


@router.get("/{uid}/executions", response_model=ExecutionPage,
            responses={404: _PROBLEMS[404], 422: _PROBLEMS[422]})
def list_executions(
    uid: str, principal: Authenticated, svc: Svc,
    state: ExecutionStateName | None = None,
    trigger_type: Literal["scheduled", "manual"] | None = None,
    started_from: datetime | None = None,
    started_to: datetime | None = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Any:
    """The schedule's executions, newest first; pass `next_cursor` back as `cursor`."""
    started_from = aware(started_from, "started_from")
    started_to = aware(started_to, "started_to")
    before = decode_cursor(cursor, _valid_execution_cursor) if cursor else None
    store = _store(svc)
    scope = read_scope(principal)
    sched = store.schedule_get(uid, scope)
    flt = ExecutionFilter(
        tenant_id=sched.tenant_id, task_uid=sched.uid, state=state, trigger_type=trigger_type,
        started_from=started_from, started_to=started_to,
    )
    items = store.execution_list(flt, limit=limit, before=before)
    next_cursor = (
        encode_cursor(execution_cursor(items[-1])) if len(items) == limit else None
    )
    return json_response({"items": [execution_json(e) for e in items],
                          "next_cursor": next_cursor})
