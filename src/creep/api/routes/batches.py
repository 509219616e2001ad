"""Batches (seed 004): many tasks in one request, with local `ref` dependencies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from creep.api.audit import audit_write, audited, riding
from creep.api.auth import Authenticated, Writer
from creep.api.responses import (
    decode_cursor,
    encode_cursor,
    json_response,
    valid_sortable_cursor,
)
from creep.api.routes.tasks import quota_check
from creep.api.schemas import BatchIn, BatchOut, UuidParam, batch_json
from creep.api.services import Services, services
from creep.api.tenancy import owning_tenant, read_scope
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.batch import Batch, derive_counts
from creep.domain.dag import topological_order
from creep.domain.errors import ConflictError, ValidationError
from creep.domain.ids import is_uuid
from creep.domain.task import TaskOrder
from creep.domain.task_spec import TaskSpec, request_fingerprint, validate_task_spec
from creep.domain.text import find_bad_json

router = APIRouter(prefix="/batches", tags=["batches"])
Svc = Annotated[Services, Depends(services)]


@dataclass(slots=True)
class BatchInsert:
    """A pending write: the batch row, in the transaction that creates its tasks. The batch
    is all new or all a replay: when only some of its idempotency keys named tasks that
    exist already (those stay in their own batch, or in none), the transaction is refused
    whole, so no batch is left counting tasks it does not hold."""

    batch: Batch

    def apply(self, store: Any, conn: Any) -> bool:
        created = store._api_batch_task_count(conn, self.batch.batch_id)
        if created == 0:
            return True  # every task replays: the route answers with their batch (or 409)
        if created != self.batch.total_count:
            raise ConflictError(
                "some of these idempotency keys name tasks that exist already (of another "
                "batch, or of none) and some are new: send that batch's body again, or new "
                "keys for every task")
        store._api_insert_batch(conn, self.batch)
        return True


def _plan(body: BatchIn, tenant_id: str, batch_id: str, svc: Services) -> list[TaskSpec]:
    """Validate every task; turn local refs into task ids; reject cycles (naming them)."""
    errors: list[tuple[str, str]] = []
    ids: dict[str, str] = {}
    names: list[str] = []
    for i, task in enumerate(body.tasks):
        name = task.ref or f"#{i}"
        if task.ref is not None and task.ref in ids:
            errors.append((f"tasks[{i}].ref", f"duplicate ref {task.ref!r}"))
        task_id = str(task.task_id) if task.task_id else str(uuid.uuid4())
        ids.setdefault(name, task_id)
        names.append(name)
    edges: dict[str, list[str]] = {}
    deps_by_task: list[list[str]] = []
    for i, task in enumerate(body.tasks):
        deps: list[str] = []
        local: list[str] = []
        for j, dep in enumerate(task.depends_on or []):
            if dep in ids:
                deps.append(ids[dep])
                local.append(dep)
            elif is_uuid(dep):
                deps.append(str(uuid.UUID(dep)))
            else:
                errors.append((f"tasks[{i}].depends_on[{j}]",
                               f"{dep!r} is neither a ref in this batch nor a task id"))
        edges[names[i]] = local
        deps_by_task.append(deps)
    if errors:
        raise ValidationError(errors)
    try:
        topological_order(edges)
    except ValidationError as exc:
        raise ValidationError([("tasks", rule) for _, rule in exc.errors]) from None
    specs: list[TaskSpec] = []
    now = svc.clock.now()
    for i, task in enumerate(body.tasks):
        fields = task.fields()
        if fields.get("tenant_id") not in (None, tenant_id):
            errors.append((f"tasks[{i}].tenant_id", "must be the batch's tenant or omitted"))
            continue
        fields.setdefault("channel", "batch")
        # The idempotency fingerprint is of the order as sent (refs, not the ids drawn for
        # them; no batch_id): the same batch sent again replays instead of conflicting.
        sent = {**fields, "tenant_id": tenant_id, "ref": task.ref}
        fields.update(tenant_id=tenant_id, batch_id=batch_id, task_id=ids[names[i]],
                      depends_on=deps_by_task[i])
        try:
            spec = validate_task_spec(fields, now=now, limits=svc.limits,
                                      prefix=f"tasks[{i}].")
        except ValidationError as exc:
            errors.extend(exc.errors)
            continue
        spec.request_hash = request_fingerprint(sent)
        spec.sent = None  # of refs: re-binding to a replayed task leaves it as it is
        spec.given_id = task.task_id is not None  # else drawn above
        specs.append(spec)
    if errors:
        raise ValidationError(errors)
    return specs


def _batch_body(svc: Services, batch: Batch, refs: list[dict[str, Any]] | None = None) -> Any:
    counts = derive_counts(svc.store.batch_task_counts(batch.batch_id, batch.tenant_id),
                           batch.cancelled_at is not None)
    return batch_json(batch, counts, refs)


@router.post("", status_code=201, response_model=BatchOut,
             responses={422: {"description": "a task is invalid or the refs form a cycle"}})
def create_batch(body: BatchIn, request: Request, principal: Writer, svc: Svc) -> Any:
    """Create a batch and its tasks in one transaction. Tasks name each other in
    `depends_on` by `ref` (or name existing tasks by id)."""
    tenant_id = owning_tenant(principal, body.tenant_id, svc.store)
    if (found := find_bad_json(body.metadata, "metadata")) is not None:
        raise ValidationError([found])
    batch_id = str(uuid.uuid4())
    specs = _plan(body, tenant_id, batch_id, svc)
    now = svc.clock.now()
    # The tasks the batch holds: an idempotency key given twice in it names one task.
    total = len({(s.env, s.idempotency_key) for s in specs})
    batch = Batch(batch_id=batch_id, tenant_id=tenant_id, title=body.title,
                  metadata=body.metadata, total_count=total, created_at=now,
                  updated_at=now, cancelled_at=None)
    audit = audit_write(request, principal, AuditAction.CREATED, ResourceType.BATCH, batch_id,
                        tenant_id=tenant_id, data={"task_count": str(total)},
                        skip_if_missing=True)  # a batch all of whose tasks replay
    with riding(*quota_check(request, tenant_id, [s.task_id for s in specs]),
                BatchInsert(batch), audit):
        tasks = svc.store.task_create_many(specs, now)
    refs = [{"ref": t.ref, "task_id": task.task_id} for t, task in zip(body.tasks, tasks, strict=True)]
    if all(t.replayed for t in tasks):
        original = _replayed_batch(svc, body, tasks, tenant_id)
        return json_response(_batch_body(svc, original, refs), 200, headers={
            "Location": f"/v1/batches/{original.batch_id}", "Idempotent-Replayed": "true"})
    return json_response(_batch_body(svc, batch, refs), 201,
                         headers={"Location": f"/v1/batches/{batch_id}"})


def _replayed_batch(svc: Services, body: BatchIn, tasks: list[TaskOrder], tenant_id: str) -> Batch:
    """The batch a request replays: every task's idempotency key named a task of it, and
    its title and metadata are the same."""
    batch_ids = {t.batch_id for t in tasks}
    original = None
    if len(batch_ids) == 1 and (batch_id := batch_ids.pop()) is not None:
        original = svc.store.batch_get(batch_id, tenant_id)
    if original is None or (original.title, original.metadata) != (body.title, body.metadata):
        raise ConflictError("these idempotency keys name tasks of another batch (or of none): "
                            "send that batch's body again, or new keys")
    return original


class BatchPage(BaseModel):
    items: list[BatchOut]
    next_cursor: str | None


@router.get("", response_model=BatchPage)
def list_batches(
    principal: Authenticated, svc: Svc,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Any:
    after = decode_cursor(cursor, valid_sortable_cursor) if cursor else None
    items = svc.store.batch_list(read_scope(principal), after=after, limit=limit)
    next_cursor = encode_cursor(svc.store.batch_cursor(items[-1])) if len(items) == limit else None
    return json_response({"items": [_batch_body(svc, b) for b in items],
                          "next_cursor": next_cursor})


@router.get("/{batch_id}", response_model=BatchOut, responses={404: {"description": "no such batch"}})
def get_batch(batch_id: UuidParam, principal: Authenticated, svc: Svc) -> Any:
    """Counts, progress and the status derived from the batch's tasks."""
    return json_response(_batch_body(svc, svc.store.batch_get(batch_id, read_scope(principal))))


@router.post("/{batch_id}/cancel", response_model=BatchOut,
             responses={404: {"description": "no such batch"}})
def cancel_batch(batch_id: UuidParam, request: Request, principal: Writer, svc: Svc) -> Any:
    """Cancel the batch: in one transaction, every PENDING or QUEUED task of it becomes
    CANCELLED (with its dependants) and every RUNNING one is asked to stop; all or nothing."""
    scope = read_scope(principal)
    before = svc.store.batch_get(batch_id, scope)
    old = svc.store.snapshot(ResourceType.BATCH, batch_id)
    with audited(request, principal, AuditAction.CANCELLED, ResourceType.BATCH, batch_id,
                 old=old, tenant_id=before.tenant_id):
        batch, _ = svc.store.batch_cancel(batch_id, svc.clock.now(), scope)
    return json_response(_batch_body(svc, batch))
