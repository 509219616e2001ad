"""The ledger: entries (JSON pages or a CSV export), recording revenue, refunds and
adjustments, and cost / revenue / margin summaries grouped by tenant, project, task and
currency."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from creep.api.asset_schemas import (
    LEDGER_CSV_COLUMNS,
    EntryTypeName,
    LedgerEntryIn,
    LedgerEntryOut,
    LedgerPage,
    LedgerSummaryOut,
    ledger_json,
    summary_json,
)
from creep.api.audit import audited
from creep.api.auth import Authenticated, Writer
from creep.api.problems import Problem
from creep.api.responses import (
    aware,
    csv_stream,
    decode_cursor,
    encode_cursor,
    json_response,
    wants_csv,
    written_response,
)
from creep.api.routes.assets import store_of
from creep.api.schemas import UuidParam
from creep.api.services import Services, services
from creep.api.tenancy import foreign_tenant_filter, list_scope, owning_tenant
from creep.asset_api import make_entry
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.errors import NotFound, ValidationError
from creep.domain.ledger import BudgetExceeded
from creep.ports_assets_api import LEDGER_GROUPS, AssetPagesStore, valid_page_cursor

router = APIRouter(prefix="/ledger", tags=["ledger"])
Svc = Annotated[Services, Depends(services)]
EXPORT_PAGE = 1000
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    409: {"description": "the entry would take its task over max_total_cost "
                         "(budget-exceeded), or its entry_id is another entry's "
                         "(idempotency-conflict)"},
    422: {"description": "validation failed; `errors` names each field"},
}


class LedgerPageOut(LedgerPage):
    next_cursor: str | None


@router.get(
    "", response_model=LedgerPageOut,
    responses={200: {"content": {"text/csv": {}},
                     "description": "JSON, or CSV with Accept: text/csv or ?format=csv"},
               422: _PROBLEMS[422]},
)
def list_entries(
    request: Request, principal: Authenticated, svc: Svc,
    project_id: Annotated[str | None, Query(max_length=200)] = None,
    task_id: Annotated[UuidParam | None, Query(max_length=64)] = None,
    entry_type: EntryTypeName | None = None,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[str | None, Query(pattern="^(json|csv)$")] = None,
) -> Any:
    """Entries by occurred_at ([from, to)), then write order: JSON pages (`next_cursor`), or
    every matching entry as CSV. A page reads a bounded number of entries: with project_id
    or entry_type (no index serves them) it may hold fewer than `limit`, even none, and still
    have a `next_cursor`; the list ends where `next_cursor` is null."""
    since, until = aware(from_, "from"), aware(to, "to")
    after = decode_cursor(cursor, valid_page_cursor) if cursor else None
    csv = wants_csv(request, format)
    if foreign_tenant_filter(principal, tenant_id):
        if csv:
            return csv_stream(LEDGER_CSV_COLUMNS, iter(()), "ledger.csv")
        return json_response({"items": [], "next_cursor": None})
    query: dict[str, Any] = dict(
        tenant_id=list_scope(principal, tenant_id), project_id=project_id, task_id=task_id,
        entry_type=entry_type, since=since, until=until,
    )
    store = store_of(svc)
    if csv:
        return csv_stream(LEDGER_CSV_COLUMNS, _every_entry(store, query, after), "ledger.csv")
    page = store.ledger_page(**query, after=after, limit=limit)
    next_cursor = None if page.next_cursor is None else encode_cursor(page.next_cursor)
    return json_response({"items": [ledger_json(e) for _, e in page.items],
                          "next_cursor": next_cursor})


def _every_entry(
    store: AssetPagesStore, query: dict[str, Any], after: str | None
) -> Iterator[dict[str, Any]]:
    while True:
        page = store.ledger_page(**query, after=after, limit=EXPORT_PAGE)
        for _, entry in page.items:
            yield ledger_json(entry)
        if page.next_cursor is None:
            return
        after = page.next_cursor


@router.post(
    "", status_code=201, response_model=LedgerEntryOut,
    responses={200: {"model": LedgerEntryOut, "description": "a replay: the entry this "
                     "entry_id already wrote (header Idempotent-Replayed: true)"},
               **_PROBLEMS},
)
def record_entry(body: LedgerEntryIn, request: Request, principal: Writer, svc: Svc) -> Any:
    """Append a REVENUE, REFUND or ADJUSTMENT (a signed correction of cost). Entries are never
    changed: a mistake is corrected by another entry. With an `entry_id` the client picked,
    the same entry sent again answers 200 with the entry written the first time."""
    tenant = owning_tenant(principal, body.tenant_id, svc.store)
    entry = make_entry(
        svc.clock.now(), entry_type=body.entry_type, amount=body.amount,
        currency=body.currency, tenant_id=tenant, project_id=body.project_id,
        task_id=body.task_id, asset_id=body.asset_id, lease_id=body.lease_id,
        description=body.description, occurred_at=aware(body.occurred_at, "occurred_at"),
        entry_id=body.entry_id,
    )
    try:
        # A replay's transaction rolls back: its audit row is not written.
        with audited(request, principal, AuditAction.CREATED, ResourceType.LEDGER_ENTRY,
                     entry.entry_id, tenant_id=tenant):
            stored, replayed = store_of(svc).ledger_append(
                entry, occurred_given=body.occurred_at is not None)
    except NotFound as exc:
        # Another tenant's task, asset or lease reads exactly like a missing one.
        raise ValidationError.single(f"{exc.kind}_id", f"unknown {exc.kind}") from None
    except BudgetExceeded as exc:
        raise Problem(409, "Budget exceeded", exc.message, type_="budget-exceeded") from None
    return written_response(ledger_json(stored), replayed)


@router.get("/summary", response_model=LedgerSummaryOut, responses={422: _PROBLEMS[422]})
def summary(
    principal: Authenticated, svc: Svc,
    group_by: Annotated[str, Query(max_length=100, description=(
        "comma-separated: tenant_id, project_id, task_id, currency (currency is always "
        "included)"))] = "currency",
    project_id: Annotated[str | None, Query(max_length=200)] = None,
    task_id: Annotated[UuidParam | None, Query(max_length=64)] = None,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
) -> Any:
    """Cost, revenue and margin (revenue - cost) over [from, to) of occurred_at, per group.
    COST, TASK_BURN and ADJUSTMENT add to cost, REFUND lowers it."""
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    bad = [g for g in groups if g not in LEDGER_GROUPS]
    if bad:
        raise ValidationError.single(
            "group_by", f"{', '.join(bad)} not among {', '.join(LEDGER_GROUPS)}")
    ordered = [g for g in LEDGER_GROUPS if g in groups or g == "currency"]
    since, until = aware(from_, "from"), aware(to, "to")
    if foreign_tenant_filter(principal, tenant_id):
        return json_response({"group_by": ordered, "items": []})
    rows = store_of(svc).ledger_summary_grouped(
        ordered, tenant_id=list_scope(principal, tenant_id), project_id=project_id,
        task_id=task_id, since=since, until=until,
    )
    return json_response({"group_by": ordered,
                          "items": [summary_json(label, s) for label, s in rows]})
