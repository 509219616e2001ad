"""Asset events (seed 001): the timeline by correlation_id / asset / task (JSON or CSV),
reporting an event, and an event's causation chain up to its root."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from creep.api.asset_schemas import (
    EVENT_CSV_COLUMNS,
    AssetEventIn,
    AssetEventPage,
    ReportedEventOut,
    TimeOrder,
    asset_event_json,
)
from creep.api.audit import AuditWrite, audit_write, riding
from creep.api.auth import Authenticated, Principal, Writer
from creep.api.responses import (
    csv_stream,
    decode_ordered_cursor,
    encode_ordered_cursor,
    json_response,
    wants_csv,
    written_response,
)
from creep.api.routes.assets import store_of
from creep.api.schemas import UuidParam
from creep.api.services import Services, services
from creep.api.tenancy import foreign_tenant_filter, list_scope, owning_tenant, read_scope
from creep.domain.asset import AssetStatus
from creep.domain.asset_event import validate_reported_event
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.ids import canonical_uuid, uuid7
from creep.ports_assets_api import AssetPagesStore, valid_page_cursor

router = APIRouter(prefix="/events", tags=["asset events"])
Svc = Annotated[Services, Depends(services)]
EXPORT_PAGE = 1000
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such event/asset/task (or not this tenant's)"},
    422: {"description": "validation failed; `errors` names each field"},
}


class AssetEventPageOut(AssetEventPage):
    next_cursor: str | None


@router.get(
    "", response_model=AssetEventPageOut,
    responses={200: {"content": {"text/csv": {}},
                     "description": "JSON, or CSV with Accept: text/csv or ?format=csv"},
               422: _PROBLEMS[422]},
)
def list_events(
    request: Request, principal: Authenticated, svc: Svc,
    correlation_id: Annotated[str | None, Query(max_length=200)] = None,
    asset_id: Annotated[UuidParam | None, Query(max_length=64)] = None,
    task_id: Annotated[UuidParam | None, Query(max_length=64)] = None,
    event_type: Annotated[str | None, Query(max_length=100)] = None,
    tenant_id: Annotated[str | None, Query(max_length=128)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[str | None, Query(pattern="^(json|csv)$")] = None,
    order: Annotated[TimeOrder, Query(
        description="`oldest` first (the default) or `newest` first")] = "oldest",
) -> Any:
    """Events in time order (occurred_at, then write order), oldest or newest first: one
    correlation_id's timeline, an asset's or a task's. JSON pages (`next_cursor`, which
    continues in the same order), or every matching event as CSV."""
    tag = "newest" if order == "newest" else None
    after = decode_ordered_cursor(cursor, valid_page_cursor, tag) if cursor else None
    csv = wants_csv(request, format)
    if foreign_tenant_filter(principal, tenant_id):
        if csv:
            return csv_stream(EVENT_CSV_COLUMNS, iter(()), "asset-events.csv")
        return json_response({"items": [], "next_cursor": None})
    store = store_of(svc)
    query: dict[str, Any] = dict(
        tenant_id=list_scope(principal, tenant_id), asset_id=asset_id, task_id=task_id,
        correlation_id=correlation_id, event_type=event_type, newest_first=tag is not None,
    )
    if csv:
        return csv_stream(EVENT_CSV_COLUMNS, _every_event(store, query, after),
                          "asset-events.csv")
    page = store.asset_events_page(**query, after=after, limit=limit)
    next_cursor = encode_ordered_cursor(page[-1][0], tag) if len(page) == limit else None
    return json_response({"items": [asset_event_json(e) for _, e in page],
                          "next_cursor": next_cursor})


def _every_event(
    store: AssetPagesStore, query: dict[str, Any], after: str | None
) -> Iterator[dict[str, Any]]:
    """Page through every matching event (each page one short read)."""
    while True:
        page = store.asset_events_page(**query, after=after, limit=EXPORT_PAGE)
        for _, event in page:
            yield asset_event_json(event)
        if len(page) < EXPORT_PAGE:
            return
        after = page[-1][0]


@router.post("", status_code=201, response_model=ReportedEventOut, responses={
    **_PROBLEMS,
    200: {"model": ReportedEventOut, "description": "a replay: what this event_id's first "
          "report answered (header Idempotent-Replayed: true)"},
    409: {"description": "old_status is not the asset's status (nothing stored), new_status "
          "is an illegal transition from it, or event_id names another event"}})
def report_event(body: AssetEventIn, request: Request, principal: Writer, svc: Svc) -> Any:
    """Record an event about an asset from outside a task (e.g. a provider's webhook). A
    new_status other than the asset's status is applied as an operator's change would be (a
    ban revokes its leases), and the asset's auto-ban policy applies, in the same
    transaction: `caused` lists what followed (e.g. BANNED or ASSET_BANNED with causation_id
    = this event, then LEASE_REVOKED); that change is audited on the asset as an operator's
    of its kind would be (e.g. `banned`). Sent again with its `event_id`, the first report's
    answer (200, nothing written)."""
    tenant = owning_tenant(principal, body.tenant_id, svc.store)
    fields = validate_reported_event(body.fields())
    fields["event_id"] = event_id = fields.get("event_id") or _event_id()
    store = store_of(svc)
    audits: list[Any] = [audit_write(
        request, principal, AuditAction.REPORTED, ResourceType.ASSET_EVENT, event_id,
        tenant_id=tenant, resource_data={"asset_id": str(fields["asset_id"])})]
    if fields.get("new_status") is not None:
        audits.append(_reported_change_audit(request, principal, svc, event_id,
                                             canonical_uuid(str(fields["asset_id"])), tenant))
    with riding(*audits):
        events, replayed = store.asset_event_report_or_replay(
            fields, svc.clock.now(), tenant_id=tenant)
    return written_response({"event": asset_event_json(events[0]),
                             "caused": [asset_event_json(e) for e in events[1:]]}, replayed,
                            {"Location": f"/v1/events/{events[0].event_id}/chain"})


def _event_id() -> str:
    return uuid7()


def _operator_action(old: str, new: str) -> AuditAction:
    """The action an operator's change from `old` to `new` audits: its own route's (ban,
    unban, archive), else PATCH's `updated`."""
    if new == AssetStatus.BANNED:
        return AuditAction.BANNED
    if new == AssetStatus.ARCHIVED:
        return AuditAction.ARCHIVED
    if (old, new) == (AssetStatus.BANNED, AssetStatus.READY):
        return AuditAction.UNBANNED
    return AuditAction.UPDATED


@dataclass(slots=True)
class ReportedChangeAudit:
    """The asset's audit row for the status change a reported event applied, as an
    operator's change of that kind is audited (its data names the report). Whether the
    status changed, and from what, is known only in the report's transaction: the event's
    stored old_status and new_status say it (equal: nothing changed, no row)."""

    event_id: str
    #: The asset's row, written with the action the change turned out to be.
    make: Callable[[AuditAction, dict[str, str]], AuditWrite]

    def apply(self, store: Any, conn: Any) -> bool:
        event = store._api_snapshot(conn, ResourceType.ASSET_EVENT.value, self.event_id)
        if event is None or event["old_status"] == event["new_status"]:
            return True
        data = {"reported_event_id": self.event_id, "event_type": str(event["event_type"]),
                "source": str(event["source"])}
        if event["message"]:
            data["reason"] = str(event["message"])
        action = _operator_action(event["old_status"], event["new_status"])
        return self.make(action, data).apply(store, conn)


def _reported_change_audit(
    request: Request, principal: Principal, svc: Services, event_id: str, asset_id: str,
    tenant: str,
) -> ReportedChangeAudit:
    # The asset as it is before the report (read as a batch cancel's is); None if there is
    # none, and then the report is refused and writes nothing anyway.
    old = svc.store.snapshot(ResourceType.ASSET, asset_id)

    def make(action: AuditAction, data: dict[str, str]) -> AuditWrite:
        return audit_write(request, principal, action, ResourceType.ASSET, asset_id, old=old,
                           tenant_id=tenant, data=data)

    return ReportedChangeAudit(event_id, make)


@router.get("/{event_id}/chain", response_model=AssetEventPage,
            responses={404: _PROBLEMS[404]})
def event_chain(event_id: UuidParam, principal: Authenticated, svc: Svc) -> Any:
    """The event, then what caused it, and so on up to the root (causation_id null)."""
    chain = store_of(svc).asset_event_chain(event_id, read_scope(principal))
    return json_response({"items": [asset_event_json(e) for e in chain]})
