"""The HTTP worker protocol, for workers in any language: claim (long poll), heartbeat,
progress, complete, fail and task events, and a handler's ledger entries, asset events and
leases. Every call on a task names the claim token the claim returned; a token the task no
longer holds answers 409."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from creep.api.asset_schemas import (
    LeasePage,
    LedgerEntryOut,
    ReportedEventOut,
    asset_event_json,
    lease_json,
    ledger_json,
)
from creep.api.audit import audit_write, audited, riding
from creep.api.auth import Principal, Writer, key_check, key_refused
from creep.api.problems import Problem
from creep.api.responses import json_response, written_response
from creep.api.schemas import TaskEventOut, TaskOut, UuidParam, event_json, task_json
from creep.api.schemas_workers import (
    FAIL_ONLY,
    ClaimIn,
    ClaimOut,
    ClaimTokenIn,
    CompleteIn,
    CompleteManyIn,
    CompleteManyOut,
    FailIn,
    HeartbeatIn,
    HeartbeatManyIn,
    HeartbeatManyOut,
    HeartbeatOut,
    OutcomeIn,
    ProgressIn,
    ProgressOut,
    WorkerAssetEventIn,
    WorkerEventIn,
    WorkerLedgerIn,
)
from creep.api.services import Services
from creep.api.tenancy import read_scope
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.errors import ValidationError
from creep.domain.ledger import BudgetExceeded
from creep.domain.outcomes import Outcome, OutcomeKind
from creep.engine.worker_protocol import (
    WorkerProtocol,
    complete_outcome,
    fail_outcome,
    validate_claim,
)
from creep.ports import Completion

router = APIRouter(tags=["workers"])
_lock = threading.Lock()
_FENCED: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such task (or not this tenant's)"},
    409: {"description": "the claim token is stale: the task is no longer this claim's"},
    422: {"description": "validation failed; `errors` names each field"},
}


def worker_protocol(request: Request) -> WorkerProtocol:
    """FastAPI dependency: the app's WorkerProtocol (made on first use)."""
    state = request.app.state
    svc: Services = state.services
    with _lock:
        proto: WorkerProtocol | None = getattr(state, "worker_protocol", None)
        if proto is None or proto.store is not svc.store:
            proto = WorkerProtocol(svc.store, svc.clock,
                                   poll_interval=svc.settings.claim_poll_seconds)
            state.worker_protocol = proto
    return proto


Proto = Annotated[WorkerProtocol, Depends(worker_protocol)]


def _worker_id(principal: Principal, given: str | None) -> str:
    return given or f"api-key:{principal.key_id}"


def _claimed_json(items: list[Any]) -> dict[str, Any]:
    return {"items": [
        {"task": task_json(c.task), "claim_token": c.claim_token,
         "deadline_at": c.deadline_at.isoformat()}
        for c in items
    ]}


@router.post("/workers/claim", response_model=ClaimOut,
             responses={422: _FENCED[422]})
async def claim(body: ClaimIn, request: Request, principal: Writer, proto: Proto) -> Any:
    """Claim up to `max_tasks` runnable tasks of `task_types` (priority desc, created_at).
    With `wait`, an empty queue is watched up to that many seconds before answering with
    no items. A tenant key claims only its tenant's tasks. With `claim_id`, the same
    request sent again (`resend`) answers what it claimed (those of its tasks that still run under that
    token, for this worker_id and tenant) instead of claiming more: a claim_id claims once,
    however its sends interleave."""
    req = validate_claim(_worker_id(principal, body.worker_id), body.task_types,
                         body.max_tasks, body.wait, body.claim_ttl, body.claim_id,
                         body.resend)
    key_valid = key_check(request)
    revoked = False

    async def gone() -> bool:
        # A long poll outlives the key check above: a key revoked meanwhile claims nothing
        # more (what a poll claimed for it is given back, as for a client that left).
        nonlocal revoked
        revoked = revoked or not await key_valid()
        return revoked or await request.is_disconnected()

    claimed = await proto.claim(req, read_scope(principal), gone)
    if revoked:
        raise key_refused()
    return json_response(_claimed_json(claimed))


@router.post("/tasks/{task_id}/heartbeat", response_model=HeartbeatOut, responses=_FENCED)
def heartbeat(task_id: UuidParam, body: HeartbeatIn, principal: Writer, proto: Proto) -> Any:
    """Renew the claim for `claim_ttl` seconds; answers whether cancellation was requested
    and which leases of the claim were revoked (stop, then /fail kind=retry code
    LEASE_REVOKED)."""
    beat = proto.heartbeat(task_id, body.claim_token, read_scope(principal),
                           worker_id=_worker_id(principal, body.worker_id),
                           claim_ttl=body.claim_ttl)
    return json_response({"cancel_requested": beat.cancel_requested,
                          "revoked_lease_ids": beat.revoked_lease_ids})


@router.post("/tasks/{task_id}/progress", response_model=ProgressOut, responses=_FENCED)
def progress(task_id: UuidParam, body: ProgressIn, principal: Writer, proto: Proto) -> Any:
    """Record progress (0-100) and a message; a `progress` task event."""
    proto.progress(task_id, body.claim_token, read_scope(principal), body.progress,
                   body.message)
    return json_response({"task_id": task_id, "progress": body.progress})


def _ended_at(now: datetime) -> Callable[[dict[str, Any]], bool]:
    """The audit row's condition: the task was ended by this request's write (at `now`); a
    stale token changes nothing and writes no audit row."""
    return lambda snap: bool(snap["updated_at"] == now and snap["status"] != "RUNNING")


def _finish(
    request: Request, principal: Principal, proto: WorkerProtocol, completion: Completion,
    action: AuditAction,
) -> Any:
    task_id = completion.outcome.task_id
    now = proto.clock.now()
    # The audit row rides on the one write transaction.
    with audited(request, principal, action, ResourceType.TASK, task_id,
                 skip_if_missing=True, only_if=_ended_at(now)):
        proto.apply(completion, now)
    return json_response(task_json(proto.store.task_get(task_id)))


@router.post("/tasks/{task_id}/complete", response_model=TaskOut, responses=_FENCED)
def complete(
    task_id: UuidParam, body: CompleteIn, request: Request, principal: Writer, proto: Proto
) -> Any:
    """The task succeeded with `result` (its result_payload)."""
    completion = proto.prepare_complete(task_id, body.claim_token, read_scope(principal),
                                        body.result, body.message)
    return _finish(request, principal, proto, completion, AuditAction.COMPLETED)


@router.post("/tasks/{task_id}/fail", response_model=TaskOut, responses=_FENCED)
def fail(task_id: UuidParam, body: FailIn, request: Request, principal: Writer, proto: Proto) -> Any:
    """The run did not succeed: retry with backoff, fail for good, time out, cancel, or
    give the task back (see `kind`)."""
    completion = proto.prepare_fail(
        task_id, body.claim_token, read_scope(principal), kind=body.kind, code=body.code,
        message=body.message, error=body.error, retry_delay=body.retry_delay,
    )
    return _finish(request, principal, proto, completion, AuditAction.FAILED)


# -- batches: one request per heartbeat round and per batch of results -------------------------


@router.post("/workers/heartbeat", response_model=HeartbeatManyOut,
             responses={422: _FENCED[422]})
def heartbeat_many(body: HeartbeatManyIn, principal: Writer, proto: Proto) -> Any:
    """/tasks/{id}/heartbeat for many claims: one answer per claim. `held` false is that
    route's 404/409: the claim is lost (or the task is not this tenant's), drop the task."""
    beats = proto.heartbeat_many(
        [(c.task_id, c.claim_token) for c in body.claims], read_scope(principal),
        worker_id=_worker_id(principal, body.worker_id), claim_ttl=body.claim_ttl,
    )
    return json_response({"items": [
        {"task_id": b.task_id, "held": b.held, "cancel_requested": b.cancel_requested,
         "revoked_lease_ids": b.revoked_lease_ids}
        for b in beats
    ]})


@router.post("/workers/complete", response_model=CompleteManyOut,
             responses={422: _FENCED[422]})
def complete_many(
    body: CompleteManyIn, request: Request, principal: Writer, proto: Proto
) -> Any:
    """/tasks/{id}/complete and /fail for many tasks, written in one transaction (audited as
    those routes are). `applied` false is their 409: the token is stale, nothing written for
    that item. A request with an invalid item writes nothing (422 naming `items[i].field`)."""
    outcomes = _outcomes(body.items)
    completions = proto.prepare_many(outcomes, read_scope(principal))
    now = proto.clock.now()
    audits = [
        audit_write(request, principal,
                    AuditAction.COMPLETED if c.outcome.kind is OutcomeKind.SUCCEEDED
                    else AuditAction.FAILED,
                    ResourceType.TASK, c.outcome.task_id, skip_if_missing=True,
                    only_if=_ended_at(now))
        for c in completions
    ]
    with riding(*audits):
        applied = proto.apply_many(completions, now)
    return json_response({"items": [{"task_id": o.task_id, "applied": o.task_id in applied}
                                    for o in outcomes]})


def _outcomes(items: list[OutcomeIn]) -> list[Outcome]:
    """Every item's outcome, or a 422 naming each invalid item's fields."""
    outcomes: list[Outcome] = []
    errors: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        given = item.model_fields_set
        try:
            if item.outcome == "complete":
                wrong = [name for name in FAIL_ONLY if name in given]
                if wrong:
                    raise ValidationError([(name, "only with outcome fail") for name in wrong])
                outcomes.append(complete_outcome(item.task_id, item.claim_token, item.result,
                                                 item.message))
            else:
                if "result" in given:
                    raise ValidationError.single("result", "only with outcome complete")
                outcomes.append(fail_outcome(
                    item.task_id, item.claim_token, kind=item.kind, code=item.code,
                    message=item.message, error=item.error, retry_delay=item.retry_delay))
        except ValidationError as exc:
            errors += [(f"items[{i}].{name}", rule) for name, rule in exc.errors]
    if errors:
        raise ValidationError(errors)
    return outcomes


@router.post("/tasks/{task_id}/events", status_code=201, response_model=TaskEventOut,
             responses=_FENCED)
def add_event(task_id: UuidParam, body: WorkerEventIn, principal: Writer, proto: Proto) -> Any:
    """Append a worker's own event (e.g. a log line) to the task's event stream. Not
    deduplicated: sent again (after a lost answer), it is written again."""
    event = proto.add_event(task_id, body.claim_token, read_scope(principal), body.event_type,
                            body.payload)
    return json_response(event_json(event), 201)


# -- a handler's lease context on a remote worker (ctx.charge/earn/report_event/leases) --------


@router.post("/tasks/{task_id}/ledger", status_code=201, response_model=LedgerEntryOut,
             responses={**_FENCED,
                        200: {"model": LedgerEntryOut, "description": "a replay: the entry "
                              "this entry_id already wrote (header Idempotent-Replayed: true)"},
                        409: {"description": "the claim token is stale, or "
                                             "(type budget-exceeded) the cost would "
                                             "exceed max_total_cost"}})
def record_money(task_id: UuidParam, body: WorkerLedgerIn, principal: Writer, proto: Proto) -> Any:
    """A COST (ctx.charge) or REVENUE (ctx.earn) of the task this claim runs, in its
    currency; a cost over the task's max_total_cost is refused and writes nothing. Sent
    again with its `entry_id`, the entry written the first time is the answer (200, as
    POST /v1/ledger answers a replay)."""
    try:
        entry, replayed = proto.record_money(
            task_id, body.claim_token, read_scope(principal), entry_type=body.entry_type,
            amount=body.amount, currency=body.currency, asset_id=body.asset_id,
            lease_id=body.lease_id, description=body.description, entry_id=body.entry_id,
        )
    except BudgetExceeded as exc:
        raise Problem(409, "Budget exceeded", exc.message, type_="budget-exceeded") from None
    return written_response(ledger_json(entry), replayed)


@router.post("/tasks/{task_id}/asset-events", status_code=201,
             response_model=ReportedEventOut, responses={
                 **_FENCED, 200: {"model": ReportedEventOut, "description": "a replay: what "
                                  "this event_id's first report answered (header "
                                  "Idempotent-Replayed: true)"}})
def report_asset_event(
    task_id: UuidParam, body: WorkerAssetEventIn, principal: Writer, proto: Proto
) -> Any:
    """An event about an asset the claim leased (ctx.report_event). A new_status other than
    the asset's is applied (as on POST /v1/events) and the auto-ban policy applies at once:
    `caused` lists what followed, e.g. BANNED, then LEASE_REVOKED of this task's lease. Sent
    again with its `event_id`, the first report's answer (200)."""
    if body.tenant_id is not None:
        raise ValidationError.single("tenant_id", "is the task's: leave it out")
    events, replayed = proto.report_asset_event(task_id, body.claim_token,
                                                read_scope(principal), body.fields())
    return written_response({"event": asset_event_json(events[0]),
                             "caused": [asset_event_json(e) for e in events[1:]]}, replayed)


@router.post("/tasks/{task_id}/leases", response_model=LeasePage,
             responses={404: _FENCED[404], 422: _FENCED[422]})
def claim_leases(task_id: UuidParam, body: ClaimTokenIn, principal: Writer, proto: Proto) -> Any:
    """The leases this claim holds or held (ctx.leases(); a revoked one too)."""
    leases = proto.claim_leases(task_id, body.claim_token, read_scope(principal))
    return json_response({"items": [lease_json(x) for x in leases]})
