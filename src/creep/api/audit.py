"""The audit helper: every mutating request writes one AuditEvent (seed 003) in the same
transaction as its change.

Usage in a route (the store call below commits the change and the audit row together):

    with audited(request, principal, AuditAction.CANCELLED, ResourceType.TASK, task_id,
                 old=task_snapshot(before)):
        task = svc.store.task_cancel(task_id, now, tenant_id=scope)

`new` defaults to a snapshot of the resource read inside that transaction (see
`ports_api.SNAPSHOT_TABLES`); pass `new=` yourself for resources without a snapshot table,
either the image itself or a function `(store, conn) -> image` called inside the
transaction, just before commit (the image of what the change saved). `old` may be such a
function too: a store method that deletes calls it inside its transaction before the delete
(pending_writes.before_change), so the row shows what was deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import Request

from creep.api.auth import Principal
from creep.api.context import current_request_id
from creep.api.services import get_services
from creep.domain.audit import AuditAction, ResourceType, build_diff
from creep.domain.ids import uuid7
from creep.ports_api import AuditRow
from creep.storage import pending_writes


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


#: new=AUTO: snapshot the resource inside the transaction, just before commit.
AUTO: Any = _Auto()


@dataclass(slots=True)
class AuditWrite:
    """A pending audit row; applied by the store right before it commits the change."""

    row: AuditRow
    resource_id: str
    old: Any
    new: Any
    #: With new=AUTO: write nothing when the resource does not exist at commit (e.g. a
    #: create that turned out to replay an existing task).
    skip_if_missing: bool = False
    #: With new=AUTO: write only when this holds for the snapshot (e.g. "created just now").
    only_if: Callable[[dict[str, Any]], bool] | None = None
    written: list[AuditRow] = field(default_factory=list)
    #: A callable `old`'s image, read by before_change (AUTO: not read yet).
    old_image: Any = AUTO

    def before_change(self, store: Any, conn: Any) -> None:
        if callable(self.old):
            self.old_image = self.old(store, conn)

    def apply(self, store: Any, conn: Any) -> bool:
        old = self.old
        if callable(old):  # read before the change, else now
            old = old(store, conn) if self.old_image is AUTO else self.old_image
        new = self.new
        if callable(new):  # an image the caller reads inside the transaction itself
            new = new(store, conn)
        elif new is AUTO:
            new = store._api_snapshot(conn, self.row.resource_type, self.resource_id)
            if new is None and self.skip_if_missing:
                return True
            if new is not None and self.only_if is not None and not self.only_if(new):
                return True
        self.row.diff_object = build_diff(old, new).to_dict()
        store._api_insert_audit(conn, self.row)
        self.written.append(self.row)
        return True


def audit_write(
    request: Request, principal: Principal, action: AuditAction | str,
    resource_type: ResourceType | str, resource_id: str, *, old: Any = None, new: Any = AUTO,
    tenant_id: str | None = None, data: dict[str, str] | None = None,
    resource_data: dict[str, str] | None = None, skip_if_missing: bool = False,
    only_if: Callable[[dict[str, Any]], bool] | None = None,
) -> AuditWrite:
    """Build the audit row of this request (not yet written)."""
    row = audit_row(
        principal, AuditAction(action).value, ResourceType(resource_type).value, resource_id,
        now=get_services(request).clock.now(),
        client_ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"), method=request.method,
        tenant_id=tenant_id, data=data, resource_data=resource_data,
    )
    return AuditWrite(row, resource_id, old, new, skip_if_missing, only_if)


def audit_row(
    principal: Principal, action: str, resource_type: str, resource_id: str, *,
    now: datetime, client_ip: str | None, user_agent: str | None, method: str,
    tenant_id: str | None = None, data: dict[str, str] | None = None,
    resource_data: dict[str, str] | None = None,
) -> AuditRow:
    """One request's audit row from what the request carries (the hot create route reads
    those straight from the ASGI scope)."""
    return AuditRow(
        id=uuid7(),  # time-ordered: appends to the unique index instead of random page writes
        timestamp_ms=int(now.timestamp() * 1000),
        action=action,
        resource_type=resource_type,
        resource={"type": resource_type, "identifier": resource_id, "data": resource_data or {}},
        user=principal.audit_user(),
        tenant_id=tenant_id if tenant_id is not None else principal.tenant_id,
        diff_object={},
        client_ip=client_ip,
        user_agent=user_agent,
        request_method=method,
        request_id=current_request_id(),
        data=data or {},
        created_at=now,
    )


@contextmanager
def audited(
    request: Request, principal: Principal, action: AuditAction | str,
    resource_type: ResourceType | str, resource_id: str, **options: Any,
) -> Iterator[AuditWrite]:
    """Queue this request's audit row for the store's next write transaction in the block."""
    write = audit_write(request, principal, action, resource_type, resource_id, **options)
    with pending_writes.riding(write):
        yield write


@contextmanager
def riding(*writes: pending_writes.PendingWrite) -> Iterator[None]:
    """Several pending writes (audit rows, quota checks, inserts) in one transaction."""
    with pending_writes.riding(*writes):
        yield
