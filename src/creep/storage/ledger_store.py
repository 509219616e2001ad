"""The ledger: append-only money with budget enforcement and summaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from creep.domain.errors import (
    ClaimLost,
    IdTaken,
    NotFound,
    StorageError,
    TaskDeleted,
    ValidationError,
)
from creep.domain.ids import is_uuid
from creep.domain.ledger import (
    LEDGER_ENTRY_ADDED,
    BudgetExceeded,
    LedgerEntry,
    LedgerSummary,
    cost_effect,
    summarise,
)
from creep.storage.asset_base import (
    LEDGER_COLS,
    AssetStoreBase,
)


class LedgerStoreMixin(AssetStoreBase):
    # -- ledger: public --------------------------------------------------------------------

    def ledger_record(
        self, entry: LedgerEntry, *, enforce_budget: bool = True,
        claim_token: str | None = None,
    ) -> LedgerEntry:
        """Append one entry. One tied to a task must be in the task's currency; a cost that
        would take the task over max_total_cost raises BudgetExceeded and writes nothing.
        With `claim_token` (a handler's ctx.charge / ctx.earn) the task must still run under
        that claim, else ClaimLost and nothing is written. An entry whose entry_id exists
        already is a resend: see ledger_append."""
        return self.ledger_append(entry, enforce_budget=enforce_budget,
                                  claim_token=claim_token)[0]

    def ledger_append(
        self, entry: LedgerEntry, *, enforce_budget: bool = True,
        claim_token: str | None = None, occurred_given: bool = False,
    ) -> tuple[LedgerEntry, bool]:
        """ledger_record, and whether the entry was written before. An entry whose entry_id
        exists already is a resend (after a lost answer): the same entry answers the one
        written then, True, and writes nothing (its transaction rolls back: an audit row
        riding along is not written either), even once the task's claim is gone or its
        budget spent; another entry under that id raises IdTaken. The same entry: the same
        tenant, task, asset, lease, type, amount, currency and description, and the project
        and (`occurred_given`: the caller's, not now) occurred_at when the caller gave them.
        The unique entry_id decides between a resend and the send it raced."""
        try:
            return self._ledger_insert(entry, enforce_budget, claim_token, occurred_given), False
        except _EntryReplayed as replay:
            return replay.entry, True

    def _ledger_insert(
        self, entry: LedgerEntry, enforce_budget: bool, claim_token: str | None,
        occurred_given: bool,
    ) -> LedgerEntry:
        d = self._adialect
        if claim_token is not None and entry.task_id is None:
            raise ValidationError.single("task_id", "is required with a claim token")
        asked = _Asked(entry.project_id, occurred_given)
        with self._atx() as conn:
            if entry.task_id is None and entry.lease_id is not None:
                # Money for a lease is its task's: in the task's currency, within its budget,
                # in its summary (a task retention deleted leaves the entry without one).
                leased = self._x(
                    conn, "SELECT l.task_id FROM leases l JOIN tasks t ON t.task_id = "
                    "l.task_id WHERE l.lease_id = ? AND l.tenant_id = ?",
                    (entry.lease_id, entry.tenant_id),
                ).fetchone()
                if leased is not None:
                    entry.task_id = str(leased[0])
            row = None
            if entry.task_id is not None:
                row = self._x(
                    conn,
                    "SELECT tenant_id, project_id, currency, max_total_cost, status, "
                    f"claim_token, deleted_at FROM tasks WHERE task_id = ?{d.lock}",
                    (entry.task_id,),
                ).fetchone()
                if row is None or row[0] != entry.tenant_id:
                    raise NotFound("task", entry.task_id)
            # Sent again after a lost answer (even once unclaimed, or its budget spent): the
            # entry written then, read only (under the task's lock: after its first send).
            self._replay_entry(conn, entry, asked)
            if row is not None:
                if row[6] is not None:
                    # In the recycle bin (the lock orders this with the delete): its money
                    # is read, not added to, until it is restored.
                    raise TaskDeleted(str(entry.task_id), LEDGER_ENTRY_ADDED)
                if claim_token is not None and (row[4] != "RUNNING"
                                                or str(row[5]) != claim_token):
                    # A run that lost its claim (rescued, timed out, cancelled) spends
                    # nothing more on the task: its budget is the current run's.
                    raise ClaimLost(f"task {entry.task_id}: the claim is no longer held")
                if row[2] != entry.currency:
                    raise ValidationError.single(
                        "currency", f"must match the task's currency {row[2]}"
                    )
                if entry.project_id is None:
                    entry.project_id = row[1]
                effect = cost_effect(entry.entry_type, entry.amount)
                if enforce_budget and row[3] is not None and effect > 0:
                    budget = d.from_dec(row[3])
                    spent = sum(
                        (cost_effect(r[0], d.from_dec(r[1])) for r in self._x(
                            conn,
                            "SELECT entry_type, amount FROM ledger_entries WHERE "
                            f"{d.by_task}task_id = ?",
                            (entry.task_id,),
                        ).fetchall()),
                        Decimal(0),
                    )
                    if spent + effect > budget:
                        raise BudgetExceeded(
                            f"cost {spent} + {effect} would exceed max_total_cost {budget} "
                            f"{entry.currency}"
                        )
            # An entry names only the caller's own asset and lease, as it does its task.
            if entry.asset_id is not None:
                owner = self._x(
                    conn, "SELECT tenant_id FROM assets WHERE asset_id = ?", (entry.asset_id,)
                ).fetchone()
                if owner is None or owner[0] != entry.tenant_id:
                    raise NotFound("asset", entry.asset_id)
            if entry.lease_id is not None:
                self._check_entry_lease(conn, entry, claim_token)
            inserted = self._x(
                conn,
                f"INSERT INTO ledger_entries ({LEDGER_COLS}) VALUES ({', '.join('?' * 12)}) "
                "ON CONFLICT (entry_id) DO NOTHING RETURNING seq",
                (entry.entry_id, entry.tenant_id, entry.project_id, entry.task_id,
                 entry.asset_id, entry.lease_id, entry.entry_type.value, d.dec(entry.amount),
                 entry.currency, entry.description, d.ts(entry.occurred_at),
                 d.ts(entry.recorded_at)),
            ).fetchone()
            if inserted is None:
                # A send of this entry_id committed after the read above (PostgreSQL: the
                # unique index held this insert until it did; SQLite's one writer at a time
                # never gets here): the resend of a send it raced.
                self._replay_entry(conn, entry, asked)
                raise StorageError(f"ledger entry {entry.entry_id} was neither written nor found")
        return entry

    def _replay_entry(self, conn: Any, entry: LedgerEntry, asked: _Asked) -> None:
        """Nothing if no entry has `entry`'s id. Else _EntryReplayed with the entry written
        under it when `entry` is that entry again, IdTaken when it is another one (which is
        not shown: it may be another tenant's)."""
        row = self._x(conn, f"SELECT {LEDGER_COLS} FROM ledger_entries WHERE entry_id = ?",
                      (entry.entry_id,)).fetchone()
        if row is None:
            return
        written = self._entry(row)
        if not _same_entry(written, entry, asked):
            raise IdTaken.single(
                "entry_id", f"ledger entry {entry.entry_id} exists already, as another entry "
                "(an entry sent again must be the same entry)")
        raise _EntryReplayed(written)

    def _check_entry_lease(
        self, conn: Any, entry: LedgerEntry, claim_token: str | None
    ) -> None:
        """The lease an entry names: the tenant's (another tenant's reads like a missing
        one), of the entry's task (a handler's ctx.charge / ctx.earn: of its own run, any
        status, as ctx.leases() lists them), on the entry's asset when one is named."""
        lease = self._x(
            conn, "SELECT tenant_id, task_id, asset_id, claim_token FROM leases "
            "WHERE lease_id = ?", (entry.lease_id,),
        ).fetchone()
        if lease is None or lease[0] != entry.tenant_id:
            raise NotFound("lease", str(entry.lease_id))
        task_id, asset_id, token = (str(v).lower() for v in lease[1:])
        if entry.task_id is not None and task_id != entry.task_id.lower():
            raise ValidationError.single("lease_id", "is a lease of another task")
        if claim_token is not None and token != claim_token.lower():
            raise ValidationError.single(
                "lease_id", "is a lease of an earlier run of the task, not of this one")
        if entry.asset_id is not None and asset_id != entry.asset_id.lower():
            raise ValidationError.single(
                "lease_id", f"is a lease of another asset than asset_id {entry.asset_id}")

    def _ledger_where(
        self, tenant_id: str | None, project_id: str | None, task_id: str | None,
        since: datetime | None, until: datetime | None, currency: str | None = None,
    ) -> tuple[str, list[Any]]:
        d = self._adialect
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("tenant_id", tenant_id), ("project_id", project_id),
                              ("task_id", task_id), ("currency", currency)):
            if value is not None:
                lead = d.by_task if column == "task_id" else ""
                name = (d.tenant_beside_task if column == "tenant_id" and task_id is not None
                        else column)
                where.append(f"{lead}{name} = ?")
                params.append(value)
        if since is not None:
            where.append("occurred_at >= ?")
            params.append(d.ts(since))
        if until is not None:
            where.append("occurred_at < ?")
            params.append(d.ts(until))
        return " AND ".join(where), params

    def ledger_summary(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerSummary]:
        """Cost, revenue and margin per currency, grouped in SQL. PostgreSQL sums the
        NUMERIC amounts; SQLite keeps them as exact decimal text, which SUM would turn
        into floats, so it groups equal amounts and Python multiplies (exact both ways)."""
        if task_id is not None and not is_uuid(task_id):
            return []
        d = self._adialect
        where, params = self._ledger_where(tenant_id, project_id, task_id, since, until)
        if d.name == "postgres":
            sql = (f"SELECT currency, entry_type, sum(amount), count(*) FROM ledger_entries "
                   f"WHERE {where} GROUP BY currency, entry_type")
        else:
            sql = (f"SELECT currency, entry_type, amount, count(*) FROM ledger_entries "
                   f"WHERE {where} GROUP BY currency, entry_type, amount")
        with self._aread() as conn:
            rows = self._x(conn, sql, params).fetchall()
        if d.name == "postgres":
            totals = [(r[0], r[1], d.from_dec(r[2])) for r in rows]
        else:
            totals = [(r[0], r[1], d.from_dec(r[2]) * r[3]) for r in rows]
        return summarise(totals, [r[3] for r in rows])


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a caller gave that the store fills in otherwise: the project (None: the task's,
    or none) and whether occurred_at was the caller's (else the time of the request)."""

    project_id: str | None
    occurred_given: bool


def _same_entry(written: LedgerEntry, entry: LedgerEntry, asked: _Asked) -> bool:
    """Whether `entry` (its task resolved from its lease) records `written` again."""

    def key(e: LedgerEntry) -> tuple[Any, ...]:
        return (e.tenant_id, *(None if x is None else str(x).lower() for x in (
            e.task_id, e.asset_id, e.lease_id)), e.entry_type, e.amount, e.currency,
                e.description)

    if key(written) != key(entry):
        return False
    if (asked.project_id is not None or entry.task_id is None) \
            and asked.project_id != written.project_id:
        return False
    return not asked.occurred_given or written.occurred_at == entry.occurred_at


class _EntryReplayed(Exception):  # not an error: the answer of a resent entry
    """An entry sent again: its transaction ends (rolled back, nothing written) with the
    entry written the first time."""

    def __init__(self, entry: LedgerEntry) -> None:
        super().__init__("replayed")
        self.entry = entry
