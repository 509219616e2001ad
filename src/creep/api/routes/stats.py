"""For the dashboard: task counts by status and the queue depth in one query (a page of tasks
cannot tell how many there are), and `whoami`, the key a request signed in with."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from creep.api.auth import Authenticated
from creep.api.responses import json_response
from creep.api.services import Services, services
from creep.api.tenancy import foreign_tenant_filter, list_scope
from creep.domain.task import TaskStatus

router = APIRouter(prefix="/stats", tags=["stats"])
Svc = Annotated[Services, Depends(services)]


class TaskStats(BaseModel):
    tenant_id: str | None
    by_status: dict[str, int]
    total: int
    queue_depth: int


@router.get("/tasks", response_model=TaskStats)
def task_stats(
    principal: Authenticated, svc: Svc,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    deleted: Annotated[bool, Query(description="true: count the deleted tasks (the recycle "
                                   "bin); false (the default): the others")] = False,
) -> Any:
    """How many tasks are in each status (every status listed, zeros included) and how many
    wait in the queue (QUEUED). A tenant key counts its own tenant's tasks only. Deleted
    tasks are counted as GET /v1/tasks lists them: left out unless `deleted=true`, which
    counts only them."""
    foreign = foreign_tenant_filter(principal, tenant_id)
    # Another tenant's counts are none of a tenant key's business: zeros, of that tenant
    # (not of its own, which would then read as empty).
    scope = tenant_id if foreign else list_scope(principal, tenant_id)
    counts = {} if foreign else svc.store.task_status_counts(scope, deleted=deleted)
    by_status = {s.value: counts.get(s.value, 0) for s in TaskStatus}
    return json_response({
        "tenant_id": scope, "by_status": by_status, "total": sum(by_status.values()),
        "queue_depth": by_status[TaskStatus.QUEUED.value],
    })


class WhoAmI(BaseModel):
    key_id: str
    name: str
    role: str
    tenant_id: str | None
    read_only: bool


whoami_router = APIRouter(tags=["stats"])


@whoami_router.get("/whoami", response_model=WhoAmI)
def whoami(principal: Authenticated) -> Any:
    """The key this request authenticated with (the dashboard's sign-in checks it)."""
    return json_response({
        "key_id": principal.key_id, "name": principal.name, "role": principal.role.value,
        "tenant_id": principal.tenant_id, "read_only": principal.read_only,
    })
