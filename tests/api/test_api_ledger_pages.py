"""GET /v1/ledger reads a bounded part of the ledger per page (an in-process app, both
backends): a filter no index serves (project_id, entry_type) ends a page short instead of
reading the tenant's every entry, and an admin's page across tenants merges each tenant's
first entries instead of sorting the whole ledger."""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from creep import Creep, FrozenClock
from creep.api.app import create_app
from creep.api.settings import Settings
from creep.client import Client
from creep.storage import asset_pages

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx
    from fastapi.testclient import TestClient

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "ledger-pages-admin-key-" + "x" * 24
ADMIN = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def app(db_url: str) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=FrozenClock(T0))
    yield creep_app
    creep_app.close()


@pytest.fixture
def api(app: Creep, db_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=db_url, admin_key=KEY, maintenance_interval_seconds=0)
    with TestClient(create_app(settings, store=app.store, clock=app.clock)) as client:  # type: ignore[arg-type]
        yield client


def _record(app: Creep, tenant: str, i: int, project: str = "main") -> str:
    return app.record_ledger_entry(
        entry_type="REVENUE", amount="1", currency="USD", tenant_id=tenant,
        project_id=project, occurred_at=T0 + timedelta(seconds=i)).entry_id


def _pages(api: TestClient, **params: Any) -> list[list[str]]:
    """The entry ids of each page, following next_cursor until it is null."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        r = api.get("/v1/ledger", headers=ADMIN,
                    params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        pages.append([e["entry_id"] for e in r.json()["items"]])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100


def test_a_project_filter_reads_a_bounded_part_of_the_tenant_per_page(
    app: Creep, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """project_id has no index: a page read the tenant's entries from the cursor until it
    found `limit` of the project, so a project with few entries (or none) read every entry
    of the tenant on each request (1,000,000 entries, 500,000 of the tenant: ~0.35 s on
    SQLite, ~0.15 s on PostgreSQL). A page now reads at most LEDGER_SCAN of them (here 50)
    (or `limit`, if more) and ends short, even empty, with a next_cursor; following it finds each entry once, and
    the SDK's iter_ledger does."""
    monkeypatch.setattr(asset_pages, "LEDGER_SCAN", 50)
    rare = []
    for i in range(300):
        if i in (5, 250):
            rare.append(_record(app, "acme", i, project="rare"))
        else:
            _record(app, "acme", i)
    _record(app, "other", 7, project="rare")  # another tenant's: never listed for acme

    pages = _pages(api, tenant_id="acme", project_id="rare", limit=10)
    assert pages[0] == [rare[0]]  # the first 50 entries held one of the project
    assert [e for page in pages for e in page] == rare
    assert len(pages) == 6  # 300 entries, 50 a page
    assert _pages(api, tenant_id="acme", project_id="nope", limit=10)[0] == []
    dense = _pages(api, tenant_id="acme", project_id="main", limit=100)
    # At least `limit` entries a page (here more than LEDGER_SCAN): short only by what the
    # filter left out of them.
    assert [len(p) for p in dense] == [99, 100, 99]

    with Client("http://testserver", KEY, transport=api._transport) as sdk:
        listed = [e.entry_id for e in sdk.iter_ledger(tenant_id="acme", project_id="rare",
                                                       page_size=100)]
    assert listed == rare
    r = api.get("/v1/ledger", headers=ADMIN,
                params={"tenant_id": "acme", "project_id": "rare", "format": "csv"})
    assert [line.split(",")[0] for line in r.text.splitlines()[1:]] == rare


def test_an_admin_page_across_tenants_merges_each_tenants_first_entries(
    app: Creep, api: TestClient, db_url: str, tmp_path: Any
) -> None:
    """An admin's GET /v1/ledger without tenant_id sorted the whole ledger for each page (no
    index orders all tenants' entries by time: 1,000,000 entries, ~0.16 s a page on both
    backends, and a CSV export a sort per 1,000 entries). Each tenant's entries are read
    through its (tenant_id, occurred_at) index and merged: the same pages, no statement
    scans ledger_entries."""
    written: list[tuple[int, str]] = []
    for i in range(90):
        tenant = ("acme", "other", "zeta")[i % 3 if i < 60 else 0]
        written.append((i, _record(app, tenant, i, project="rare" if i % 7 == 0 else "x")))
    every = [e for _, e in sorted(written)]
    statements: list[str] = []
    sqlite_db = db_url.startswith("sqlite")
    if sqlite_db:
        app.store._conn().set_trace_callback(statements.append)  # type: ignore[attr-defined]
    pages = _pages(api, limit=20)
    csv = api.get("/v1/ledger", headers=ADMIN, params={"format": "csv"}).text
    rare = _pages(api, project_id="rare", limit=5)
    listed = [e.entry_id for e in app.ledger_entries(limit=50)]
    if sqlite_db:
        app.store._conn().set_trace_callback(None)  # type: ignore[attr-defined]
    assert [e for page in pages for e in page] == every
    assert [len(p) for p in pages] == [20, 20, 20, 20, 10]
    assert [line.split(",")[0] for line in csv.splitlines()[1:]] == every
    assert [e for page in rare for e in page] == [e for i, e in sorted(written) if i % 7 == 0]
    assert listed == every[:50]
    if sqlite_db:
        plans = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            scans = [(sql, row[3]) for sql in statements if "FROM ledger_entries" in sql
                     for row in plans.execute(f"EXPLAIN QUERY PLAN {sql}")
                     if row[3].startswith("SCAN ledger_entries")]
        finally:
            plans.close()
        assert scans == []
