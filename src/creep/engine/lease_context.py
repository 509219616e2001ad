"""What a handler can do with its leases and money: charge, earn, report asset events."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from creep.asset_api import make_entry
from creep.domain.asset_event import AssetEvent, AssetEventType, validate_reported_event
from creep.domain.ids import uuid7
from creep.domain.lease import Lease
from creep.domain.ledger import LedgerEntry

if TYPE_CHECKING:
    from creep.domain.task import TaskOrder
    from creep.engine.context import TaskContext
    from creep.engine.worker import Worker


class LeaseContextMixin:
    if TYPE_CHECKING:  # TaskContext decodes its task on first read

        @property
        def task(self) -> TaskOrder: ...

    claim_token: str
    revoked_lease_ids: list[str]
    _worker: Worker

    async def _store(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # A store that may refuse a call unwritten (HTTP: 429) is waited out, not raised.
        return await self._worker.call_resending(functools.partial(fn, *args, **kwargs))

    @property
    def lease_ids(self) -> list[str]:
        return list(self.task.lease_ids)

    async def leases(self) -> list[Lease]:
        """The leases this run of the task holds (or held: a ban REVOKES them)."""
        all_leases: list[Lease] = await self._store(
            self._worker.store.lease_list, task_id=self.task.task_id,
            tenant_id=self.task.tenant_id,
        )
        return [x for x in all_leases if x.claim_token == self.claim_token]

    async def charge(
        self, amount: Decimal | int | str, currency: str | None = None, *,
        asset_id: str | None = None, lease_id: str | None = None,
        description: str | None = None, entry_id: str | None = None,
    ) -> LedgerEntry:
        """Record a COST for this task. Over max_total_cost it raises BudgetExceeded, which,
        left uncaught, ends the task FAILED with result_code BUDGET_EXCEEDED. `entry_id` (a
        UUID the handler picks, e.g. one per spend kept in the task's payload) records it
        once however often the handler runs: the same charge again returns the entry
        written then (even by an earlier run), another one under that id raises IdTaken."""
        return await self._money("COST", amount, currency, asset_id, lease_id, description,
                                 entry_id)

    async def earn(
        self, amount: Decimal | int | str, currency: str | None = None, *,
        asset_id: str | None = None, lease_id: str | None = None,
        description: str | None = None, entry_id: str | None = None,
    ) -> LedgerEntry:
        """Record REVENUE for this task (`entry_id`: as for charge)."""
        return await self._money("REVENUE", amount, currency, asset_id, lease_id, description,
                                 entry_id)

    async def _money(
        self, entry_type: str, amount: Any, currency: str | None, asset_id: str | None,
        lease_id: str | None, description: str | None, entry_id: str | None,
    ) -> LedgerEntry:
        t = self.task
        entry = make_entry(
            self._worker.clock.now(), entry_type=entry_type, amount=amount,
            currency=currency or t.currency, tenant_id=t.tenant_id, project_id=t.project_id,
            task_id=t.task_id, asset_id=asset_id, lease_id=lease_id, description=description,
            occurred_at=None, entry_id=entry_id,
        )
        result: LedgerEntry = await self._store(
            self._worker.store.ledger_record, entry, claim_token=self.claim_token)
        return result

    async def report_event(self, event_type: str, **fields: Any) -> AssetEvent:
        """Report what happened to a leased asset (seed 001 fields: http_status, latency_ms,
        provider_status, error_code, retryable, context, ...). asset_id may be left out when
        the task holds one lease. A `new_status` other than the asset's status is applied
        (as report_asset_event says: new_status="BANNED" bans it, revoking every lease on
        it), then the auto-ban policy; this run's leases a ban revoked land in
        `revoked_lease_ids` at once (the handler goes on), other handlers learn of theirs on
        their next heartbeat."""
        checked = validate_reported_event({"event_type": event_type, **fields})
        # Its id now, once: an HTTP worker sends it again with it, which the server writes once.
        checked["event_id"] = checked["event_id"] or uuid7()
        events: list[AssetEvent] = await self._store(
            self._worker.store.asset_event_report, checked, self._worker.clock.now(),
            tenant_id=self.task.tenant_id, task_id=self.task.task_id,
            claim_token=self.claim_token,
        )
        for e in events[1:]:
            if e.event_type == AssetEventType.LEASE_REVOKED and e.task_id == self.task.task_id:
                self.revoked_lease_ids.append(e.lease_id or "")
        return events[0]


class SyncLeaseContextMixin:
    """The same calls for plain (sync) handlers, blocking."""

    _inner: TaskContext

    def _call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        raise NotImplementedError

    @property
    def lease_ids(self) -> list[str]:
        return list(self._inner.lease_ids)

    @property
    def revoked_lease_ids(self) -> list[str]:
        return list(self._inner.revoked_lease_ids)

    def leases(self) -> list[Lease]:
        return self._call(self._inner.leases)  # type: ignore[no-any-return]

    def charge(self, amount: Decimal | int | str, currency: str | None = None,
               **kwargs: Any) -> LedgerEntry:
        return self._call(lambda: self._inner.charge(amount, currency, **kwargs))  # type: ignore[no-any-return]

    def earn(self, amount: Decimal | int | str, currency: str | None = None,
             **kwargs: Any) -> LedgerEntry:
        return self._call(lambda: self._inner.earn(amount, currency, **kwargs))  # type: ignore[no-any-return]

    def report_event(self, event_type: str, **fields: Any) -> AssetEvent:
        return self._call(lambda: self._inner.report_event(event_type, **fields))  # type: ignore[no-any-return]

