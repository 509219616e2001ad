"""What /metrics reads from the database: gauges aggregated at scrape time, the
task-lifecycle rollup (`metric_cursors` + `metric_values`, migration 0008) that one node at a
time folds new task events into, and the ledger rollup (`metric_ledger`, sqlite 0019 /
postgres 0020) that a scrape folds new ledger entries into. Both dialects; see
creep.api.metrics for the design."""

from __future__ import annotations

import sqlite3
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from creep.storage.common import SQLITE_EVENTS_OF

if TYPE_CHECKING:
    import psycopg

#: (name, labels as canonical JSON) -> amount to add.
Deltas = dict[tuple[str, str], float]
#: step(cursor) -> (new cursor, deltas); run while the fold holds the cursor row.
FoldStep = Callable[[str | None], tuple[str | None, Deltas]]
#: (task_id, event_id, from_status, to_status, payload, created_at): a task's transitions.
Mark = tuple[str, int, str | None, str | None, dict[str, Any], datetime]
#: (entry_type, currency) -> [amount total, entry count]: ledger totals, or what to add.
LedgerSums = dict[tuple[str, str], list[Any]]
_P = TypeVar("_P")
#: The ledger rollup's cursor (metric_cursors.name).
LEDGER = "ledger_entries"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MARKS_WHERE = ("to_status IN ('QUEUED', 'RUNNING') "
                "AND (from_status IS NULL OR from_status <> to_status)")


class MetricsGauges:
    """Scrape-time aggregates, identical on every node."""

    def __init__(self) -> None:
        #: ("ACTIVE", leases held now)
        self.leases: list[tuple[str, int]] = []
        #: (status, assets) of the statuses but SOLD and ARCHIVED that have assets
        self.assets: list[tuple[str, int]] = []
        #: (entry_type, currency, amount total, entry count)
        self.ledger: list[tuple[str, str, Decimal, int]] = []


class SqliteMetricsMixin:
    if TYPE_CHECKING:
        def _conn(self) -> sqlite3.Connection: ...
        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def metric_fold(self, name: str, step: FoldStep) -> bool:
        """Run `step` from the stored cursor and apply its deltas and cursor atomically.

        SQLite's single writer commits event ids in order, so a snapshot holds every event up
        to its newest and a plain id cursor never skips a late commit. `step` reads in one
        snapshot outside the write lock (its reads of a thousand tasks' marks take tens of
        milliseconds that claims and completions should not wait for); the write then applies
        the deltas only if the cursor is still the one they were computed from, and a folder
        that lost that race (another API process folded first) computes again from the new
        cursor."""
        return self._fold(name, step, _apply_sqlite)

    def _fold(self, name: str, step: Callable[[str | None], tuple[str | None, _P]],
              apply: Callable[[sqlite3.Connection, str, str | None, _P], None]) -> bool:
        """metric_fold with the rollup `apply` writes `step`'s result to. A step that left
        the cursor where it was found nothing new: nothing is written."""
        for _ in range(_FOLD_ATTEMPTS):
            conn = self._conn()
            conn.execute("BEGIN")  # one read snapshot for the cursor and everything step reads
            try:
                start = _fold_cursor(conn, name)
                cursor, found = step(start)
            finally:
                conn.execute("COMMIT")
            if cursor == start:
                return True
            with self._write() as conn:
                if _fold_cursor(conn, name) == start:
                    apply(conn, name, cursor, found)
                    return True
        with self._write() as conn:  # still contended: fold under the write lock
            cursor, found = step(_fold_cursor(conn, name))
            apply(conn, name, cursor, found)
        return True

    def metric_values(self, name: str | None = None) -> list[tuple[str, str, float]]:
        """The rollup's rows (of one metric `name`, or all)."""
        where, params = ("WHERE name = ?", (name,)) if name is not None else ("", ())
        return [(r[0], r[1], float(r[2])) for r in self._conn().execute(
            f"SELECT name, labels, value FROM metric_values {where}", params).fetchall()]

    def metric_task_marks(self, task_ids: Sequence[str]) -> tuple[dict[str, str], list[Mark]]:
        """The task types of `task_ids`, and their transitions into QUEUED or RUNNING (the
        points claim-to-start and run time are measured from)."""
        ids = orjson.dumps(list(task_ids)).decode()
        conn = self._conn()
        types = dict(conn.execute(
            "SELECT task_id, task_type FROM tasks WHERE task_id IN (SELECT value FROM json_each(?))",
            (ids,),
        ).fetchall())
        marks = [
            (r[0], r[1], r[2], r[3], orjson.loads(r[4]),
             _EPOCH + timedelta(microseconds=r[5]))
            for r in conn.execute(
                "SELECT task_id, event_id, from_status, to_status, payload, created_at "
                f"FROM task_events WHERE {SQLITE_EVENTS_OF} "
                "task_id IN (SELECT value FROM json_each(?)) "
                f"AND {_MARKS_WHERE} ORDER BY event_id",
                (ids,),
            ).fetchall()
        ]
        return types, marks

    def metric_gauges(self) -> MetricsGauges:
        conn = self._conn()
        g = MetricsGauges()
        g.leases = _pairs(conn.execute(_ACTIVE_LEASES))
        g.assets = _live(conn.execute(_LIVE_ASSETS))
        self._fold(LEDGER, self._ledger_step, _apply_ledger_sqlite)
        g.ledger = [(r[0], r[1], Decimal(r[2]), int(r[3])) for r in conn.execute(
            "SELECT entry_type, currency, amount, entries FROM metric_ledger ORDER BY 1, 2")]
        return g

    def _ledger_step(self, cursor: str | None) -> tuple[str | None, LedgerSums]:
        """The totals of the ledger entries past `cursor` (a seq: SQLite's single writer
        commits seqs in order, so none can commit behind it), through the primary key.
        Amounts are exact decimal text (SUM would make floats): equal amounts grouped."""
        acc: LedgerSums = {}
        top = int(cursor or 0)
        for entry_type, currency, amount, n, last in self._conn().execute(
            "SELECT entry_type, currency, amount, count(*), max(seq) FROM ledger_entries "
            "WHERE seq > ? GROUP BY 1, 2, 3", (top,),
        ):
            slot = acc.setdefault((entry_type, currency), [Decimal(0), 0])
            slot[0] += Decimal(amount) * n
            slot[1] += n
            top = max(top, last)
        return (cursor if not acc else str(top)), acc


_FOLD_ATTEMPTS = 3
#: Leases held now, through the partial index of ACTIVE leases (leases_asset_active). Ended
#: leases are history (never purged) with no index to count them by: not a gauge.
_ACTIVE_LEASES = "SELECT 'ACTIVE', count(*) FROM leases WHERE status = 'ACTIVE'"
#: Assets by status but SOLD and ARCHIVED (history that only grows), each through its partial
#: index (assets_leasable, assets_cooling, assets_unleasable: sqlite 0022, postgres 0023); a
#: status without assets is left out.
_LIVE_ASSETS = (
    "SELECT status, count(*) FROM assets WHERE status IN ('READY', 'IN_USE') GROUP BY 1 "
    "UNION ALL SELECT 'COOLING', count(*) FROM assets WHERE status = 'COOLING' "
    "UNION ALL SELECT status, count(*) FROM assets WHERE status IN ('NEW', 'BANNED') "
    "GROUP BY 1"
)


def _fold_cursor(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT cursor FROM metric_cursors WHERE name = ?", (name,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _pairs(rows: Iterator[Any]) -> list[tuple[str, int]]:
    return sorted((str(r[0]), int(r[1])) for r in rows)


def _live(rows: Iterator[Any]) -> list[tuple[str, int]]:
    return [p for p in _pairs(rows) if p[1]]


def _apply_sqlite(conn: sqlite3.Connection, name: str, cursor: str | None, deltas: Deltas) -> None:
    conn.executemany(
        "INSERT INTO metric_values (name, labels, value) VALUES (?, ?, ?) "
        "ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value",
        [(k[0], k[1], v) for k, v in deltas.items()],
    )
    conn.execute("UPDATE metric_cursors SET cursor = ? WHERE name = ?", (cursor, name))


def _apply_ledger_sqlite(conn: sqlite3.Connection, name: str, cursor: str | None,
                         sums: LedgerSums) -> None:
    for (entry_type, currency), (amount, n) in sums.items():
        row = conn.execute("SELECT amount, entries FROM metric_ledger "
                           "WHERE entry_type = ? AND currency = ?", (entry_type, currency)).fetchone()
        if row is not None:
            amount, n = amount + Decimal(row[0]), n + int(row[1])
        conn.execute("INSERT INTO metric_ledger (entry_type, currency, amount, entries) "
                     "VALUES (?, ?, ?, ?) ON CONFLICT (entry_type, currency) DO UPDATE "
                     "SET amount = excluded.amount, entries = excluded.entries",
                     (entry_type, currency, str(amount), n))
    conn.execute("UPDATE metric_cursors SET cursor = ? WHERE name = ?", (cursor, name))


class PostgresMetricsMixin:
    if TYPE_CHECKING:
        def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...

    def metric_fold(self, name: str, step: FoldStep) -> bool:
        """As SqliteMetricsMixin.metric_fold; False when another node is folding right now
        (SKIP LOCKED: a scrape never waits for another). The task-event cursor is
        (txid, event_id) and stops at the oldest open transaction (task_events_after), so an
        event that commits late is still folded, once."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT cursor FROM metric_cursors WHERE name = %s FOR UPDATE SKIP LOCKED",
                (name,),
            ).fetchone()
            if row is None:
                return False
            cursor, deltas = step(row[0])
            if deltas:
                names, labels, values = zip(
                    *((k[0], k[1], v) for k, v in deltas.items()), strict=True)
                conn.execute(
                    "INSERT INTO metric_values (name, labels, value) "
                    "SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[]) "
                    "ON CONFLICT (name, labels) DO UPDATE "
                    "SET value = metric_values.value + excluded.value",
                    (list(names), list(labels), list(values)),
                )
            conn.execute("UPDATE metric_cursors SET cursor = %s WHERE name = %s", (cursor, name))
        return True

    def metric_values(self, name: str | None = None) -> list[tuple[str, str, float]]:
        where, params = ("WHERE name = %s", (name,)) if name is not None else ("", ())
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT name, labels, value FROM metric_values {where}", params).fetchall()
        return [(r[0], r[1], float(r[2])) for r in rows]

    def metric_task_marks(self, task_ids: Sequence[str]) -> tuple[dict[str, str], list[Mark]]:
        with self._tx() as conn:
            types = {str(r[0]): r[1] for r in conn.execute(
                "SELECT task_id, task_type FROM tasks WHERE task_id = ANY(%s::uuid[])",
                (list(task_ids),),
            ).fetchall()}
            rows = conn.execute(
                "SELECT task_id, event_id, from_status, to_status, payload, created_at "
                f"FROM task_events WHERE task_id = ANY(%s::uuid[]) AND {_MARKS_WHERE} "
                "ORDER BY event_id",
                (list(task_ids),),
            ).fetchall()
        return types, [(str(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def metric_gauges(self) -> MetricsGauges:
        g = MetricsGauges()
        with self._tx() as conn:
            g.leases = _pairs(iter(conn.execute(_ACTIVE_LEASES).fetchall()))
            g.assets = _live(iter(conn.execute(_LIVE_ASSETS).fetchall()))
        with self._tx() as conn:
            row = conn.execute("SELECT cursor FROM metric_cursors WHERE name = %s "
                               "FOR UPDATE SKIP LOCKED", (LEDGER,)).fetchone()
            if row is not None:  # else another node is folding: its totals show next time
                _fold_ledger_pg(conn, row[0])
            rows = conn.execute("SELECT entry_type, currency, amount, entries FROM metric_ledger "
                                "ORDER BY 1, 2").fetchall()
        g.ledger = [(r[0], r[1], Decimal(r[2]), int(r[3])) for r in rows]
        return g


#: The transactions that may be inserting ledger entries: an INSERT (or COPY) takes this lock
#: before it draws a seq and holds it until its transaction ends. Virtual ids, as a
#: transaction may draw a seq before it has a transaction id.
_LEDGER_WRITERS = (
    "SELECT virtualtransaction FROM pg_locks WHERE locktype = 'relation' AND granted "
    "AND mode = 'RowExclusiveLock' AND relation = 'ledger_entries'::regclass "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
#: One snapshot: the totals of the entries past the cursor and of those found in the
#: cursor's gaps, the gaps found ('seen'), the new gaps below the newest entry past the
#: cursor ('gap', as ranges) and that entry's seq ('top'). Through the primary key.
_LEDGER_FOLD = (
    "WITH new AS MATERIALIZED ("
    " SELECT seq, entry_type, currency, amount FROM ledger_entries WHERE seq > %(c)s::bigint"
    " UNION ALL SELECT l.seq, l.entry_type, l.currency, l.amount"
    " FROM unnest(%(lo)s::bigint[], %(hi)s::bigint[]) AS r(lo, hi)"
    " JOIN ledger_entries l ON l.seq BETWEEN r.lo AND r.hi) "
    "SELECT 'sum', entry_type, currency, sum(amount), count(*), NULL::bigint FROM new"
    " GROUP BY 2, 3 "
    "UNION ALL SELECT 'seen', NULL, NULL, NULL, seq, NULL FROM new WHERE seq <= %(c)s::bigint "
    "UNION ALL SELECT 'gap', NULL, NULL, NULL, prev + 1, seq - 1 FROM ("
    " SELECT seq, lag(seq, 1, %(c)s::bigint) OVER (ORDER BY seq) AS prev FROM new"
    " WHERE seq > %(c)s::bigint) s WHERE seq > prev + 1 "
    "UNION ALL SELECT 'top', NULL, NULL, NULL, max(seq), NULL FROM new WHERE seq > %(c)s::bigint"
)


def _fold_ledger_pg(conn: psycopg.Connection[Any], text: str | None) -> None:
    """Fold the ledger entries no fold has counted into metric_ledger, holding the cursor row.

    A seq can commit after a larger one, so the cursor is the newest seq folded plus the
    seqs below it not yet seen, in generations: the gaps one fold found, with the writers
    (_LEDGER_WRITERS) in progress just after its read. Each fold reads the gaps again, by
    key; a generation goes once none of its writers was in progress before a fold's read
    (that read saw whatever they committed; what is still missing was rolled back or never
    used, as after a crash). Each statement reads its own snapshot (READ COMMITTED): the
    writers are listed before the read that a generation's end relies on, and after the
    read whose gaps they may fill."""
    state: dict[str, Any] = orjson.loads(text) if text else {"seq": 0, "gens": []}
    top: int = state["seq"]
    gens: list[tuple[list[list[int]], list[str]]] = [(g[0], g[1]) for g in state["gens"]]
    live = {r[0] for r in conn.execute(_LEDGER_WRITERS).fetchall()}
    ended = [not live.intersection(writers) for _, writers in gens]
    ranges = [r for gaps, _ in gens for r in gaps]
    sums: LedgerSums = {}
    seen: list[int] = []
    fresh: list[list[int]] = []
    newest = top
    for kind, entry_type, currency, amount, n, hi in conn.execute(_LEDGER_FOLD, {
        "c": top, "lo": [r[0] for r in ranges], "hi": [r[1] for r in ranges],
    }).fetchall():
        if kind == "sum":
            sums[(entry_type, currency)] = [amount, n]
        elif kind == "seen":
            seen.append(n)
        elif kind == "gap":
            fresh.append([n, hi])
        elif n is not None:
            newest = n
    writers = sorted(r[0] for r in conn.execute(_LEDGER_WRITERS).fetchall()) if fresh else []
    seen.sort()
    gens = [(_without(gaps, seen), w) for (gaps, w), done in zip(gens, ended, strict=True)
            if not done]
    gens = [g for g in gens if g[0]]
    if fresh:
        gens.append((fresh, writers))
    if sums:
        keys, amounts, counts = zip(*((k, v[0], v[1]) for k, v in sums.items()), strict=True)
        conn.execute(
            "INSERT INTO metric_ledger (entry_type, currency, amount, entries) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::numeric[], %s::bigint[]) "
            "ON CONFLICT (entry_type, currency) DO UPDATE SET "
            "amount = metric_ledger.amount + excluded.amount, "
            "entries = metric_ledger.entries + excluded.entries",
            ([k[0] for k in keys], [k[1] for k in keys], list(amounts), list(counts)),
        )
    cursor = orjson.dumps({"seq": newest, "gens": gens}).decode()
    if cursor != text:
        conn.execute("UPDATE metric_cursors SET cursor = %s WHERE name = %s", (cursor, LEDGER))


def _without(gaps: list[list[int]], seen: list[int]) -> list[list[int]]:
    """The ranges `gaps` less the seqs `seen` (sorted)."""
    out: list[list[int]] = []
    for lo, hi in gaps:
        for s in seen[bisect_left(seen, lo):bisect_right(seen, hi)]:
            if s > lo:
                out.append([lo, s - 1])
            lo = s + 1
        if lo <= hi:
            out.append([lo, hi])
    return out
