"""GET /v1/ledger and /v1/ledger/summary (an in-process app, both backends): summaries are
exact decimals, whatever the backend stores, and cursor pages neither skip nor repeat an
entry while others arrive between pages."""

from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from creep import Creep, FrozenClock
from creep.api.app import create_app
from creep.api.settings import Settings
from creep.domain.errors import ValidationError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx
    from fastapi.testclient import TestClient

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "ledger-admin-key-" + "x" * 24
ADMIN = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def api(db_url: str) -> Iterator[TestClient]:
    clock = FrozenClock(T0)
    app = Creep(db_url, clock=clock)
    settings = Settings(database_url=db_url, admin_key=KEY, maintenance_interval_seconds=0)
    try:
        with TestClient(create_app(settings, store=app.store, clock=clock)) as client:  # type: ignore[arg-type]
            for tenant in ("acme", "other"):
                r = client.post("/v1/tenants", json={"tenant_id": tenant}, headers=ADMIN)
                assert r.status_code == 201, r.text
            yield client
    finally:
        app.close()


def _post(api: TestClient, entry_type: str, amount: str, *, tenant: str = "acme",
          project: str = "web", at: datetime = T0, currency: str = "USD") -> str:
    r = api.post("/v1/ledger", headers=ADMIN, json={
        "tenant_id": tenant, "project_id": project, "entry_type": entry_type,
        "amount": amount, "currency": currency, "occurred_at": at.isoformat()})
    assert r.status_code == 201, r.text
    return str(r.json()["entry_id"])


def _summary(api: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = api.get("/v1/ledger/summary", headers=ADMIN, params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_summaries_are_exact_decimals_with_mixed_signs(api: TestClient) -> None:
    """0.1 + 0.2 summed as floats is 0.30000000000000004, and 0.1 added ten times is
    0.9999999999999999: SQLite keeps amounts as text, which SUM() would sum as floats.
    REFUND lowers cost and a negative ADJUSTMENT too; margin = revenue - cost, exact."""
    for _ in range(10):
        _post(api, "REVENUE", "0.1")
        _post(api, "REVENUE", "0.2")
        _post(api, "ADJUSTMENT", "0.7")
        _post(api, "ADJUSTMENT", "-0.3")
        _post(api, "REFUND", "0.1", project="api")
    _post(api, "REVENUE", "123456789012345.000001", project="api")
    _post(api, "REVENUE", "0.000001", project="api")
    _post(api, "REVENUE", "99999.99", tenant="other")
    [usd] = _summary(api, tenant_id="acme")
    assert (Decimal(usd["cost"]), Decimal(usd["revenue"]), Decimal(usd["margin"])) == (
        Decimal("3"), Decimal("123456789012348.000002"), Decimal("123456789012345.000002"))
    assert usd["entries"] == 52
    by_project = {i["project_id"]: i for i in _summary(api, tenant_id="acme",
                                                        group_by="project_id,currency")}
    assert Decimal(by_project["web"]["revenue"]) == Decimal("3")
    assert Decimal(by_project["web"]["cost"]) == Decimal("4")
    assert Decimal(by_project["web"]["margin"]) == Decimal("-1")
    assert Decimal(by_project["api"]["cost"]) == Decimal("-1")
    assert Decimal(by_project["api"]["margin"]) == Decimal("123456789012346.000002")
    # A time range: the same exact sums over the entries inside it.
    [ranged] = _summary(api, tenant_id="acme", project_id="web",
                        **{"from": T0.isoformat(), "to": (T0 + timedelta(1)).isoformat()})
    assert Decimal(ranged["margin"]) == Decimal("-1")


def test_cursor_pages_skip_and_repeat_nothing_while_entries_arrive(api: TestClient) -> None:
    """Entries sharing one occurred_at are ordered by write order: a page ending inside such
    a run continues exactly after it, and entries written between pages (at the same instant,
    later, or of other tenants) neither shift nor repeat what was listed."""
    # An hour back: the entries added below, 5 minutes apart, stay before the server's time.
    start = T0 - timedelta(hours=1)
    before = [_post(api, "REVENUE", "1", at=start + timedelta(seconds=i // 4))
              for i in range(12)]
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    added: list[str] = []
    while True:
        params: dict[str, Any] = {"tenant_id": "acme", "limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        r = api.get("/v1/ledger", headers=ADMIN, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        if len(added) < 6:  # at the last listed entry's instant (after it), and later
            last = datetime.fromisoformat(seen[-1]["occurred_at"])
            added.append(_post(api, "REVENUE", "2", at=last))
            added.append(_post(api, "REVENUE", "3", at=last + timedelta(minutes=5)))
            _post(api, "REVENUE", "4", tenant="other", at=last)
    ids = [e["entry_id"] for e in seen]
    assert len(ids) == len(set(ids))
    assert set(before) <= set(ids) and set(added) <= set(ids)
    assert [i for i in ids if i in before] == before
    keys = [e["occurred_at"] for e in seen]
    assert keys == sorted(keys)
    assert all(e["tenant_id"] == "acme" for e in seen)


def test_an_amount_of_a_huge_negative_exponent_is_refused_without_writing_it_out(
    api: TestClient,
) -> None:
    """'1e-100000000' has more than 6 places: a 422, decided on its exponent. It was written
    out in digits first (a 100 MB string; '1e-999999999' took 2 GB and 6 s of the server)."""
    tracemalloc.start()
    try:
        r = api.post("/v1/ledger", headers=ADMIN, json={
            "tenant_id": "acme", "entry_type": "REVENUE", "amount": "1e-100000000",
            "currency": "USD"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["amount"]
    assert peak < 20_000_000


def test_an_occurred_at_past_the_allowed_skew_is_a_422_naming_it(api: TestClient) -> None:
    """A ledger entry's occurred_at is held to a reported asset event's bound: at most 5
    minutes after the server's time. Any year was taken (9999 too), and sat in every later
    summary's range for good."""
    for when in (datetime(9999, 1, 1, tzinfo=UTC), T0 + timedelta(minutes=5, seconds=1)):
        r = api.post("/v1/ledger", headers=ADMIN, json={
            "tenant_id": "acme", "entry_type": "REVENUE", "amount": "1", "currency": "USD",
            "occurred_at": when.isoformat()})
        assert r.status_code == 422, r.text
        [error] = r.json()["errors"]
        assert error["field"] == "occurred_at" and "after the server's time" in error["rule"]
    assert api.get("/v1/ledger", headers=ADMIN).json()["items"] == []
    # Up to the bound, and any past instant, still go in.
    _post(api, "REVENUE", "1", at=T0 + timedelta(minutes=5))
    _post(api, "REVENUE", "1", at=datetime(1990, 1, 1, tzinfo=UTC))


def test_the_python_api_holds_occurred_at_to_the_same_bound(db_url: str) -> None:
    clock = FrozenClock(T0)
    with Creep(db_url, clock=clock) as app:
        with pytest.raises(ValidationError) as caught:
            app.record_ledger_entry(entry_type="REVENUE", amount="1", currency="USD",
                                    occurred_at=datetime(9999, 1, 1, tzinfo=UTC))
        assert [name for name, _ in caught.value.errors] == ["occurred_at"]
        assert app.ledger_entries() == []
        entry = app.record_ledger_entry(entry_type="REVENUE", amount="1", currency="USD",
                                        occurred_at=T0 + timedelta(minutes=4))
        assert entry.occurred_at == T0 + timedelta(minutes=4)
