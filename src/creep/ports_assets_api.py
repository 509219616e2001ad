"""What the REST API needs of a store for assets, events and the ledger beyond `ports.Store`:
cursor pages (for lists and CSV exports that read every row) and grouped ledger summaries.
Both backends get them from `storage/asset_pages.py`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from creep.domain.asset_event import AssetEvent, BanPolicy
from creep.domain.ids import is_uuid
from creep.domain.lease import Lease
from creep.domain.ledger import EntryPage, LedgerSummary
from creep.ports_api import ApiStore

#: Columns a ledger summary may be grouped by (currency is always one of them).
LEDGER_GROUPS = ("tenant_id", "project_id", "task_id", "currency")


class AssetPagesStore(ApiStore, Protocol):
    def ban_policy_in_transaction(
        self, conn: Any, tenant_id: str, sku_category: str
    ) -> BanPolicy | None:
        """The policy as the open transaction on `conn` sees it (for an audit row)."""
        ...

    def asset_events_page(
        self, *, tenant_id: str | None = None, asset_id: str | None = None,
        task_id: str | None = None, correlation_id: str | None = None,
        event_type: str | None = None, after: str | None = None, limit: int = 100,
        newest_first: bool = False,
    ) -> list[tuple[str, AssetEvent]]:
        """Events oldest first (occurred_at, then write order), or newest first, each with
        its cursor: a page continues past `after` in the same order."""
        ...

    def ledger_page(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, entry_type: str | None = None,
        since: datetime | None = None, until: datetime | None = None,
        after: str | None = None, limit: int = 100,
    ) -> EntryPage:
        """Entries by occurred_at, then write order, each with its cursor, and the next
        page's cursor (a page may be short, even empty, and still have one)."""
        ...

    def ledger_summary_grouped(
        self, group_by: Sequence[str], *, tenant_id: str | None = None,
        project_id: str | None = None, task_id: str | None = None,
        since: datetime | None = None, until: datetime | None = None,
    ) -> list[tuple[dict[str, str | None], LedgerSummary]]:
        """Cost, revenue and margin per group (the `group_by` columns; currency always)."""
        ...


def valid_page_cursor(raw: str) -> bool:
    """`<ISO occurred_at>|<seq>`, as `asset_events_page` and `ledger_page` issue them."""
    when, sep, seq = raw.rpartition("|")
    if not sep or not (seq.isascii() and seq.isdecimal()) or len(seq) > 18:
        return False
    try:
        return datetime.fromisoformat(when).tzinfo is not None
    except ValueError:
        return False


def valid_lease_cursor(raw: str) -> bool:
    """`<ISO acquired_at>|<lease_id>`, as `lease_cursor` issues them."""
    when, sep, lease_id = raw.rpartition("|")
    if not sep or not is_uuid(lease_id):
        return False
    try:
        return datetime.fromisoformat(when).tzinfo is not None
    except ValueError:
        return False


def lease_cursor(lease: Lease) -> str:
    """Where a page of leases (by acquired_at, then lease_id) continues after `lease`."""
    return f"{lease.acquired_at.isoformat()}|{lease.lease_id}"
