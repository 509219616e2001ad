"""POST /v1/ledger with a client-chosen entry_id (an in-process app, both backends): sent
again after a lost answer it answers the entry written the first time (200 +
Idempotent-Replayed, nothing written, not even an audit row), another entry under that id
is a 409, and a resend racing the first send is told apart by the unique entry_id."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from creep import Creep
from creep.domain.errors import ConflictError, ValidationError
from creep.domain.ids import uuid7
from creep.storage.asset_base import LEDGER_COLS
from tests.api.inprocess import ADMIN, T0, TestClient


def _entry(**fields: Any) -> dict[str, Any]:
    return {"tenant_id": "acme", "entry_type": "REVENUE", "amount": "2.50",
            "currency": "USD", "project_id": "web", **fields}


def _entries(api: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = api.get("/v1/ledger", headers=ADMIN, params={"tenant_id": "acme", **params})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_the_same_entry_sent_again_answers_the_first_one(api: TestClient) -> None:
    entry_id = uuid7()
    first = api.post("/v1/ledger", headers=ADMIN, json=_entry(entry_id=entry_id))
    assert first.status_code == 201, first.text
    assert first.json()["entry_id"] == entry_id
    assert "idempotent-replayed" not in first.headers
    # Sent again (its answer lost), the amount written another way, the id in upper case.
    again = api.post("/v1/ledger", headers=ADMIN,
                     json=_entry(entry_id=entry_id.upper(), amount="2.5"))
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert [e["entry_id"] for e in _entries(api)] == [entry_id]
    # One audit row: the replay wrote nothing at all.
    audit = api.get("/v1/audit", headers=ADMIN, params={"resource_id": entry_id}).json()
    assert [a["action"] for a in audit["items"]] == ["created"]
    # Without an entry_id every request is a new entry, as before.
    assert api.post("/v1/ledger", headers=ADMIN, json=_entry()).status_code == 201
    assert api.post("/v1/ledger", headers=ADMIN, json=_entry()).status_code == 201
    assert len(_entries(api)) == 3


@pytest.mark.parametrize("change", [
    {"amount": "2.51"}, {"entry_type": "REFUND"}, {"currency": "EUR"},
    {"description": "another"}, {"project_id": "api"},
    {"occurred_at": "2025-06-01T00:00:00+00:00"}, {"tenant_id": "other"},
])
def test_another_entry_under_the_same_id_is_a_conflict(
    api: TestClient, change: dict[str, Any]
) -> None:
    assert api.post("/v1/tenants", headers=ADMIN, json={"tenant_id": "other"}).status_code == 201
    entry_id = str(uuid.uuid4())
    first = api.post("/v1/ledger", headers=ADMIN, json=_entry(
        entry_id=entry_id, description="first", occurred_at=T0.isoformat()))
    assert first.status_code == 201, first.text
    r = api.post("/v1/ledger", headers=ADMIN, json={
        **_entry(entry_id=entry_id, description="first", occurred_at=T0.isoformat()),
        **change})
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["type"].endswith("/idempotency-conflict")
    assert [e["field"] for e in problem["errors"]] == ["entry_id"]
    assert first.json()["amount"] not in problem["detail"]  # another tenant learns nothing
    assert [e["entry_id"] for e in _entries(api)] == [entry_id]
    assert _entries(api, tenant_id="other") == []


def test_an_entry_id_that_is_not_a_uuid_is_refused(api: TestClient) -> None:
    for bad in ("", "entry-1", "1" * 65, 7):
        r = api.post("/v1/ledger", headers=ADMIN, json=_entry(entry_id=bad))
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["entry_id"]
    assert _entries(api) == []
    # null: an entry_id of the server's.
    assert api.post("/v1/ledger", headers=ADMIN, json=_entry(entry_id=None)).status_code == 201


def test_a_replay_reads_what_was_written_even_over_the_budget_now(api: TestClient) -> None:
    """The first send took the task to its max_total_cost: sent again, it is that entry
    (200), not a second cost over the budget (a 409 budget-exceeded)."""
    task = api.post("/v1/tasks", headers=ADMIN, json={
        "task_type": "SPEND", "tenant_id": "acme", "max_total_cost": "10"}).json()
    body = _entry(entry_id=uuid7(), entry_type="ADJUSTMENT", amount="8",
                  task_id=task["task_id"], project_id=None)
    assert api.post("/v1/ledger", headers=ADMIN, json=body).status_code == 201
    again = api.post("/v1/ledger", headers=ADMIN, json=body)
    assert again.status_code == 200, again.text
    assert again.json()["project_id"] == task["project_id"]
    over = api.post("/v1/ledger", headers=ADMIN, json={**body, "entry_id": uuid7()})
    assert over.status_code == 409 and over.json()["type"].endswith("/budget-exceeded")
    assert [Decimal(e["amount"]) for e in _entries(api, task_id=task["task_id"])] == [
        Decimal(8)]


def _insert_uncommitted(db_url: str, app: Creep, entry_id: str) -> Any:
    """A first send of `entry_id` whose transaction has not committed yet (its row written,
    the unique entry_id taken): the open connection, to commit."""
    d = app.store._adialect  # type: ignore[attr-defined]
    row = (entry_id, "acme", "web", None, None, None, "REVENUE", d.dec(Decimal("2.50")),
           "USD", None, d.ts(T0), d.ts(T0))
    sql = f"INSERT INTO ledger_entries ({LEDGER_COLS}) VALUES ({', '.join('?' * 12)})"
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql, row)
        return conn
    pg = psycopg.connect(db_url)
    pg.execute(d.q(sql), row)
    return pg


def _waiting_on_the_entry(db_url: str) -> bool:
    if db_url.startswith("sqlite"):
        return True  # the request waits for the write lock: nothing to see
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'INSERT INTO ledger_entries%'").fetchone()
    return bool(row and row[0])


def test_a_resend_racing_the_first_send_is_the_replay(
    api: TestClient, app: Creep, db_url: str
) -> None:
    """The first send's transaction is still open when the resend arrives: the resend finds
    no entry yet, its insert meets the first send's entry_id in the unique index and waits
    for it; once the first send commits, the resend answers its entry (a 200, not a 503 for a
    unique violation, nor a second entry)."""
    entry_id = uuid7()
    first = _insert_uncommitted(db_url, app, entry_id)
    answers: list[httpx.Response] = []
    resend = threading.Thread(target=lambda: answers.append(
        api.post("/v1/ledger", headers=ADMIN, json=_entry(entry_id=entry_id))))
    try:
        resend.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_the_entry(db_url) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _waiting_on_the_entry(db_url)
        time.sleep(0.1)
        first.commit()
    finally:
        first.close()
    resend.join(30)
    [r] = answers
    assert r.status_code == 200, r.text
    assert r.headers["idempotent-replayed"] == "true"
    assert [e["entry_id"] for e in _entries(api)] == [entry_id]


def test_the_python_api_takes_an_entry_id(app: Creep) -> None:
    entry_id = str(uuid.uuid4())
    first = app.record_ledger_entry(entry_type="REVENUE", amount="3", currency="USD",
                                    entry_id=entry_id)
    assert first.entry_id == entry_id
    again = app.record_ledger_entry(entry_type="REVENUE", amount="3.000", currency="USD",
                                    entry_id=entry_id)
    assert again == first
    with pytest.raises(ConflictError):
        app.record_ledger_entry(entry_type="REVENUE", amount="4", currency="USD",
                                entry_id=entry_id)
    with pytest.raises(ValidationError) as exc:
        app.record_ledger_entry(entry_type="REVENUE", amount="4", currency="USD",
                                entry_id="nope")
    assert [f for f, _ in exc.value.errors] == ["entry_id"]
    assert [e.entry_id for e in app.ledger_entries()] == [entry_id]
