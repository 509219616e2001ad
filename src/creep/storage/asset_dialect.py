"""The few ways SQLite and PostgreSQL differ for the asset tables, behind one small class.

The asset SQL (storage/asset_store.py) is written once with `?` placeholders; each backend
hands it a dialect that converts placeholders and values.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any

import orjson

from creep.storage.common import SQLITE_EVENTS_OF
from creep.storage.sqlite_bulk import insert_rows

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UUIDISH = re.compile(r"[0-9a-fA-F,-]*")
#: The claim's fixed assignments (what the plain claim sets too); deadline_at is computed
#: from the row's timeout_ms by each backend.
_CLAIM_SET = (
    "status = 'RUNNING', attempt = attempt + 1, started_at = {now}, updated_at = {now}, "
    "claimed_by = {worker}, claim_token = {token}, claim_expires_at = {expires}, "
    "task_version = task_version + 1, progress_message = NULL, "
)
# Chunks of a multi-row UPDATE on SQLite: well under its 32766 bound variables.
_MAX_VARIABLES = 30_000
_MAX_ROWS = 500


def _same_in_all(rows: Sequence[Sequence[Any]], i: int) -> bool:
    """Whether column `i` holds one value (of one type: 1, 1.0 and True are not one) in
    every row. Most columns that vary differ already in the last row."""
    first = rows[0][i]
    if rows[-1][i] != first:
        return False
    column = list(map(itemgetter(i), rows))
    return column.count(first) == len(column) and len(set(map(type, column))) == 1


def _constants_fixed(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], fixed: Sequence[tuple[str, Any]]
) -> tuple[Sequence[str], Sequence[Sequence[Any]], Sequence[tuple[str, Any]]]:
    """Columns with one value in every row become fixed (bound once per statement, not once
    per row). Binding is most of a routine row's cost on SQLite: ~0.35 us a string, and a
    None ~0.6 us (Python's sqlite3 first looks for an adapter), while a claim's rows share
    their tenant, env, event type, statuses, context, cost and currency."""
    same = [i for i in range(len(columns)) if _same_in_all(rows, i)]
    if not same or len(same) == len(columns):
        return columns, rows, fixed
    keep = [i for i in range(len(columns)) if i not in same]
    pick = itemgetter(*keep) if len(keep) > 1 else (lambda r: (r[keep[0]],))
    return (
        [columns[i] for i in keep], list(map(pick, rows)),
        [*fixed, *((columns[i], rows[0][i]) for i in same)],
    )


@functools.lru_cache(maxsize=4096)
def _from_us(value: int) -> datetime:
    """Stored microseconds -> datetime, remembered: the rows one statement reads share a few
    instants (a claim stamps all its leases with one acquired_at and expires_at), and a
    cache hit costs ~0.05 us against ~1.4 us for the timedelta arithmetic."""
    return _EPOCH + timedelta(microseconds=value)


@functools.cache
def _compact_claim_row() -> tuple[str, int, int, int]:
    """The plain claim's RETURNING list (its fields, then the row as JSON; defined once in
    sqlite_store, imported on first use as that module imports this one) and where tenant_id,
    attempt and priority sit in it."""
    from creep.storage.sqlite_store import _COMPACT, _ROW_JSON

    return (f"{', '.join(_COMPACT)}, {_ROW_JSON}", _COMPACT.index("tenant_id"),
            _COMPACT.index("attempt"), _COMPACT.index("priority"))


@functools.cache
def _pg_compact_claim_row() -> tuple[str, str]:
    """The PostgreSQL plain claim's RETURNING list (with tenant_id) and its compact SELECT
    list (defined in postgres_store, imported on first use as that module imports this one)."""
    from creep.storage.postgres_store import _CLAIM_COMPACT, _CLAIM_RETURNING

    return _CLAIM_RETURNING, _CLAIM_COMPACT


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class SqliteDialect:
    name = "sqlite"
    lock = ""
    skip_locked = ""
    #: Where QUEUED tasks are found in claim order: here tasks itself (alias t, and `qa` names
    #: the alias holding status, priority, created_at, run_after, has_hints, task_type).
    queue_from = "tasks t"
    qa = "t"
    queue_table = "tasks"  # the table `qa` aliases
    skip_locked_t = ""
    #: What a condition on asset_events.correlation_id starts with for the correlation index
    #: (task_priority, correlation_id, occurred_at) to serve it (SQLite migration 0011).
    by_correlation = SQLITE_EVENTS_OF + " "

    #: cost_per_lease as something to order by (SQLite keeps the exact decimal as text).
    cost_order = "CAST(cost_per_lease AS REAL)"

    #: The leases of tasks named by key (t.task_id IN ...), joined with their tasks: through
    #: each task's lease_ids (every lease a claim of it took) to the leases' primary key.
    #: The by-task index would take a seek per priority and task (migration 0013).
    leases_of_tasks = (
        "tasks t JOIN json_each(t.lease_ids) j JOIN leases l ON l.lease_id = j.value "
        "AND l.task_id = t.task_id"
    )
    #: The leases (l) of claims, with their tasks (t): two parameters, the claims' task ids
    #: and their tokens (as separate sets: a caller keeps only the pairs it named).
    leases_of_claims = (
        f"{leases_of_tasks} AND t.task_id IN (SELECT value FROM json_each(?)) "
        "AND l.claim_token IN (SELECT value FROM json_each(?))"
    )
    #: The same leases without their tasks (l only), as a FROM and WHERE clause a caller may
    #: add conditions to (AND ...).
    claims_leases = (
        f"leases l WHERE {SQLITE_EVENTS_OF} l.task_id IN (SELECT value FROM json_each(?)) "
        "AND l.claim_token IN (SELECT value FROM json_each(?))"
    )

    #: What a condition on task_id of leases or ledger_entries starts with for their by-task
    #: index (task_priority, task_id) to serve it (SQLite migration 0013).
    by_task = SQLITE_EVENTS_OF + " "
    #: How a ledger filter on tenant_id is written next to a task_id one: `+` keeps SQLite
    #: (no statistics) off the tenant index, which it preferred to the by-task one and so
    #: read every entry of the tenant to find one task's.
    tenant_beside_task = "+tenant_id"

    #: Leases and ledger entries record their task's priority (SQLite migration 0013).
    task_priority_column = True
    #: What the hinted claim reads to find a task row again (PostgresDialect.row_key): not
    #: needed here, where the claim's UPDATE joins by task_id (by rowid it measured slower:
    #: the pairs' JSON costs more to unpack than the index lookups it saves).
    row_key = "NULL"

    def q(self, sql: str) -> str:
        return sql

    def ts(self, dt: datetime | None) -> int | None:
        if dt is None:
            return None
        delta = dt - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    def from_ts(self, value: Any) -> datetime | None:
        return None if value is None else _from_us(value)

    def js(self, value: Any) -> str:
        return orjson.dumps(value, default=_json_default).decode()

    def from_js(self, value: Any) -> Any:
        return orjson.loads(value)

    #: A JSON value in a row for bulk_insert / bulk_update.
    bulk_js = js

    def dec(self, value: Decimal | None) -> str | None:
        """Positional, as PostgreSQL's numeric prints it ('1000', not '1E+3')."""
        return None if value is None else format(value, "f")

    def from_dec(self, value: Any) -> Decimal:
        return Decimal(value)

    def in_ids(self, column: str) -> str:
        return f"{column} IN (SELECT value FROM json_each(?))"

    def ids(self, values: Sequence[str]) -> str:
        return orjson.dumps(list(values)).decode()

    in_texts = in_ids
    texts = ids

    def plus_ms(self, ts_sql: str, ms_sql: str) -> str:
        return f"({ts_sql} + {ms_sql} * 1000)"

    def later(self, a_sql: str, b_sql: str) -> str:
        return f"max({a_sql}, {b_sql})"

    def overdue_lead(self, now: datetime) -> tuple[str, list[Any]]:
        """What the NO_RESOURCE sweep's condition starts with: nothing here (it walks the
        hinted index of tasks)."""
        return "", []

    def attrs_filter(self, attrs: dict[str, Any]) -> tuple[str, list[Any]]:
        """SQL narrowing assets to those whose attributes may equal `attrs` (JSON equality;
        matching._static_fits re-checks): scalars by json_extract/json_type; objects, arrays
        and keys that do not fit a JSON path are left to the Python check."""
        sql: str = ""
        params: list[Any] = []
        for key, value in attrs.items():
            # Keys a JSON path cannot spell as they are stored (quotes, backslashes, control
            # characters: orjson escapes them) and integers SQLite cannot bind (beyond 64
            # bits) are left to the Python check, as objects and arrays are.
            if ('"' in key or "\\" in key or any(c < " " for c in key)
                    or isinstance(value, (dict, list))
                    or (isinstance(value, int) and not -(2**63) <= value < 2**63)):
                continue
            path = f'$."{key}"'
            if value is None:
                sql += " AND json_extract(attributes, ?) IS NULL"
                params.append(path)
            elif isinstance(value, bool):
                sql += " AND json_type(attributes, ?) = ?"
                params += [path, "true" if value else "false"]
            elif isinstance(value, (int, float)):
                sql += " AND json_type(attributes, ?) IN ('integer', 'real') " \
                       "AND json_extract(attributes, ?) = ?"
                params += [path, path, value]
            else:
                sql += " AND json_type(attributes, ?) = 'text' AND json_extract(attributes, ?) = ?"
                params += [path, path, str(value)]
        return sql, params

    def many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            conn.executemany(sql, rows)

    def pipeline(self, conn: Any) -> AbstractContextManager[Any]:
        return nullcontext()

    def claim_leased(
        self, conn: Any, new_leases: dict[str, list[str]], row_keys: Sequence[Any],
        worker_id: str, token: str, now: datetime, expires: datetime,
    ) -> Callable[[], list[Any]]:
        """QUEUED -> RUNNING for tasks whose leases were just taken (task_id -> the new
        lease ids, appended to tasks.lease_ids; `row_keys`: their rows' row_key, in the same
        order, unused here), with their `started` task events. Returns what fetches the
        claimed rows, in the plain claim's compact shape."""
        # The plain claim's compact rows (sqlite_store._COMPACT, then the row as one JSON
        # array, decoded only when a handler reads ctx.task): ~45 separate columns handed to
        # Python cost about as much as the update itself.
        returning, tenant_i, attempt_i, priority_i = _compact_claim_row()
        now_us = self.ts(now)
        rows = conn.execute(
            "WITH r(task_id, lease_ids) AS (SELECT key, value FROM json_each(?1)) "
            "UPDATE tasks SET "
            + _CLAIM_SET.format(now="?2", worker="?3", token="?4", expires="?5")
            + "deadline_at = ?2 + timeout_ms * 1000, cancel_requested = 0, "
            # Two compact JSON arrays joined: '["a"]' and '["b"]' make '["a","b"]'.
            "lease_ids = CASE WHEN json_array_length(tasks.lease_ids) = 0 THEN r.lease_ids "
            "ELSE substr(tasks.lease_ids, 1, length(tasks.lease_ids) - 1) || ',' || "
            "substr(r.lease_ids, 2) END "
            "FROM r WHERE tasks.task_id = r.task_id AND tasks.status = 'QUEUED' "
            f"RETURNING {returning}",
            (self.js(new_leases), now_us, worker_id, token, self.ts(expires)),
        ).fetchall()
        # With the task's priority, as the plain claim: the by-task index leads with it
        # (migration 0009), so one batch's events share pages instead of one page per task.
        self.bulk_insert(
            conn, "task_events", ("task_id", "tenant_id", "attempt", "payload", "task_priority"),
            [
                (r[0], r[tenant_i], r[attempt_i],
                 self.js({"worker_id": worker_id, "lease_ids": new_leases[r[0]]}),
                 r[priority_i])
                for r in rows
            ],
            fixed=[("event_type", "started"), ("from_status", "QUEUED"),
                   ("to_status", "RUNNING"), ("created_at", now_us)],
        )
        return lambda: rows

    def unprepared(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        return conn.execute(sql, params)

    def index_plans(self, conn: Any) -> Any:
        return None

    def restore_plans(self, conn: Any, saved: Any) -> None:
        pass

    def durable_commit(self, conn: Any) -> None:
        """Every SQLite commit is as durable as the URL says."""

    # Bulk writes are one multi-row statement per chunk, not executemany(): that steps once
    # per row and gives up the GIL around each step, and a worker's busy event loop then holds
    # it for a whole switch interval each time (see storage/sqlite_bulk.py).

    def bulk_insert(
        self, conn: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
        fixed: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Insert `rows` (values of `columns`); `fixed` (column, value) pairs are the same
        for every row and bound once per statement, not once per row."""
        if not rows:
            return
        per = max(1, min(_MAX_ROWS, (_MAX_VARIABLES - len(fixed)) // len(columns)))
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            self._insert_chunk(conn, table, *_constants_fixed(columns, chunk, fixed))

    @staticmethod
    def _insert_chunk(
        conn: Any, table: str, columns: Sequence[str], chunk: Sequence[Sequence[Any]],
        fixed: Sequence[tuple[str, Any]],
    ) -> None:
        if not fixed:
            insert_rows(conn, f"INSERT INTO {table} ({', '.join(columns)})", len(columns), chunk)
            return
        one = "(" + ", ".join("?" * len(columns)) + ")"
        # The fixed values' placeholders come first in the text, so first in the list.
        conn.execute(
            f"INSERT INTO {table} ({', '.join([*columns, *(c for c, _ in fixed)])}) SELECT "
            + ", ".join([*(f"column{i + 1}" for i in range(len(columns))), *("?" * len(fixed))])
            + f" FROM (VALUES {', '.join([one] * len(chunk))})",
            [v for _, v in fixed] + [value for row in chunk for value in row],
        )

    def bulk_update(
        self, conn: Any, table: str, key: str, columns: Sequence[str],
        rows: Sequence[Sequence[Any]], *, fixed: str = "", where: str = "",
    ) -> None:
        """rows hold the new values of `columns`, then the key: one UPDATE ... FROM a VALUES
        list per chunk."""
        if not rows:
            return
        names = [*columns, key]
        sets = ", ".join([*(f"{c} = r.{c}" for c in columns), *([fixed] if fixed else [])])
        one = "(" + ", ".join("?" * len(names)) + ")"
        per = max(1, min(_MAX_ROWS, _MAX_VARIABLES // len(names)))
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            conn.execute(
                f"WITH r({', '.join(names)}) AS (VALUES {', '.join([one] * len(chunk))}) "
                f"UPDATE {table} SET {sets} FROM r "
                f"WHERE {table}.{key} = r.{key}{' AND ' + where if where else ''}",
                [value for row in chunk for value in row],
            )


class PostgresDialect:
    name = "postgres"
    lock = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    #: task_queue (migration 0010) holds the status-driven indexes; the lock is taken on the
    #: tasks row, as every writer of tasks takes it first.
    queue_from = "task_queue q JOIN tasks t ON t.task_id = q.task_id"
    qa = "q"
    queue_table = "task_queue"
    skip_locked_t = " FOR UPDATE OF t SKIP LOCKED"
    by_correlation = ""  # the correlation index leads with correlation_id

    cost_order = "cost_per_lease"

    #: As SqliteDialect.leases_of_tasks; here the by-task index of leases serves it.
    leases_of_tasks = "leases l JOIN tasks t ON t.task_id = l.task_id"
    #: As SqliteDialect.leases_of_claims and claims_leases, by (task_id, claim_token) pairs:
    #: each pair is looked up by the by-task index. Asked as `l.task_id = ANY(...)`, the
    #: planner, on a leases table not analyzed yet (a new deployment's first minutes), read
    #: every lease ever taken (a heartbeat: a sequential scan; a completion: the by-asset
    #: index).
    _claim_pairs = "unnest(?::uuid[], ?::uuid[]) AS k(task_id, tok) JOIN leases l ON l.task_id = k.task_id"
    leases_of_claims = (
        f"{_claim_pairs} AND l.claim_token = k.tok JOIN tasks t ON t.task_id = k.task_id"
    )
    claims_leases = f"{_claim_pairs} WHERE l.claim_token = k.tok"

    by_task = ""  # leases' and ledger entries' by-task indexes lead with task_id
    tenant_beside_task = "tenant_id"  # the planner's statistics pick the by-task index

    task_priority_column = False
    #: The locked row version's ctid: the claim's UPDATE reads those rows by a TID scan
    #: instead of a primary-key descent per task (a 250-task claim: 250 buffer reads of
    #: tasks instead of 750).
    row_key = "t.ctid"

    def __init__(self) -> None:
        self._type_cache: dict[str, dict[str, str]] = {}

    def q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def ts(self, dt: datetime | None) -> datetime | None:
        return dt

    def from_ts(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]

    def js(self, value: Any) -> Any:
        return _jsonb()(value)

    def bulk_js(self, value: Any) -> Any:
        """Bulk rows travel as one JSON document: the value goes in as it is."""
        return value

    def from_js(self, value: Any) -> Any:
        return value

    def dec(self, value: Decimal | None) -> Decimal | None:
        return value

    def from_dec(self, value: Any) -> Decimal:
        return value if isinstance(value, Decimal) else Decimal(value)

    def in_ids(self, column: str) -> str:
        return f"{column} = ANY(?::uuid[])"

    def ids(self, values: Sequence[str]) -> str | list[str]:
        """An array parameter for `?::uuid[]`: one '{a,b,...}' literal, which the server
        parses, instead of a list psycopg dumps (and regex-checks) element by element.
        Anything but hex digits and dashes goes as a list, quoted by psycopg."""
        text = ",".join(map(str, values))
        if _UUIDISH.fullmatch(text) is None:
            return list(values)
        return "{" + text + "}"

    def in_texts(self, column: str) -> str:
        return f"{column} = ANY(?::text[])"

    def texts(self, values: Sequence[str]) -> list[str]:
        return list(values)

    def plus_ms(self, ts_sql: str, ms_sql: str) -> str:
        return f"({ts_sql} + {ms_sql} * interval '1 millisecond')"

    def later(self, a_sql: str, b_sql: str) -> str:
        return f"GREATEST({a_sql}, {b_sql})"

    def overdue_lead(self, now: datetime) -> tuple[str, list[Any]]:
        """The NO_RESOURCE sweep reads task_queue's index of overdue instants (migration
        0014; the row's own test on tasks follows) instead of every QUEUED hinted task."""
        return "q.no_resource_at <= ? AND ", [now]

    def attrs_filter(self, attrs: dict[str, Any]) -> tuple[str, list[Any]]:
        """SQL narrowing assets to those whose attributes may equal `attrs`: jsonb
        containment (exact for scalars, a superset for objects and arrays; a null means
        "missing or null" and is left to matching._static_fits, which re-checks all)."""
        present = {k: v for k, v in attrs.items() if v is not None}
        if not present:
            return "", []
        return " AND attributes @> ?::jsonb", [self.js(present)]

    def many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with conn.cursor() as cur:
                cur.executemany(sql, rows)

    def pipeline(self, conn: Any) -> AbstractContextManager[Any]:
        """Send the writes inside without waiting for each reply."""
        return conn.pipeline()  # type: ignore[no-any-return]

    # The lease paths look rows up by key (task_id / asset_id = ANY(...)) and walk
    # tasks_runnable_hinted in claim order. Right after a bulk enqueue (no statistics yet) the
    # planner picked sequential scans of all tasks and a bitmap scan plus sort of every queued
    # hinted task instead: milliseconds per batch, growing with the table. Both are ruled out
    # while those statements run (as the plain claim does for its own), then put back.

    def claim_leased(
        self, conn: Any, new_leases: dict[str, list[str]], row_keys: Sequence[Any],
        worker_id: str, token: str, now: datetime, expires: datetime,
    ) -> Callable[[], list[Any]]:
        """As SqliteDialect.claim_leased, in one statement (it may run inside a pipeline),
        returning the plain claim's compact rows (postgres_store._COMPACT and the row as
        JSON text: ~45 typed columns cost the claiming thread ~3x as much to parse).
        The tasks are found by the ctids their locked versions had when read (a TID scan;
        the locks keep those versions current). No `status = 'QUEUED'` here: this
        transaction read them QUEUED and holds their row locks."""
        returning, compact = _pg_compact_claim_row()
        cur = conn.execute(
            "WITH r AS (SELECT (e ->> 0)::tid AS tid, (e ->> 1)::uuid AS id, e -> 2 AS new "
            "FROM jsonb_array_elements(%(new)s::jsonb) AS e), "
            "claimed AS (UPDATE tasks t SET "
            + _CLAIM_SET.format(now="%(now)s", worker="%(w)s", token="%(tok)s",
                                expires="%(exp)s")
            + "deadline_at = %(now)s + t.timeout_ms * interval '1 millisecond', "
            "cancel_requested = false, lease_ids = t.lease_ids || r.new "
            "FROM r WHERE t.ctid = r.tid AND t.task_id = r.id "
            f"RETURNING {returning}, r.new AS new_leases), "
            "started AS (INSERT INTO task_events (task_id, tenant_id, event_type, from_status, "
            "to_status, attempt, payload, created_at) SELECT task_id, tenant_id, 'started', "
            "'QUEUED', 'RUNNING', attempt, jsonb_build_object('worker_id', %(w)s::text, "
            "'lease_ids', new_leases), %(now)s FROM claimed) "
            f"SELECT {compact} FROM claimed",
            {"new": orjson.dumps(
                [[str(k), *item] for k, item in zip(row_keys, new_leases.items(), strict=True)]
             ).decode(),
             "now": now, "w": worker_id, "tok": token, "exp": expires},
        )
        return cur.fetchall  # type: ignore[no-any-return]

    def unprepared(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        """Execute without a server-side prepared statement (psycopg prepares a statement
        after its fifth run): planned for these parameters each time. The settle join's
        generic plan cost ~14 ms of server CPU per 250 tasks instead of ~1.5."""
        return conn.execute(self.q(sql), params, prepare=False)

    def durable_commit(self, conn: Any) -> None:
        """This transaction's COMMIT waits for its WAL flush even when a plain claim set
        synchronous_commit off for it (postgres_store._CLAIM_COMMIT): leases, ledger charges
        and failed tasks are never lost once seen."""
        conn.execute("SET LOCAL synchronous_commit = on")

    def index_plans(self, conn: Any) -> Any:
        """Rule out sequential and bitmap scans for this transaction; returns what
        restore_plans needs (a cursor: it may run inside a pipeline)."""
        return conn.execute(
            "SELECT current_setting('enable_seqscan'), current_setting('enable_bitmapscan'), "
            "set_config('enable_seqscan', 'off', true), "
            "set_config('enable_bitmapscan', 'off', true)"
        )

    def restore_plans(self, conn: Any, saved: Any) -> None:
        seqscan, bitmapscan = saved.fetchone()[:2]
        conn.execute(
            "SELECT set_config('enable_seqscan', %s, true), "
            "set_config('enable_bitmapscan', %s, true)",
            (seqscan, bitmapscan),
        )

    # Bulk writes are one statement each: the rows travel as one JSON array of arrays (no
    # dict per row to build on the client), and each element is cast to its column's type.
    # The document is jsonb, parsed once: on a json value every `->> i` re-parses the row's
    # text up to element i, which made a 26-column asset event row cost ~4x as much.

    def _records(self, rows: Sequence[Sequence[Any]]) -> str:
        return orjson.dumps(rows, default=_pg_default).decode()

    def _row_source(self, conn: Any, table: str, columns: Sequence[str]) -> str:
        """`SELECT <typed columns> FROM jsonb_array_elements(%s::jsonb)`: one row per array."""
        types = self._types(conn, table)
        cols = ", ".join(
            f"(j.r -> {i}) AS {c}" if types[c] in ("jsonb", "json")
            else f"(j.r ->> {i})::{types[c]} AS {c}"
            for i, c in enumerate(columns)
        )
        return f"SELECT {cols} FROM jsonb_array_elements(%s::jsonb) AS j(r)"

    def bulk_insert(
        self, conn: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
        fixed: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """As SqliteDialect.bulk_insert: `fixed` values travel once, as parameters (and so do
        columns with one value in every row: fewer JSON elements to cast per row)."""
        if not rows:
            return
        types = self._types(conn, table)
        given = len(fixed)
        columns, rows, fixed = _constants_fixed(columns, rows, fixed)
        # A folded value of a JSON column is bound as jsonb, as its row element was read
        # (`j.r -> i`: a None there is JSON null, not SQL NULL).
        fixed = [*fixed[:given], *(
            (c, _jsonb()(v) if types[c] in ("jsonb", "json") else v) for c, v in fixed[given:]
        )]
        source = self._row_source(conn, table, columns)
        if fixed:
            source = source.replace(
                " FROM ", ", " + ", ".join(f"%s::{types[c]}" for c, _ in fixed) + " FROM ", 1
            )
        conn.execute(
            f"INSERT INTO {table} ({', '.join([*columns, *(c for c, _ in fixed)])}) {source}",
            (*(v for _, v in fixed), self._records(rows)),
        )

    def bulk_update(
        self, conn: Any, table: str, key: str, columns: Sequence[str],
        rows: Sequence[Sequence[Any]], *, fixed: str = "", where: str = "",
    ) -> None:
        if rows:
            sets = ", ".join([*(f"{c} = r.{c}" for c in columns), *([fixed] if fixed else [])])
            conn.execute(
                f"UPDATE {table} SET {sets} "
                f"FROM ({self._row_source(conn, table, [*columns, key])}) AS r "
                f"WHERE {table}.{key} = r.{key}{' AND ' + where if where else ''}",
                (self._records(rows),),
            )

    def _types(self, conn: Any, table: str) -> dict[str, str]:
        """Column types of a table (the same in every schema: one set of migrations)."""
        found = self._type_cache.get(table)
        if found is None:
            found = {
                name: kind for name, kind in conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                    (table,),
                ).fetchall()
            }
            self._type_cache[table] = found
        return found


@functools.cache
def _jsonb() -> Any:
    from psycopg.types.json import Jsonb  # psycopg is only needed on PostgreSQL

    return Jsonb


def _pg_default(value: Any) -> Any:
    if isinstance(value, _jsonb()):
        return value.obj
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


Dialect = SqliteDialect | PostgresDialect
