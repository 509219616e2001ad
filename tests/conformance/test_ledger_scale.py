"""Ledger lists and summaries on a ledger of ~20,000 entries of other tenants and projects:
each statement reaches the asked-for entries through an index (EXPLAIN, as
test_history_scale.py does), and cursor pages stay exact while entries arrive."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pytest

from creep import Creep, FrozenClock
from tests.conformance.test_history_scale import _text, captured, statements

NOISE = 20_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)
US = 1_000_000


def _noise(db_url: str) -> None:
    """NOISE entries of 40 other tenants, 25 projects each, spread over 30 days, some tied
    to made-up tasks (written straight into the table: the public path is a transaction
    per entry)."""
    rows = []
    for i in range(NOISE):
        at = T0 + timedelta(seconds=(i * 131) % (30 * 86_400))
        rows.append((str(uuid.uuid4()), f"other{i % 40}", f"p{i % 25}",
                     str(uuid.uuid4()) if i % 3 == 0 else None,
                     ("COST", "REVENUE", "REFUND", "TASK_BURN", "ADJUSTMENT")[i % 5],
                     "0.1", "USD" if i % 2 else "EUR", at))
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        with conn:
            conn.executemany(
                "INSERT INTO ledger_entries (entry_id, tenant_id, project_id, task_id, "
                "entry_type, amount, currency, occurred_at, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r[:7], int((r[7] - epoch).total_seconds()) * US,
                  int((r[7] - epoch).total_seconds()) * US) for r in rows])
        conn.close()
        return
    import psycopg

    base, _, q = db_url.partition("?")
    schema = unquote(q).split("search_path=")[1]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ledger_entries (entry_id, tenant_id, project_id, task_id, "
                "entry_type, amount, currency, occurred_at, recorded_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(*r, r[7]) for r in rows])
        conn.execute("ANALYZE ledger_entries")


@pytest.fixture
def ledger(db_url: str, clock: FrozenClock) -> Iterator[tuple[Creep, str]]:
    app = Creep(db_url, clock=clock)
    app.ledger_summary()  # the ledger's tables exist
    _noise(db_url)
    task = app.submit(task_type="BILLED", tenant_id="acme", project_id="web", currency="USD")
    clock.advance(days=6)  # an entry's occurred_at is at most 5 minutes ahead of the clock
    for i in range(6):
        app.record_ledger_entry(entry_type="REVENUE", amount="1.5", currency="USD",
                                tenant_id="acme", project_id="web", task_id=task.task_id,
                                occurred_at=T0 + timedelta(days=i))
        app.record_ledger_entry(entry_type="ADJUSTMENT", amount="0.25", currency="EUR",
                                tenant_id="acme", project_id="api",
                                occurred_at=T0 + timedelta(days=i))
    yield app, task.task_id
    app.close()


def _plan(db_url: str, query: Any, params: Any) -> list[str]:
    """SQLite: the EXPLAIN QUERY PLAN lines. PostgreSQL (enable_seqscan off, as
    test_history_scale does): one line per scan of ledger_entries, `<node> <index> <cond>`."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + _text(query)).fetchall()]
        finally:
            conn.close()
    import psycopg

    base, _, q = db_url.partition("?")
    schema = unquote(q).split("search_path=")[1]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET enable_seqscan = off")
        [[doc]] = conn.execute("EXPLAIN (FORMAT JSON) " + _text(query, conn), params).fetchall()
    lines: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "ledger_entries":
            lines.append(f"{node['Node Type']} {node.get('Index Name')} "
                         f"{node.get('Index Cond', '')}")
        for child in node.get("Plans", []):
            walk(child)

    walk((doc if isinstance(doc, list) else json.loads(doc))[0]["Plan"])
    return lines


#: Filters of GET /v1/ledger and /v1/ledger/summary (a tenant key always names its tenant),
#: and the index each must be read through.
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "tenant": ({"tenant_id": "acme"}, "ledger_tenant_time"),
    "tenant_range": ({"tenant_id": "acme", "since": T0 + timedelta(days=2),
                      "until": T0 + timedelta(days=5)}, "ledger_tenant_time"),
    "project": ({"tenant_id": "acme", "project_id": "web"}, "ledger_tenant_time"),
    "task": ({"tenant_id": "acme", "task": True}, "ledger_task"),
    "task_range": ({"tenant_id": "acme", "task": True, "since": T0 + timedelta(days=1)},
                   "ledger_task"),
    "task_admin": ({"task": True}, "ledger_task"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ledger_pages_and_summaries_read_an_index(
    ledger: tuple[Creep, str], db_url: str, case: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each statement seeks `index`, and a page after a cursor seeks from the cursor's
    occurred_at (not from the start of the tenant's entries, a filter then dropping every
    row of the pages before: a read that grew with each page)."""
    app, task_id = ledger
    filters, index = CASES[case]
    q = dict(filters)
    if q.pop("task", False):
        q["task_id"] = task_id
    with captured(db_url, monkeypatch) as seen:
        fresh = Creep(db_url, clock=app.clock)
        try:
            first = fresh.store.ledger_page(**q, limit=2)  # type: ignore[attr-defined]
            second = fresh.store.ledger_page(  # type: ignore[attr-defined]
                **q, after=first.next_cursor, limit=2)
            summary = fresh.store.ledger_summary_grouped(  # type: ignore[attr-defined]
                ["project_id", "task_id"], **q)
            totals = fresh.ledger_summary(**q)
            listed = fresh.ledger_entries(**q)
        finally:
            fresh.close()
    assert len(first.items) == 2 and second.items and summary and totals and listed
    for query, params in statements(seen, r"FROM ledger_entries WHERE"):
        plan = _plan(db_url, query, params)
        text = _text(query)
        assert plan and all(index in line for line in plan
                            if "ledger_entries" in line or not db_url.startswith("sqlite")), (
            f"{text[:300]}\n does not seek {index}: {plan}")
        if " OR (occurred_at = " in text and index == "ledger_tenant_time":
            assert all("occurred_at" in line for line in plan), (
                f"{text[:300]}\n a page after a cursor starts at the tenant's first "
                f"entry: {plan}")
