"""Cursor pages of asset events and ledger entries, and grouped ledger summaries, for the REST
API (lists and CSV exports). Shared SQL for both backends on the asset store's dialect.

A cursor is `<ISO occurred_at>|<seq>`: rows are ordered by (occurred_at, seq), seq being the
write order, so a page continues exactly after the last row returned (before it, for asset
events read newest first)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from creep.domain.asset_event import AssetEvent
from creep.domain.errors import ValidationError
from creep.domain.ids import is_uuid
from creep.domain.ledger import LedgerEntry, LedgerSummary, summarise
from creep.ports_assets_api import LEDGER_GROUPS
from creep.storage.asset_base import EVENT_COLS, LEDGER_COLS, AssetStoreBase


def _after(cursor: str) -> tuple[datetime, int]:
    when, _, seq = cursor.rpartition("|")
    try:
        at = datetime.fromisoformat(when)
        if at.tzinfo is None:
            raise ValueError
        return at, int(seq)
    except ValueError:
        raise ValidationError.single("cursor", "is not a cursor this server issued") from None


class AssetPagesMixin(AssetStoreBase):
    def _page_where(
        self, filters: Sequence[tuple[str, Any]], since: datetime | None,
        until: datetime | None, after: str | None, *, ledger: bool = False,
        newest_first: bool = False,
    ) -> tuple[list[str], list[Any]]:
        """With `ledger`, a task_id filter is written for ledger_entries' by-task index; with
        `newest_first`, `after` continues towards older rows."""
        d = self._adialect
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        by_task = ledger and any(c == "task_id" and v is not None for c, v in filters)
        for column, value in filters:
            if value is not None:
                lead = (d.by_correlation if column == "correlation_id"
                        else d.by_task if ledger and column == "task_id" else "")
                name = d.tenant_beside_task if by_task and column == "tenant_id" else column
                where.append(f"{lead}{name} = ?")
                params.append(value)
        if since is not None:
            where.append("occurred_at >= ?")
            params.append(d.ts(since))
        if until is not None:
            where.append("occurred_at < ?")
            params.append(d.ts(until))
        if after is not None:
            at, seq = _after(after)
            way = "<" if newest_first else ">"
            # The leading bound is implied by the OR; written out, PostgreSQL seeks the
            # (..., occurred_at) index from the cursor instead of filtering every row of
            # the pages before it (a read that grew with each page).
            where.append(f"occurred_at {way}= ? AND "
                         f"(occurred_at {way} ? OR (occurred_at = ? AND seq {way} ?))")
            params += [d.ts(at), d.ts(at), d.ts(at), seq]
        return where, params

    def _cursor(self, occurred_at: datetime, seq: int) -> str:
        return f"{occurred_at.isoformat()}|{seq}"

    def asset_events_page(
        self, *, tenant_id: str | None = None, asset_id: str | None = None,
        task_id: str | None = None, correlation_id: str | None = None,
        event_type: str | None = None, after: str | None = None, limit: int = 100,
        newest_first: bool = False,
    ) -> list[tuple[str, AssetEvent]]:
        if any(v is not None and not is_uuid(v) for v in (asset_id, task_id)):
            return []
        with self._aread() as conn:
            where, params = self._page_where(
                [("tenant_id", tenant_id), ("asset_id", asset_id), ("task_id", task_id),
                 ("correlation_id", correlation_id), ("event_type", event_type)],
                None, None, after, newest_first=newest_first,
            )
            if task_id is not None:
                # No index leads with task_id: a task's events carry its correlation_id, and
                # that index finds them (asset_events_list does the same).
                found = self._task_correlation(conn, task_id)
                if found is not None:
                    where.append(f"{self._adialect.by_correlation}correlation_id = ?")
                    params.append(found)
            rows = self._x(
                conn,
                f"SELECT seq, {EVENT_COLS} FROM asset_events WHERE {' AND '.join(where)} "
                + ("ORDER BY occurred_at DESC, seq DESC LIMIT ?" if newest_first
                   else "ORDER BY occurred_at, seq LIMIT ?"),
                [*params, limit],
            ).fetchall()
        out = []
        for r in rows:
            event = self._event(r[1:])
            out.append((self._cursor(event.occurred_at, int(r[0])), event))
        return out

    def ledger_page(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, entry_type: str | None = None,
        since: datetime | None = None, until: datetime | None = None,
        after: str | None = None, limit: int = 100,
    ) -> list[tuple[str, LedgerEntry]]:
        if task_id is not None and not is_uuid(task_id):
            return []
        where, params = self._page_where(
            [("tenant_id", tenant_id), ("project_id", project_id), ("task_id", task_id),
             ("entry_type", entry_type)],
            since, until, after, ledger=True,
        )
        with self._aread() as conn:
            rows = self._x(
                conn,
                f"SELECT seq, {LEDGER_COLS} FROM ledger_entries WHERE {' AND '.join(where)} "
                "ORDER BY occurred_at, seq LIMIT ?",
                [*params, limit],
            ).fetchall()
        out = []
        for r in rows:
            entry = self._entry(r[1:])
            out.append((self._cursor(entry.occurred_at, int(r[0])), entry))
        return out

    def ledger_summary_grouped(
        self, group_by: Sequence[str], *, tenant_id: str | None = None,
        project_id: str | None = None, task_id: str | None = None,
        since: datetime | None = None, until: datetime | None = None,
    ) -> list[tuple[dict[str, str | None], LedgerSummary]]:
        """Grouped in SQL, exactly, as `ledger_summary` is: PostgreSQL sums the NUMERIC
        amounts; SQLite (exact decimal text, which SUM would turn into floats) groups equal
        amounts and Python multiplies. A tenant's summary reads one row per group and entry
        type (and, on SQLite, distinct amount), not one per ledger entry."""
        if task_id is not None and not is_uuid(task_id):
            return []
        groups = [g for g in LEDGER_GROUPS if g in group_by and g != "currency"]
        d = self._adialect
        where, params = self._page_where(
            [("tenant_id", tenant_id), ("project_id", project_id), ("task_id", task_id)],
            since, until, None, ledger=True,
        )
        cols = "".join(f"{g}, " for g in groups)
        exact = d.name == "postgres"
        with self._aread() as conn:
            rows = self._x(
                conn,
                f"SELECT {cols}currency, entry_type, {'sum(amount)' if exact else 'amount'}, "
                f"count(*) FROM ledger_entries WHERE {' AND '.join(where)} "
                f"GROUP BY {cols}currency, entry_type{'' if exact else ', amount'}",
                params,
            ).fetchall()
        by_group: dict[tuple[Any, ...], tuple[list[tuple[str, str, Decimal]], list[int]]] = {}
        n = len(groups)
        for r in rows:
            totals, counts = by_group.setdefault(tuple(r[:n]), ([], []))
            amount = d.from_dec(r[n + 2])
            totals.append((r[n], r[n + 1], amount if exact else amount * r[n + 3]))
            counts.append(r[n + 3])
        out: list[tuple[dict[str, str | None], LedgerSummary]] = []
        for key in sorted(by_group, key=lambda k: tuple((v is not None, v or "") for v in k)):
            label = {g: (None if v is None else str(v)) for g, v in zip(groups, key, strict=True)}
            out.extend((label, s) for s in summarise(*by_group[key]))
        return out
