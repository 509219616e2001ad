"""What /metrics reads from the database: gauges aggregated at scrape time, and the
task-lifecycle rollup (`metric_cursors` + `metric_values`, migration 0008) that one node at a
time folds new task events into. Both dialects; see creep.api.metrics for the design."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

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

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MARKS_WHERE = ("to_status IN ('QUEUED', 'RUNNING') "
                "AND (from_status IS NULL OR from_status <> to_status)")


class MetricsGauges:
    """Scrape-time aggregates, identical on every node."""

    def __init__(self) -> None:
        self.leases: list[tuple[str, int]] = []
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
        for _ in range(_FOLD_ATTEMPTS):
            conn = self._conn()
            conn.execute("BEGIN")  # one read snapshot for the cursor and everything step reads
            try:
                start = _fold_cursor(conn, name)
                cursor, deltas = step(start)
            finally:
                conn.execute("COMMIT")
            with self._write() as conn:
                if _fold_cursor(conn, name) == start:
                    _apply_sqlite(conn, name, cursor, deltas)
                    return True
        with self._write() as conn:  # still contended: fold under the write lock
            cursor, deltas = step(_fold_cursor(conn, name))
            _apply_sqlite(conn, name, cursor, deltas)
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
        g.leases = _pairs(conn.execute("SELECT status, count(*) FROM leases GROUP BY 1"))
        g.assets = _pairs(conn.execute("SELECT status, count(*) FROM assets GROUP BY 1"))
        # Amounts are exact decimal text (SUM would make floats): group equal amounts.
        acc: dict[tuple[str, str], list[Any]] = {}
        for entry_type, currency, amount, n in conn.execute(
            "SELECT entry_type, currency, amount, count(*) FROM ledger_entries GROUP BY 1, 2, 3"
        ):
            slot = acc.setdefault((entry_type, currency), [Decimal(0), 0])
            slot[0] += Decimal(amount) * n
            slot[1] += n
        g.ledger = [(k[0], k[1], v[0], v[1]) for k, v in sorted(acc.items())]
        return g


_FOLD_ATTEMPTS = 3


def _fold_cursor(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT cursor FROM metric_cursors WHERE name = ?", (name,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _pairs(rows: Iterator[Any]) -> list[tuple[str, int]]:
    return sorted((str(r[0]), int(r[1])) for r in rows)


def _apply_sqlite(conn: sqlite3.Connection, name: str, cursor: str | None, deltas: Deltas) -> None:
    conn.executemany(
        "INSERT INTO metric_values (name, labels, value) VALUES (?, ?, ?) "
        "ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value",
        [(k[0], k[1], v) for k, v in deltas.items()],
    )
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
            g.leases = _pairs(iter(conn.execute(
                "SELECT status, count(*) FROM leases GROUP BY 1").fetchall()))
            g.assets = _pairs(iter(conn.execute(
                "SELECT status, count(*) FROM assets GROUP BY 1").fetchall()))
            rows = conn.execute(
                "SELECT entry_type, currency, sum(amount), count(*) FROM ledger_entries "
                "GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
        g.ledger = [(r[0], r[1], Decimal(r[2]), int(r[3])) for r in rows]
        return g
