"""LedgerEntry (S-03): append-only money, exact decimals, corrections only by new entries."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from creep.domain.outcomes import Fail
from creep.domain.task import ResultCode

#: What TaskDeleted says a task in the recycle bin cannot be until restored (its entries are
#: still listed and summed).
LEDGER_ENTRY_ADDED = "given a ledger entry"


class EntryType(StrEnum):
    COST = "COST"
    REVENUE = "REVENUE"
    REFUND = "REFUND"  # money given back to us: lowers a task's cost
    TASK_BURN = "TASK_BURN"  # cost burnt by a task that produced nothing (e.g. a ban)
    ADJUSTMENT = "ADJUSTMENT"  # a signed correction of cost


@dataclass(slots=True)
class LedgerEntry:
    entry_id: str
    tenant_id: str
    project_id: str | None
    task_id: str | None
    asset_id: str | None
    lease_id: str | None
    entry_type: EntryType
    amount: Decimal
    currency: str
    description: str | None
    occurred_at: datetime
    recorded_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class LedgerSummary:
    """Totals for one currency over a range: cost, revenue and margin = revenue - cost."""

    currency: str
    cost: Decimal
    revenue: Decimal
    margin: Decimal
    entries: int


def cost_effect(entry_type: str, amount: Decimal) -> Decimal:
    """How an entry moves cost (the figure `max_total_cost` bounds):
    COST, TASK_BURN and ADJUSTMENT add their (signed) amount, REFUND subtracts."""
    if entry_type in (EntryType.COST, EntryType.TASK_BURN, EntryType.ADJUSTMENT):
        return amount
    if entry_type == EntryType.REFUND:
        return -amount
    return Decimal(0)


def summarise(
    rows: Iterable[tuple[str, str, Decimal]], counts: Iterable[int] | None = None
) -> list[LedgerSummary]:
    """(currency, entry_type, amount) rows -> one summary per currency, sorted by currency.
    With `counts`, each row is a total standing for that many entries (grouped in SQL)."""
    acc: dict[str, list[Any]] = {}
    per_row = iter(counts) if counts is not None else None
    for currency, entry_type, amount in rows:
        slot = acc.setdefault(currency, [Decimal(0), Decimal(0), 0])
        slot[0] += cost_effect(entry_type, amount)
        if entry_type == EntryType.REVENUE:
            slot[1] += amount
        slot[2] += 1 if per_row is None else next(per_row)
    return [
        LedgerSummary(cur, cost, rev, rev - cost, n)
        for cur, (cost, rev, n) in sorted(acc.items())
    ]


@dataclass(slots=True)
class EntryPage:
    """A page of ledger entries, each with its cursor, and where the next page starts (None:
    nothing is left). A page may hold fewer entries than its limit, even none, and go on."""

    items: list[tuple[str, LedgerEntry]]
    next_cursor: str | None


class BudgetExceeded(Fail):
    """A lease or charge would take the task's cost over its max_total_cost. Raised in a
    handler (by ctx.charge) it ends the task FAILED with result_code BUDGET_EXCEEDED."""

    def __init__(self, message: str) -> None:
        super().__init__(code=ResultCode.BUDGET_EXCEEDED, message=message)
