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
from creep.domain.ledger import EntryPage, LedgerEntry, LedgerSummary, summarise
from creep.ports_assets_api import LEDGER_GROUPS
from creep.storage.asset_base import EVENT_COLS, LEDGER_COLS, AssetStoreBase

#: Ledger entries of a tenant a page reads at most when project_id or entry_type (no index
#: serves them) may leave most of them out (an admin's page across tenants reads this much
#: in all, or `limit` of each tenant if that is more).
LEDGER_SCAN = 10_000


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
    ) -> EntryPage:
        """Entries by (occurred_at, seq) after the cursor `after`, read through an index and
        never more than a bound: one task's entries by its index; else each tenant's (every
        tenant with entries, for no `tenant_id`: no index orders all of them by time, so the
        page is merged from each tenant's first `limit`) through (tenant_id, occurred_at).
        project_id and entry_type have no index: up to LEDGER_SCAN of a tenant's entries are
        read per page, and a page that found fewer than `limit` matches in them ends there,
        short (even empty), with a next_cursor past what it read."""
        if task_id is not None:
            return self._task_ledger_page(tenant_id, project_id, task_id, entry_type, since,
                                          until, after, limit)
        filtered = project_id is not None or entry_type is not None
        with self._aread() as conn:
            tenants = [tenant_id] if tenant_id is not None else self._ledger_tenants(conn)
            scan = max(limit, LEDGER_SCAN // max(len(tenants), 1)) if filtered else limit
            found: list[tuple[Any, ...]] = []
            ends: list[tuple[Any, Any]] = []
            for tenant in tenants:
                rows, end = self._ledger_scan(conn, tenant, project_id, entry_type, since,
                                              until, after, scan, limit)
                found.extend(rows)
                if end is not None:
                    ends.append(end)
        # Every tenant was read at least up to `bound` (the one read least far): the page
        # holds what comes before it, no later entry of another tenant.
        bound = min(ends) if ends else None
        rows = sorted((r for r in found if bound is None or (r[11], r[0]) <= bound),
                      key=lambda r: (r[11], r[0]))[:limit]
        items = [(self._cursor(e.occurred_at, int(r[0])), e)
                 for r in rows for e in (self._entry(r[1:]),)]
        if len(items) == limit:
            return EntryPage(items, items[-1][0])
        if bound is None:
            return EntryPage(items, None)
        at = self._adialect.from_ts(bound[0])
        assert at is not None
        return EntryPage(items, self._cursor(at, int(bound[1])))

    def ledger_list(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 1000,
    ) -> list[LedgerEntry]:
        """The first `limit` entries by (occurred_at, seq), page after page (ledger_page):
        a page across tenants reads each tenant's first entries, not all of them sorted."""
        out: list[LedgerEntry] = []
        after: str | None = None
        while len(out) < limit:
            page = self.ledger_page(tenant_id=tenant_id, project_id=project_id,
                                    task_id=task_id, since=since, until=until, after=after,
                                    limit=min(limit - len(out), 1000))
            out.extend(e for _, e in page.items)
            if page.next_cursor is None:
                break
            after = page.next_cursor
        return out

    def _task_ledger_page(
        self, tenant_id: str | None, project_id: str | None, task_id: str,
        entry_type: str | None, since: datetime | None, until: datetime | None,
        after: str | None, limit: int,
    ) -> EntryPage:
        """One task's entries (a few), through ledger_entries' by-task index."""
        if not is_uuid(task_id):
            return EntryPage([], None)
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
        items = [(self._cursor(e.occurred_at, int(r[0])), e)
                 for r in rows for e in (self._entry(r[1:]),)]
        return EntryPage(items, items[-1][0] if len(items) == limit else None)

    def _ledger_tenants(self, conn: Any) -> list[str]:
        """The tenants with ledger entries, one seek of (tenant_id, occurred_at) each."""
        return [r[0] for r in self._x(
            conn,
            "WITH RECURSIVE t(id) AS (SELECT min(tenant_id) FROM ledger_entries UNION ALL "
            "SELECT (SELECT min(tenant_id) FROM ledger_entries WHERE tenant_id > t.id) "
            "FROM t WHERE t.id IS NOT NULL) SELECT id FROM t WHERE id IS NOT NULL",
        ).fetchall()]

    def _ledger_scan(
        self, conn: Any, tenant_id: str, project_id: str | None, entry_type: str | None,
        since: datetime | None, until: datetime | None, after: str | None, scan: int,
        limit: int,
    ) -> tuple[list[tuple[Any, ...]], tuple[Any, Any] | None]:
        """Up to `limit` entries of the tenant (rows of seq, LEDGER_COLS) among its next
        `scan` after `after` that match project_id and entry_type, and how far it read:
        (occurred_at, seq) of the last entry read, or None when none is left past it."""
        where, params = self._page_where([("tenant_id", tenant_id)], since, until, after,
                                         ledger=True)
        if project_id is None and entry_type is None:
            rows = self._x(
                conn,
                f"SELECT seq, {LEDGER_COLS} FROM ledger_entries WHERE {' AND '.join(where)} "
                "ORDER BY occurred_at, seq LIMIT ?",
                [*params, limit],
            ).fetchall()
            return rows, ((rows[-1][11], rows[-1][0]) if len(rows) == limit else None)
        # The last of the next `scan` entries (through the index alone on SQLite) and whether
        # one follows it, then the matches up to it: both read in index order, the second
        # stops at `limit` matches.
        last = self._x(
            conn,
            f"SELECT occurred_at, seq FROM ledger_entries WHERE {' AND '.join(where)} "
            "ORDER BY occurred_at, seq LIMIT 2 OFFSET ?",
            [*params, scan - 1],
        ).fetchall()
        end = last[0] if len(last) == 2 else None
        match = [f"{c} = ?" for c, v in (("project_id", project_id),
                                         ("entry_type", entry_type)) if v is not None]
        values = [v for v in (project_id, entry_type) if v is not None]
        if end is not None:
            match.append("occurred_at <= ? AND (occurred_at < ? OR seq <= ?)")
            values += [end[0], end[0], end[1]]
        rows = self._x(conn, f"SELECT seq, {LEDGER_COLS} FROM ledger_entries WHERE "
                             f"{' AND '.join([*where, *match])} ORDER BY occurred_at, seq LIMIT ?",
                       [*params, *values, limit]).fetchall()
        if len(rows) == limit:
            return rows, (rows[-1][11], rows[-1][0])
        return rows, (None if end is None else (end[0], end[1]))

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
