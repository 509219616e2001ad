"""/metrics' ledger gauges (an in-process app, both backends): currencies are the tenants'
own strings, so the currency label is capped (CREEP_METRICS_MAX_CURRENCIES); the ledger, the
leases and the sold or archived assets are history that only grows, so a scrape must not read
them whole."""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from creep import Creep, FrozenClock
from creep.api.app import create_app
from creep.api.metrics import Metrics
from creep.api.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx
    from fastapi.testclient import TestClient

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "metrics-admin-key-" + "x" * 24
ADMIN = {"Authorization": f"Bearer {KEY}"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def api(db_url: str) -> Iterator[TestClient]:
    clock = FrozenClock(T0)
    app = Creep(db_url, clock=clock)
    settings = Settings(database_url=db_url, admin_key=KEY, maintenance_interval_seconds=0,
                        metrics_cache_seconds=0, metrics_max_currencies=3)
    try:
        with TestClient(create_app(settings, store=app.store, clock=clock)) as client:  # type: ignore[arg-type]
            r = client.post("/v1/tenants", json={"tenant_id": "acme"}, headers=ADMIN)
            assert r.status_code == 201, r.text
            yield client
    finally:
        app.close()


def _scrape(api: TestClient) -> Samples:
    r = api.get("/metrics")
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples
            if s.name.startswith("creep_ledger")}


def _post(api: TestClient, currency: str, amount: str, entry_type: str = "REVENUE") -> None:
    r = api.post("/v1/ledger", headers=ADMIN, json={
        "tenant_id": "acme", "entry_type": entry_type, "amount": amount, "currency": currency})
    assert r.status_code == 201, r.text


def test_currency_labels_are_capped_with_an_other_series(api: TestClient) -> None:
    """Any 3-4 capital letters are a currency, so a tenant could make up thousands, each
    adding ledger series on every node. Past CREEP_METRICS_MAX_CURRENCIES (3 here) the
    currencies with the most entries keep their own series and the rest are counted as
    currency="_other" (entries only: a sum over several currencies is no amount)."""
    for _ in range(3):
        _post(api, "USD", "0.1")
    _post(api, "USD", "0.2", "REFUND")
    for _ in range(2):
        _post(api, "EUR", "1.5")
    _post(api, "GBP", "2")
    _post(api, "GBP", "0.5", "ADJUSTMENT")
    for i in range(30):  # made up, one entry each
        _post(api, f"Q{chr(65 + i // 26)}{chr(65 + i % 26)}", "7")
    samples = _scrape(api)
    currencies = {dict(labels)["currency"] for _, labels in samples}
    assert currencies == {"USD", "EUR", "GBP", "_other"}

    def amount(entry_type: str, currency: str) -> float | None:
        return samples.get(("creep_ledger_amount", (("currency", currency),
                                                    ("entry_type", entry_type))))

    def entries(entry_type: str, currency: str) -> float | None:
        return samples.get(("creep_ledger_entries", (("currency", currency),
                                                     ("entry_type", entry_type))))

    assert amount("REVENUE", "USD") == pytest.approx(0.3)
    assert entries("REVENUE", "USD") == 3.0
    assert entries("REFUND", "USD") == 1.0
    assert amount("REVENUE", "EUR") == 3.0
    assert amount("ADJUSTMENT", "GBP") == 0.5
    assert entries("REVENUE", "_other") == 30.0
    assert amount("REVENUE", "_other") is None
    # The label stays bounded however many more are made up.
    for i in range(30, 60):
        _post(api, f"Q{chr(65 + i // 26)}{chr(65 + i % 26)}", "7")
    again = _scrape(api)
    assert {dict(labels)["currency"] for _, labels in again} == currencies
    assert again[("creep_ledger_entries", (("currency", "_other"),
                                           ("entry_type", "REVENUE")))] == 60.0


def _ledger(store: Any) -> Samples:
    """The ledger samples of one read of the database metrics (what /metrics renders)."""
    text = Metrics(store, cache_seconds=0).render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("creep_ledger")}


def _usd(samples: Samples) -> tuple[float | None, float | None]:
    key = (("currency", "USD"), ("entry_type", "REVENUE"))
    return samples.get(("creep_ledger_amount", key)), samples.get(("creep_ledger_entries", key))


def test_a_scrape_reads_only_the_ledger_entries_it_has_not_counted(tmp_path: Path) -> None:
    """Ledger entries are append-only and never purged, so summing them all on every scrape
    got slower forever; the totals are a rollup the scrape folds new entries into, read
    through the primary key (no statement of a scrape scans ledger_entries)."""
    url = f"sqlite:///{tmp_path}/creep.db"
    app = Creep(url, clock=FrozenClock(T0))
    try:
        for amount in ("0.1", "0.2", "0.000001"):
            app.record_ledger_entry(entry_type="REVENUE", amount=amount, currency="USD")
        statements: list[str] = []
        app.store._conn().set_trace_callback(statements.append)  # type: ignore[attr-defined]
        assert _usd(_ledger(app.store)) == (float(Decimal("0.300001")), 3.0)
        app.record_ledger_entry(entry_type="REVENUE", amount="0.3", currency="USD")
        assert _usd(_ledger(app.store)) == (float(Decimal("0.600001")), 4.0)
        app.store._conn().set_trace_callback(None)  # type: ignore[attr-defined]
        assert _full_scans(f"{tmp_path}/creep.db", statements) == []
    finally:
        app.close()


def _full_scans(path: str, statements: list[str]) -> list[tuple[str, str]]:
    """The statements that read all of a history table (leases, ledger entries, assets),
    with the step of their query plan that does."""
    plans = sqlite3.connect(path)
    try:
        return [(sql, row[3]) for sql in statements if sql.lstrip().startswith("SELECT")
                for row in plans.execute(f"EXPLAIN QUERY PLAN {sql}")
                if row[3] in ("SCAN leases", "SCAN ledger_entries", "SCAN assets")]
    finally:
        plans.close()


def test_a_scrape_counts_only_the_leases_held_now(tmp_path: Path) -> None:
    """Leases are never purged: counting them by status read every lease ever taken on every
    scrape. creep_leases counts the ACTIVE ones, through their partial index."""
    app = Creep(f"sqlite:///{tmp_path}/creep.db", clock=FrozenClock(T0))
    try:
        statements: list[str] = []
        app.store._conn().set_trace_callback(statements.append)  # type: ignore[attr-defined]
        text = Metrics(app.store, cache_seconds=0).render().decode()
        app.store._conn().set_trace_callback(None)  # type: ignore[attr-defined]
        leases = {tuple(s.labels.items()): s.value
                  for family in text_string_to_metric_families(text) for s in family.samples
                  if s.name == "creep_leases"}
        assert _full_scans(f"{tmp_path}/creep.db", statements) == []
        assert leases == {(("status", "ACTIVE"),): 0.0}
    finally:
        app.close()


def test_a_ledger_entry_that_commits_late_is_counted_once(pg_schema_url: str) -> None:
    """On PostgreSQL a ledger entry's seq can commit after a larger one: a scrape between
    the two must still count the first once it commits (and once only), and a seq whose
    transaction rolled back must not hold the rollup's cursor forever."""
    app = Creep(pg_schema_url, clock=FrozenClock(T0))
    insert = ("INSERT INTO ledger_entries (entry_id, tenant_id, entry_type, amount, currency, "
              "occurred_at, recorded_at) VALUES (gen_random_uuid(), 'default', 'REVENUE', "
              "%s, 'USD', now(), now())")
    try:
        app.store  # migrated  # noqa: B018
        with psycopg.connect(pg_schema_url) as late, psycopg.connect(pg_schema_url) as undone:
            late.execute(insert, (Decimal("0.1"),))  # its seq drawn, not committed
            undone.execute(insert, (Decimal("5"),))
            app.record_ledger_entry(entry_type="REVENUE", amount="0.2", currency="USD")
            assert _usd(_ledger(app.store)) == (0.2, 1.0)
            late.commit()
            undone.rollback()
            app.record_ledger_entry(entry_type="REVENUE", amount="0.3", currency="USD")
            for _ in range(3):
                assert _usd(_ledger(app.store)) == (0.6, 3.0)
        with psycopg.connect(pg_schema_url) as conn:
            row = conn.execute(
                "SELECT cursor FROM metric_cursors WHERE name = 'ledger_entries'").fetchone()
        assert row is not None and orjson.loads(row[0])["gens"] == []  # the rolled-back seq
    finally:
        app.close()


def test_a_scrape_counts_the_assets_in_use_or_usable_through_their_indexes(
    db_url: str, tmp_path: Path
) -> None:
    """creep_assets counted every asset by status on every scrape, the SOLD and ARCHIVED
    ones (history that only grows) included: a full read of the assets (1,000,000 of them,
    90 % sold or archived: ~0.7 s of each scrape on SQLite, ~0.14 s on PostgreSQL; ~0.03 s
    and ~0.04 s now). It counts the other statuses, each through a partial index (no
    statement of a scrape scans assets on SQLite)."""
    app = Creep(db_url, clock=FrozenClock(T0))
    try:
        made = app.import_assets([{"sku_category": "RAW_NET", "sku_code": f"ip.{i}",
                                   "max_concurrency": 1, "currency": "USD",
                                   "status": "NEW" if i == 4 else "READY"}
                                  for i in range(5)])
        app.sell_asset(made[0].asset_id)
        app.archive_asset(made[1].asset_id)
        app.ban_asset(made[2].asset_id)
        statements: list[str] = []
        if db_url.startswith("sqlite"):
            app.store._conn().set_trace_callback(statements.append)  # type: ignore[attr-defined]
        text = Metrics(app.store, cache_seconds=0).render().decode()
        if db_url.startswith("sqlite"):
            app.store._conn().set_trace_callback(None)  # type: ignore[attr-defined]
            assert _full_scans(db_url.removeprefix("sqlite:///"), statements) == []
        assets = {s.labels["status"]: s.value
                  for family in text_string_to_metric_families(text) for s in family.samples
                  if s.name == "creep_assets"}
        assert assets == {"BANNED": 1.0, "NEW": 1.0, "READY": 1.0}
    finally:
        app.close()
