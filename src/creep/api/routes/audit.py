"""The audit log (seed 003), admin keys only: filters, cursor pagination, CSV export."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from creep.api.auth import Admin
from creep.api.responses import aware, csv_stream, json_response, wants_csv
from creep.api.schemas import AuditOut, AuditPage, UuidParam, audit_json
from creep.api.services import Services, services
from creep.domain.audit import AuditAction, ResourceType
from creep.ports_api import AuditFilter

router = APIRouter(prefix="/audit", tags=["audit"])
Svc = Annotated[Services, Depends(services)]
CSV_COLUMNS = list(AuditOut.model_fields)


@router.get(
    "", response_model=AuditPage,
    responses={200: {"content": {"text/csv": {}},
                     "description": "JSON by default; CSV with Accept: text/csv or ?format=csv "
                     "(then every matching row, streamed)"}},
)
def list_audit(
    request: Request, principal: Admin, svc: Svc,
    # Seed 003's enums (with creep's additions): a value outside them is a 422, not no rows.
    resource_type: ResourceType | None = None,
    action: AuditAction | None = None,
    principal_id: Annotated[UuidParam | None, Query(alias="principal", max_length=255,
                                              description="a key id")] = None,
    resource_id: Annotated[str | None, Query(max_length=255)] = None,
    request_id: Annotated[str | None, Query(max_length=128)] = None,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    time_from: Annotated[datetime | None, Query(alias="from")] = None,
    time_to: Annotated[datetime | None, Query(alias="to")] = None,
    cursor: Annotated[str | None, Query(max_length=32, pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[str | None, Query(pattern="^(json|csv)$")] = None,
) -> Any:
    """Newest first. `next_cursor` continues with older events."""
    time_from = aware(time_from, "from")
    time_to = aware(time_to, "to")
    flt = AuditFilter(
        resource_type=None if resource_type is None else resource_type.value,
        action=None if action is None else action.value, principal=principal_id,
        resource_id=resource_id, request_id=request_id, tenant_id=tenant_id,
        time_from=time_from, time_to=time_to,
    )
    after = int(cursor) if cursor else None
    if wants_csv(request, format):

        def rows() -> Iterator[dict[str, Any]]:
            position = after
            while True:
                page = svc.store.audit_list(flt, after=position, limit=1000)
                yield from (audit_json(a) for a in page)
                if len(page) < 1000:
                    return
                position = page[-1].seq

        return csv_stream(CSV_COLUMNS, rows(), "audit.csv")
    items = svc.store.audit_list(flt, after=after, limit=limit)
    next_cursor = str(items[-1].seq) if len(items) == limit else None
    return json_response({"items": [audit_json(a) for a in items], "next_cursor": next_cursor})
