"""/metrics' ledger gauges (an in-process app, both backends): currencies are the tenants'
own strings, so the currency label is capped (CREEP_METRICS_MAX_CURRENCIES)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from creep import Creep, FrozenClock
from creep.api.app import create_app
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
