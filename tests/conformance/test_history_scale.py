"""Statements behind public calls whose cost grows with the size of a history table.

Each test runs a public call, captures the exact SQL it sent (SQLite: the connection's trace
callback; PostgreSQL: a wrapper around psycopg's Cursor.execute), and EXPLAINs that statement
on the same database: it must reach its rows through an index, not by reading (and sorting)
the whole table. No wall-clock time is measured, so a small data set is enough:

- SQLite has no statistics here (creep never runs ANALYZE), so its plan does not depend on the
  row count.
- PostgreSQL's plan is taken with `enable_seqscan = off`: a sequential scan then remains only
  when no index can serve the statement at all; a whole index read feeding a Sort (an index
  used only as a list of every row) is refused too.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import pytest

from creep import Creep, FrozenClock, TaskContext

HINTS = [{"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.*", "min_count": 1}]


# -- capturing and explaining ------------------------------------------------------------------


@contextmanager
def captured(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any]]]:
    """Every statement (with its parameters on PostgreSQL) sent while the block runs."""
    seen: list[tuple[str, Any]] = []
    if db_url.startswith("sqlite"):
        original = sqlite3.connect

        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = original(*args, **kwargs)
            conn.set_trace_callback(lambda sql: seen.append((sql, None)))
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect)
        yield seen
        return
    import psycopg

    execute = psycopg.Cursor.execute

    def wrapped(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        seen.append((query, params))
        return execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", wrapped)
    yield seen


def _text(query: Any, conn: Any = None) -> str:
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode()
    return str(query.as_string(conn))


def statements(seen: list[tuple[str, Any]], pattern: str) -> list[tuple[str, Any]]:
    found = [(q, p) for q, p in seen if re.search(pattern, _text(q), re.S | re.I)]
    assert found, f"no statement matching {pattern!r} was run"
    return found


def full_reads(
    db_url: str, query: Any, params: Any, table: str, seek: tuple[str, ...] = ()
) -> list[str]:
    """The plan lines that read all of `table` (empty when an index narrows the read). On
    SQLite with `seek` any SCAN of the table is refused; on PostgreSQL with `seek`, an index
    scan of the table must have an Index Cond on one of those columns (a whole index walked
    with a Filter is a full read too)."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            # The traced text has its parameters inlined already.
            plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + _text(query)).fetchall()]
        finally:
            conn.close()
        # "SCAN t" reads the whole table, "SCAN t USING INDEX i" the whole of an index:
        # unless `seek` is empty and the walk gives the ORDER BY (no temp b-tree), so a
        # LIMIT stops it after the page.
        sorts = any("TEMP B-TREE FOR ORDER BY" in line for line in plan)
        return [line for line in plan if re.match(rf"SCAN {table}\b", line)
                and (sorts or seek or " USING " not in line)]
    import psycopg

    base, _, q = db_url.partition("?")
    schema = unquote(q).split("search_path=")[1]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET enable_seqscan = off")
        text = _text(query, conn)
        [[doc]] = conn.execute("EXPLAIN (FORMAT JSON) " + text, params).fetchall()
    bad: list[str] = []

    def walk(node: dict[str, Any], under_sort: bool) -> None:
        kind = node["Node Type"]
        if node.get("Relation Name") == table:
            if kind == "Seq Scan":
                bad.append(f"Seq Scan on {table}")
            elif kind in ("Index Scan", "Index Only Scan"):
                cond = node.get("Index Cond", "")
                if not cond and under_sort:
                    bad.append(f"{kind} of all of {node.get('Index Name')} feeding a Sort")
                elif seek and not any(c in cond for c in seek) and "task_id =" not in cond:
                    # (a lookup of one row by key, e.g. a dependant's status, is no full read)
                    bad.append(f"{kind} of all of {node.get('Index Name')} "
                               f"(Filter: {node.get('Filter')})")
            elif kind == "Bitmap Heap Scan" and seek and not any(
                    c in node.get("Recheck Cond", "") for c in seek):
                # (its Bitmap Index Scans name no relation: the heap scan's Recheck Cond
                # says what they sought)
                bad.append(f"{kind} of {table} (Filter: {node.get('Filter')})")
        for child in node.get("Plans", []):
            walk(child, under_sort or kind in ("Sort", "Incremental Sort"))

    walk((doc if isinstance(doc, list) else json.loads(doc))[0]["Plan"], False)
    return bad


def assert_indexed(
    db_url: str, seen: list[tuple[str, Any]], pattern: str, table: str,
    seek: tuple[str, ...] = (),
) -> None:
    for query, params in statements(seen, pattern):
        bad = full_reads(db_url, query, params, table, seek)
        assert not bad, f"{_text(query)[:400]}\n reads all of {table}: {bad}"


# -- a small history: hinted tasks leased, charged and finished, plain ones finished ------------


@pytest.fixture
def history(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    app = Creep(db_url, clock=clock)
    app.import_assets([{"sku_category": "RAW_NET", "sku_code": f"ip.residential.uk.{i}",
                        "attributes": {"geo": "GB"}, "max_concurrency": 4,
                        "cost_per_lease": "0.05", "currency": "USD"} for i in range(3)])

    @app.handler("SNIPE")
    async def snipe(ctx: TaskContext) -> None:
        await ctx.report_event("HTTP_PROBE_FAIL", http_status=403, latency_ms=5,
                               severity="WARN", retryable=True)
        await ctx.charge("0.30", description="captcha")

    @app.handler("ECHO")
    async def echo(ctx: TaskContext) -> None:
        return None

    app.submit_many([{"task_type": "SNIPE", "currency": "USD", "priority": i * 10,
                      "resource_hints": HINTS} for i in range(4)])
    app.submit_many([{"task_type": "ECHO", "priority": i * 10} for i in range(4)])
    app.run_worker(burst=True, install_signals=False, concurrency=4)
    yield app
    app.close()


def _fresh(db_url: str, clock: FrozenClock) -> Creep:
    return Creep(db_url, clock=clock)


def _snipe_task(app: Creep) -> str:
    return next(t.task_id for t in app.list_tasks(tenant_id="default", limit=100)
                if t.task_type == "SNIPE")


# -- 1. GET /v1/events?task_id= ----------------------------------------------------------------


def test_asset_event_page_by_task_reads_an_index(
    history: Creep, db_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = _snipe_task(history)
    with captured(db_url, monkeypatch) as seen:
        app = _fresh(db_url, clock)
        try:
            page = app.store.asset_events_page(task_id=task_id)  # GET /v1/events?task_id=
            assert page
        finally:
            app.close()
    assert_indexed(db_url, seen, r"FROM asset_events WHERE", "asset_events")


# -- 2. GET /v1/events (a tenant's events, optionally one event_type) ---------------------------


@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize("event_type", [None, "BANNED"])
def test_asset_event_page_of_a_tenant_reads_an_index(
    history: Creep, db_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch,
    event_type: str | None, newest_first: bool,
) -> None:
    """Oldest first, or newest first (?order=newest): either way an index walk."""
    with captured(db_url, monkeypatch) as seen:
        app = _fresh(db_url, clock)
        try:
            app.store.asset_events_page(tenant_id="default", event_type=event_type,
                                        newest_first=newest_first)
        finally:
            app.close()
    assert_indexed(db_url, seen, r"FROM asset_events WHERE", "asset_events")


# -- 3. GET /v1/tasks with an admin key (no tenant) ---------------------------------------------


def test_task_list_without_a_tenant_reads_an_index(
    history: Creep, db_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with captured(db_url, monkeypatch) as seen:
        app = _fresh(db_url, clock)
        try:
            assert app.list_tasks(limit=2)
        finally:
            app.close()
    assert_indexed(db_url, seen, r"FROM tasks WHERE .*ORDER BY created_at DESC", "tasks")


# -- 4. GET /v1/leases?asset_id= and a tenant's leases -----------------------------------------


@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize("by", ["asset_id", "tenant_id"])
def test_lease_list_by_asset_or_tenant_reads_an_index(
    history: Creep, db_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch, by: str,
    newest_first: bool,
) -> None:
    """Oldest first, or newest first (?order=newest): either way an index walk."""
    asset_id = history.list_assets()[0].asset_id
    with captured(db_url, monkeypatch) as seen:
        app = _fresh(db_url, clock)
        try:
            if by == "asset_id":
                app.store.lease_list(asset_id=asset_id, newest_first=newest_first)
            else:
                app.store.lease_list(tenant_id="default", limit=10, newest_first=newest_first)
        finally:
            app.close()
    assert_indexed(db_url, seen, r"FROM leases WHERE 1 = 1", "leases")


# -- 5. the task retention sweep ----------------------------------------------------------------


def test_task_retention_does_not_read_every_task(
    history: Creep, db_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is old enough: the sweep should cost nothing, not a read of all of tasks."""
    with captured(db_url, monkeypatch) as seen:
        app = _fresh(db_url, clock)
        try:
            assert app.store.retention_purge_tasks(clock.now() - timedelta(days=30)) == 0
        finally:
            app.close()
    assert_indexed(db_url, seen,
                   r"SELECT task_id, batch_id FROM tasks WHERE created_at < \S+ AND status IN",
                   "tasks",
                   seek=("finished_at", "created_at"))


# -- 6. the cooling sweep ---------------------------------------------------------------------


def test_cooling_sweep_reads_the_cooling_index(
    history: Creep, db_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every maintenance tick: on SQLite `ORDER BY asset_id LIMIT` walked the primary key over
    every asset (sold and archived ones included) instead of the few COOLING ones."""
    with captured(db_url, monkeypatch) as seen:
        app = _fresh(db_url, clock)
        try:
            app.maintain_assets()
        finally:
            app.close()
    assert_indexed(db_url, seen, r"FROM assets WHERE status = 'COOLING'", "assets",
                   seek=("cooldown_until",))


# -- 7. a tenant's audit log ---------------------------------------------------------------------


def test_audit_list_of_a_tenant_reads_an_index(
    history: Creep, db_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/audit with a tenant key: newest first, it walked every tenant's rows from the
    newest until the page was full of this tenant's."""
    from creep.ports_api import AuditFilter

    with captured(db_url, monkeypatch) as seen:
        app = _fresh(db_url, clock)
        try:
            app.store.audit_list(AuditFilter(tenant_id="default"), limit=5)  # type: ignore[attr-defined]
        finally:
            app.close()
    assert_indexed(db_url, seen, r"FROM audit_events WHERE", "audit_events",
                   seek=("tenant_id",))
