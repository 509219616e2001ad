"""Tasks: create (idempotent), list, read, cancel, retry, patch (If-Match), delete and restore
(the recycle bin), events, SSE."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, Header, Query, Request
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from creep.api.audit import AUTO, AuditWrite, audit_row, audited, riding
from creep.api.auth import (
    Authenticated,
    Principal,
    Writer,
    key_check,
    principal_from_header,
)
from creep.api.context import TRACED
from creep.api.create_batcher import CreateBatcher
from creep.api.limits import QuotaCheck, TenantLimits, TenantLimitsCache
from creep.api.preconditions import parse_if_match
from creep.api.problems import Problem, parse_body
from creep.api.responses import (
    RawJSONResponse,
    aware,
    check_event_cursor,
    cursor_named,
    decode_cursor,
    encode_cursor,
    json_response,
    valid_sortable_cursor,
)
from creep.api.schemas import (
    CancelIn,
    TaskEventPage,
    TaskOrderIn,
    TaskOut,
    TaskPage,
    TaskPatch,
    UuidParam,
    event_json,
    task_json,
)
from creep.api.services import Services, services
from creep.api.tenancy import foreign_tenant_filter, list_scope, owning_tenant, read_scope
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.errors import ValidationError, VersionConflict
from creep.domain.task import TaskOrder
from creep.domain.task_spec import Limits, fast_build, fast_check, validate_task_spec
from creep.domain.text import may_hold_wide_int
from creep.engine.worker_protocol import STREAM_END
from creep.ports import TaskFilter
from creep.ports_api import task_snapshot
from creep.storage.common import NOT_NULL_UPDATES

router = APIRouter(prefix="/tasks", tags=["tasks"])
Svc = Annotated[Services, Depends(services)]
StatusName = Literal[
    "PENDING", "QUEUED", "RUNNING", "SUCCESS", "FAILED", "CANCELLED", "TIMEOUT", "DEAD_LETTER"
]
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such task (or not this tenant's)"},
    409: {"description": "conflict (idempotency key reused, illegal transition, a deleted "
                         "task changed, an unfinished task deleted)"},
    422: {"description": "validation failed; `errors` names each field"},
}


def _etag(task: TaskOrder) -> dict[str, str]:
    return {"ETag": f'"{task.task_version}"'}


def quota_check(request: Request, tenant_id: str, task_ids: list[str]) -> list[QuotaCheck]:
    """The pending quota check for new tasks of `tenant_id` (none when no cap applies)."""
    cache: TenantLimitsCache = request.app.state.tenant_limits
    return quota_writes(cache.get(tenant_id), tenant_id, task_ids)


def quota_writes(limits: TenantLimits, tenant_id: str, task_ids: list[str]) -> list[QuotaCheck]:
    """quota_check for limits already read."""
    cap = limits.max_active_tasks
    return [QuotaCheck(tenant_id, cap, task_ids)] if cap > 0 else []


TASK_ORDER_IN: TypeAdapter[TaskOrderIn] = TypeAdapter(TaskOrderIn)


@router.post(
    "", status_code=201, response_model=TaskOut,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/TaskOrderIn"}}}}},
    responses={200: {"model": TaskOut, "description": "a replay: the task this idempotency "
                     "key already created (header Idempotent-Replayed: true)"},
               429: {"description": "rate limit or active-task cap reached"}, **_PROBLEMS},
)
async def create_task(request: Request) -> Any:
    """Create a task order (body: TaskOrderIn). The same (tenant_id, env, idempotency_key)
    and body again answers 200 with the same task; the same key with another body answers 409.

    The hottest route: it takes the Request alone (no dependency injection, which costs more
    than the rest of the route), reads what it needs straight from the ASGI scope and does
    what the dependencies would, in the same order."""
    scope = request.scope
    state = scope["app"].state
    authorization = user_agent = None
    for name, value in scope["headers"]:  # the first of each, as Starlette's Headers.get
        if name == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif name == b"user-agent" and user_agent is None:
            user_agent = value.decode("latin-1")
    principal = await principal_from_header(state, authorization or "", write=True)
    svc: Services = state.services
    raw = await request.body()
    plain = plain_order(raw, svc.limits)
    if plain is None:
        fields, payload_json = parse_body(TASK_ORDER_IN, raw).fields(), None
    else:
        fields, payload_json = plain
    requested = fields.get("tenant_id")
    if principal.is_admin:  # checks the tenant exists: a database read, off the event loop
        tenant_id = await run_in_threadpool(owning_tenant, principal, requested, svc.store)
    else:
        tenant_id = owning_tenant(principal, requested, svc.store)
    fields["tenant_id"] = tenant_id
    now = svc.clock.now()
    traced = scope.get(TRACED)
    if payload_json is not None and type(tenant_id) is str and 0 < len(tenant_id) <= 128 \
            and tenant_id.strip():
        # plain_order checked every field as validate_task_spec's fast path would (the tenant
        # again here, as the key decided it): build the spec without checking twice.
        spec = fast_build(fields, payload_json, svc.limits, traced)
    else:
        spec = validate_task_spec(fields, now=now, limits=svc.limits, traced=traced)
    client = scope.get("client")
    audit = AuditWrite(
        audit_row(principal, _CREATED, _TASK, spec.task_id, now=now,
                  client_ip=client[0] if client else None, user_agent=user_agent,
                  method="POST", tenant_id=spec.tenant_id),
        spec.task_id, None, AUTO, skip_if_missing=True,
    )
    tenant_limits: TenantLimitsCache = state.tenant_limits
    limits = tenant_limits.peek(spec.tenant_id)
    if limits is None:  # not cached: a read
        limits = await run_in_threadpool(tenant_limits.get, spec.tenant_id)
    batcher: CreateBatcher = state.create_batcher
    task = await batcher.create(
        spec, [*quota_writes(limits, spec.tenant_id, [spec.task_id]), audit])
    headers = [(b"etag", b'"%d"' % task.task_version),
               (b"location", f"/v1/tasks/{task.task_id}".encode())]
    body = orjson.dumps(task_json(task))
    if task.replayed:
        headers.append((b"idempotent-replayed", b"true"))
        return RawJSONResponse(body, 200, headers)
    return RawJSONResponse(body, 201, headers)


_CREATED = AuditAction.CREATED.value
_TASK = ResourceType.TASK.value


def plain_order_fields(raw: bytes, limits: Limits) -> dict[str, Any] | None:
    """The fields of a common create body that TaskOrderIn and the domain's fast path both
    accept (see plain_order), or None."""
    plain = plain_order(raw, limits)
    return None if plain is None else plain[0]


def plain_order(raw: bytes, limits: Limits) -> tuple[dict[str, Any], bytes] | None:
    """The fields of a common create body that TaskOrderIn and the domain's fast path both
    accept, parsed without the Pydantic model, with the input payload's JSON (fast_check's
    answer: the spec is then built by fast_build, without checking again). None sends the
    body through TaskOrderIn, which answers anything else as before. A body with a \\u
    escape is left to the model: only an escape can carry NUL or a lone surrogate
    (find_bad_text) into valid JSON; so is one that may hold an integer beyond 64 bits,
    which orjson would read as a float (the model keeps it, and refuses it)."""
    if b"\\u" in raw or may_hold_wide_int(raw):
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or data.get("idempotency_key") == "":  # the model: min 1
        return None
    payload_json = fast_check(data, limits, finite=True)  # orjson refuses NaN, Infinity
    return None if payload_json is None else (data, payload_json)


def _valid_task_cursor(raw: str) -> bool:
    try:
        uuid.UUID(raw.partition("/")[2])
    except ValueError:
        return False
    return valid_sortable_cursor(raw)


@router.get("", response_model=TaskPage, responses={422: _PROBLEMS[422]})
def list_tasks(
    principal: Authenticated, svc: Svc,
    status: StatusName | None = None,
    task_type: Annotated[str | None, Query(max_length=128)] = None,
    task_category: Annotated[str | None, Query(max_length=128)] = None,
    tag: Annotated[str | None, Query(max_length=128)] = None,
    batch_id: Annotated[str | None, Query(max_length=128)] = None,
    project_id: Annotated[str | None, Query(max_length=128)] = None,
    env: Annotated[str | None, Query(max_length=64)] = None,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    deleted: Annotated[bool, Query(description="true: only the deleted tasks (the recycle "
                                   "bin); false (the default): the others")] = False,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    """Newest first; pass `next_cursor` back as `cursor` for the next page. Deleted tasks
    are left out unless `deleted=true`, which lists only them."""
    created_from = aware(created_from, "created_from")
    created_to = aware(created_to, "created_to")
    if foreign_tenant_filter(principal, tenant_id):
        return json_response({"items": [], "next_cursor": None})
    after = decode_cursor(cursor, _valid_task_cursor) if cursor else None
    flt = TaskFilter(
        tenant_id=list_scope(principal, tenant_id), status=status, task_type=task_type,
        task_category=task_category, tag=tag, batch_id=batch_id, project_id=project_id,
        env=env, created_from=created_from, created_to=created_to, deleted=deleted,
    )
    items = svc.store.task_list(flt, after=after, limit=limit)
    next_cursor = (
        encode_cursor(svc.store.list_cursor(items[-1])) if len(items) == limit else None
    )
    return json_response({"items": [task_json(t) for t in items], "next_cursor": next_cursor})


@router.get("/{task_id}", response_model=TaskOut, responses={404: _PROBLEMS[404]})
def get_task(task_id: UuidParam, principal: Authenticated, svc: Svc) -> Any:
    task = svc.store.task_get(task_id, read_scope(principal))
    return json_response(task_json(task), headers=_etag(task))


@router.post("/{task_id}/cancel", response_model=TaskOut, responses=_PROBLEMS)
def cancel_task(
    task_id: UuidParam, request: Request, principal: Writer, svc: Svc,
    body: Annotated[CancelIn | None, Body()] = None,
) -> Any:
    """PENDING/QUEUED end CANCELLED at once; a RUNNING task is asked to stop."""
    scope = read_scope(principal)
    before = svc.store.task_get(task_id, scope)
    with audited(request, principal, AuditAction.CANCELLED, ResourceType.TASK, task_id,
                 old=task_snapshot(before), tenant_id=before.tenant_id):
        task = svc.store.task_cancel(
            task_id, svc.clock.now(), tenant_id=scope, reason=body.reason if body else None
        )
    return json_response(task_json(task), headers=_etag(task))


@router.post("/{task_id}/retry", response_model=TaskOut, responses=_PROBLEMS)
def retry_task(task_id: UuidParam, request: Request, principal: Writer, svc: Svc) -> Any:
    """Queue a DEAD_LETTER, FAILED, TIMEOUT or CANCELLED task again with fresh retries."""
    scope = read_scope(principal)
    before = svc.store.task_get(task_id, scope)
    with riding(*quota_check(request, before.tenant_id, [task_id])), audited(
        request, principal, AuditAction.RETRIED, ResourceType.TASK, task_id,
        old=task_snapshot(before), tenant_id=before.tenant_id,
    ):
        task = svc.store.task_retry(task_id, svc.clock.now(), tenant_id=scope)
    return json_response(task_json(task), headers=_etag(task))


@router.patch(
    "/{task_id}", response_model=TaskOut,
    responses={**_PROBLEMS, 412: {"description": "If-Match names a stale task_version"},
               428: {"description": "If-Match is missing"}},
)
def patch_task(
    task_id: UuidParam, body: TaskPatch, request: Request, principal: Writer, svc: Svc,
    if_match: Annotated[str | None, Header()] = None,
) -> Any:
    """Change fields of a task whose task_version still equals If-Match."""
    expected = parse_if_match(if_match, read_from="GET /v1/tasks/{id}", what="a task_version",
                              field="task_version")
    changes = body.model_dump(exclude_unset=True)
    nulls = [name for name in NOT_NULL_UPDATES if name in changes and changes[name] is None]
    if nulls:
        raise ValidationError([(name, "must not be null") for name in nulls])
    probe = validate_task_spec({"task_type": "X", **changes}, now=svc.clock.now(),
                               limits=svc.limits)
    checked = {name: getattr(probe, name) for name in changes}
    scope = read_scope(principal)
    before = svc.store.task_get(task_id, scope)
    try:
        with audited(request, principal, AuditAction.UPDATED, ResourceType.TASK, task_id,
                     old=task_snapshot(before), tenant_id=before.tenant_id):
            task = svc.store.task_update(
                task_id, expected, checked, svc.clock.now(), tenant_id=scope
            )
    except VersionConflict as exc:
        raise Problem(412, "Precondition failed", exc.message, type_="stale-version",
                      current_version=exc.actual) from None
    return json_response(task_json(task), headers=_etag(task))


_PRECONDITION: dict[int | str, dict[str, Any]] = {
    412: {"description": "If-Match names a stale task_version"}}


def _optional_if_match(if_match: str | None) -> int | None:
    """The task_version an optional If-Match names (None: none given)."""
    if if_match is None:
        return None
    return parse_if_match(if_match, read_from="GET /v1/tasks/{id}", what="a task_version",
                          field="task_version")


@router.delete("/{task_id}", response_model=TaskOut,
               responses={**_PROBLEMS, **_PRECONDITION})
def delete_task(
    task_id: UuidParam, request: Request, principal: Writer, svc: Svc,
    if_match: Annotated[str | None, Header()] = None,
) -> Any:
    """Move a finished task (SUCCESS, FAILED, CANCELLED, TIMEOUT, DEAD_LETTER) to the recycle
    bin: it gets `deleted_at`, leaves the task list (`?deleted=true` lists it) and the task
    counts, and refuses cancel, retry, PATCH, artifact uploads and ledger entries (409
    `task-deleted`) until restored; GET (its events, artifacts and entries) still answers. An
    unfinished task is a 409 `task-not-finished` (cancel it first). A deleted task is
    answered as it is (nothing written). If-Match is optional: given, a stale one is a
    412."""
    return _soft_delete(task_id, request, principal, svc, if_match, delete=True)


@router.post("/{task_id}/restore", response_model=TaskOut,
             responses={**_PROBLEMS, **_PRECONDITION})
def restore_task(
    task_id: UuidParam, request: Request, principal: Writer, svc: Svc,
    if_match: Annotated[str | None, Header()] = None,
) -> Any:
    """Take a deleted task out of the recycle bin (`deleted_at` cleared). A task that is not
    deleted is answered as it is (nothing written). If-Match as for DELETE."""
    return _soft_delete(task_id, request, principal, svc, if_match, delete=False)


def _soft_delete(
    task_id: str, request: Request, principal: Principal, svc: Services,
    if_match: str | None, *, delete: bool,
) -> Any:
    expected = _optional_if_match(if_match)
    scope = read_scope(principal)
    before = svc.store.task_get(task_id, scope)
    action = AuditAction.DELETED if delete else AuditAction.RESTORED
    change = svc.store.task_delete if delete else svc.store.task_restore
    try:
        with audited(request, principal, action, ResourceType.TASK, task_id,
                     old=task_snapshot(before), tenant_id=before.tenant_id):
            task = change(task_id, svc.clock.now(), tenant_id=scope, expected_version=expected)
    except VersionConflict as exc:
        raise Problem(412, "Precondition failed", exc.message, type_="stale-version",
                      current_version=exc.actual) from None
    return json_response(task_json(task), headers=_etag(task))


@router.get("/{task_id}/events", response_model=TaskEventPage, responses={404: _PROBLEMS[404]})
def task_events(
    task_id: UuidParam, principal: Authenticated, svc: Svc,
    after: Annotated[str | None, Query(max_length=64, description="an event cursor")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> Any:
    """The task's events, oldest first; `next_cursor` continues after the last one."""
    scope = read_scope(principal)
    check_event_cursor(after, "after")
    svc.store.task_get(task_id, scope)
    # From the start or after a cursor, `limit` events through the by-task index (a task
    # that logged 100,000 events is not read whole for its first page).
    with cursor_named("after"):
        events = svc.store.task_events_after(after, limit=limit, task_id=task_id,
                                             tenant_id=scope)
    next_cursor = events[-1].cursor if events else after
    return json_response({"items": [event_json(e) for e in events], "next_cursor": next_cursor})


@router.get(
    "/{task_id}/events/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "Server-Sent Events; each `id` is a cursor"},
               404: _PROBLEMS[404]},
)
async def stream_task_events(
    task_id: UuidParam, request: Request, principal: Authenticated, svc: Svc,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> StreamingResponse:
    """Server-Sent Events of one task. Reconnect with `Last-Event-ID` (or `?after=`) to
    resume exactly after the last event received. The stream ends once the task is finished
    and every event was sent, with an `end` event that has no `id` (every task event has
    one)."""
    scope = read_scope(principal)
    await run_in_threadpool(svc.store.task_get, task_id, scope)
    start = check_event_cursor(last_event_id, "Last-Event-ID") or check_event_cursor(
        after, "after")
    # A cursor this store did not issue is a 422 now, not a broken stream later.
    with cursor_named("Last-Event-ID" if last_event_id else "after"):
        first = await run_in_threadpool(
            svc.store.task_events_after, start, limit=500, task_id=task_id, tenant_id=scope
        )
    poll = svc.settings.sse_poll_seconds
    # The key was checked once, above: the stream stops once it would no longer
    # authenticate a new request (revoked), before anything more is sent.
    key_valid = key_check(request)

    async def generate() -> Any:
        cursor = start
        batch = first
        idle = 0.0
        yield "retry: 1000\n\n"
        while True:
            if not await key_valid():
                return
            for event in batch:
                cursor = event.cursor
                data = orjson.dumps(event_json(event)).decode()
                yield f"id: {event.cursor}\nevent: {event.event_type}\ndata: {data}\n\n"
            if not batch:
                task = await run_in_threadpool(svc.store.task_get, task_id, scope)
                if task.is_terminal and not await run_in_threadpool(
                    svc.store.task_has_events_after, cursor, task_id=task_id, tenant_id=scope
                ):
                    # When `end` may be sent: the task is finished and no committed event
                    # of it lies past the cursor sent. Nothing uncommitted can be missed:
                    # every writer of a task's events holds its row lock and is fenced on
                    # its status, so it committed before the finishing transaction (and is
                    # seen here) or found the task finished and wrote nothing. Events
                    # written later (a retry, a PATCH, an artifact removed) are new history:
                    # a client reconnects with Last-Event-ID.
                    if not await key_valid():
                        return
                    # The close has no `id:` line, every task event has one: that, not the
                    # name, tells them apart (a worker could post an event named `end` before
                    # the name was reserved).
                    end = orjson.dumps({"status": task.status}).decode()
                    yield f"event: {STREAM_END}\ndata: {end}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(poll)
                idle += poll
                if idle >= 15:
                    idle = 0.0
                    yield ": keep-alive\n\n"
            else:
                idle = 0.0
            batch = await run_in_threadpool(
                svc.store.task_events_after, cursor, limit=500, task_id=task_id,
                tenant_id=scope,
            )

    return StreamingResponse(
        generate(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
