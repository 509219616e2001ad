"""POST /v1/assets with a client-chosen asset_id sent again (an in-process app, both
backends): the same create answers the asset (200 + Idempotent-Replayed, nothing written),
also once leases or updates changed what creep moves itself; another asset under that id is a
409 naming asset_id; a list import is replayed whole or refused; a resend racing its first
send is the replay."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from creep import Creep, FrozenClock, IdTaken
from creep.storage.asset_base import ASSET_COLS
from tests.api.inprocess import ADMIN, T0, TestClient

CREATE = {"tenant_id": "acme", "sku_category": "RAW_NET", "sku_code": "ip.uk.1",
          "attributes": {"geo": "uk", "tier": 1}, "cost_per_lease": "0.25",
          "currency": "EUR", "max_concurrency": 2}


def _create(api: TestClient, body: Any) -> httpx.Response:
    return api.post("/v1/assets", headers=ADMIN, json=body)


def _assets(api: TestClient) -> list[dict[str, Any]]:
    r = api.get("/v1/assets", headers=ADMIN, params={"tenant_id": "acme"})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def _events(api: TestClient, asset_id: str) -> list[str]:
    r = api.get(f"/v1/assets/{asset_id}/events", headers=ADMIN)
    assert r.status_code == 200, r.text
    return [e["event_type"] for e in r.json()["items"]]


def _conflict(r: httpx.Response, *fields: str) -> None:
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["type"].endswith("/idempotency-conflict")
    assert [e["field"] for e in problem["errors"]] == list(fields)


def test_the_same_create_sent_again_answers_the_asset(api: TestClient) -> None:
    asset_id = str(uuid.uuid4())
    first = _create(api, {**CREATE, "asset_id": asset_id})
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    # Sent again, written another way: defaults spelled out, the id in upper case, the
    # attributes in another order, the price with a trailing zero.
    again = _create(api, {**CREATE, "asset_id": asset_id.upper(), "status": "READY",
                          "health_score": 100, "cooldown_seconds": 0, "project_id": None,
                          "attributes": {"tier": 1.0, "geo": "uk"}, "cost_per_lease": "0.250"})
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["etag"] == '"1"'
    assert again.headers["location"] == f"/v1/assets/{asset_id}"
    assert again.json() == first.json()
    assert [a["asset_id"] for a in _assets(api)] == [asset_id]
    assert _events(api, asset_id) == ["IMPORTED"]
    audit = api.get("/v1/audit", headers=ADMIN, params={"resource_id": asset_id}).json()
    assert [a["action"] for a in audit["items"]] == ["created"]


@pytest.mark.parametrize("change", [
    {"sku_code": "ip.uk.2"}, {"sku_category": "GPU"}, {"attributes": {"geo": "us"}},
    {"attributes": {}}, {"attributes": {"geo": "uk", "tier": True}},
    {"attributes": {"geo": "uk", "tier": 1, "x": None}}, {"cost_per_lease": "0.26"}, {"currency": "USD"},
    {"max_concurrency": 1}, {"cooldown_seconds": 5}, {"project_id": "web"}, {"env": "dev"},
    {"status": "NEW"}, {"health_score": 90}, {"tenant_id": "other"},
])
def test_another_asset_under_the_same_id_is_a_conflict(
    api: TestClient, change: dict[str, Any]
) -> None:
    assert api.post("/v1/tenants", headers=ADMIN, json={"tenant_id": "other"}).status_code == 201
    asset_id = _create(api, CREATE).json()["asset_id"]
    r = _create(api, {**CREATE, "asset_id": asset_id, **change})
    _conflict(r, "asset_id")
    assert asset_id in r.json()["detail"] and "ip.uk.1" not in r.json()["detail"]
    [asset] = _assets(api)
    assert (asset["sku_code"], asset["version"]) == ("ip.uk.1", 1)
    assert _events(api, asset_id) == ["IMPORTED"]


def test_a_replay_after_leases_and_updates_compares_what_only_the_create_sets(
    api: TestClient, app: Creep, clock: FrozenClock
) -> None:
    """Leased since (IN_USE, in use 1, version 2), the same create answers the asset as it is
    now: status and health_score, which creep moves itself, are compared only while the
    asset is as created (version 1). An update of a field only the create and updates set
    makes it another asset."""
    asset_id = str(uuid.uuid4())
    body = {**CREATE, "asset_id": asset_id}
    assert _create(api, body).status_code == 201
    app.submit(task_type="USE", tenant_id="acme", currency="EUR",
               resource_hints=[{"sku_category": "RAW_NET", "sku_code": "ip.uk.1"}])
    claimed = api.post("/v1/workers/claim", headers=ADMIN, json={"task_types": ["USE"]})
    assert claimed.status_code == 200 and len(claimed.json()["items"]) == 1, claimed.text
    leased = _create(api, body)
    assert leased.status_code == 200, leased.text
    assert leased.headers["idempotent-replayed"] == "true"
    now = leased.json()
    assert (now["status"], now["current_concurrency"], now["version"]) == ("IN_USE", 1, 2)
    assert leased.headers["etag"] == '"2"'
    # Health and status changed by hand: still the same create.
    r = api.patch(f"/v1/assets/{asset_id}", headers={**ADMIN, "If-Match": '"2"'},
                  json={"health_score": 40})
    assert r.status_code == 200, r.text
    assert _create(api, body).status_code == 200
    # Another price since: the create no longer describes this asset.
    r = api.patch(f"/v1/assets/{asset_id}", headers={**ADMIN, "If-Match": '"3"'},
                  json={"cost_per_lease": "0.30"})
    assert r.status_code == 200, r.text
    _conflict(_create(api, body), "asset_id")
    assert _events(api, asset_id).count("IMPORTED") == 1


def test_a_list_import_is_replayed_whole_or_refused(api: TestClient) -> None:
    items = [{**CREATE, "asset_id": str(uuid.uuid4()), "sku_code": f"ip.uk.{i}"}
             for i in range(3)]
    first = _create(api, items)
    assert first.status_code == 201, first.text
    again = _create(api, items)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    # One item another asset: 409 naming it, nothing written.
    _conflict(_create(api, [items[0], {**items[1], "sku_code": "ip.de.1"}, items[2]]),
              "[1].asset_id")
    # Some items new: not a resend of that import; the existing items are named.
    new = {**CREATE, "asset_id": str(uuid.uuid4()), "sku_code": "ip.fr.1"}
    mixed = _create(api, [items[0], new, items[2]])
    _conflict(mixed, "[0].asset_id", "[2].asset_id")
    assert "new" in mixed.json()["errors"][0]["rule"]
    # A list of one: answered as a list.
    one = _create(api, [items[1]])
    assert one.status_code == 200 and one.json() == {"items": [first.json()["items"][1]]}
    assert sorted(a["sku_code"] for a in _assets(api)) == ["ip.uk.0", "ip.uk.1", "ip.uk.2"]


def _insert_uncommitted(db_url: str, app: Creep, asset_id: str) -> Any:
    """A first create of `asset_id` whose transaction has not committed yet: the open
    connection, to commit."""
    d = app.store._adialect  # type: ignore[attr-defined]
    row = (asset_id, "acme", None, None, "RAW_NET", "ip.uk.1", d.js({"geo": "uk", "tier": 1}),
           "READY", 2, 0, 100, 0, None, d.dec(Decimal("0.25")), "EUR", 1, d.ts(T0), d.ts(T0))
    sql = f"INSERT INTO assets ({ASSET_COLS}) VALUES ({', '.join('?' * 18)})"
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql, row)
        return conn
    pg = psycopg.connect(db_url)
    pg.execute(d.q(sql), row)
    return pg


def _waiting_on_the_asset(db_url: str) -> bool:
    if db_url.startswith("sqlite"):
        return True  # the request waits for the write lock: nothing to see
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'INSERT INTO assets%'").fetchone()
    return bool(row and row[0])


def test_a_resend_racing_the_first_create_is_the_replay(
    api: TestClient, app: Creep, db_url: str
) -> None:
    """The first create's transaction is still open when the resend arrives: the resend
    finds no asset, its insert meets the first create's asset_id in the primary key and
    waits; once the first create commits, the resend answers its asset (a 200, not a 503
    for a unique violation)."""
    asset_id = str(uuid.uuid4())
    first = _insert_uncommitted(db_url, app, asset_id)
    answers: list[httpx.Response] = []
    resend = threading.Thread(target=lambda: answers.append(
        _create(api, {**CREATE, "asset_id": asset_id})))
    try:
        resend.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_the_asset(db_url) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _waiting_on_the_asset(db_url)
        time.sleep(0.1)
        first.commit()
    finally:
        first.close()
    resend.join(30)
    [r] = answers
    assert r.status_code == 200, r.text
    assert r.headers["idempotent-replayed"] == "true"
    assert datetime.fromisoformat(r.json()["created_at"]) == T0  # the first create's
    assert [a["asset_id"] for a in _assets(api)] == [asset_id]


def test_the_python_api_replays_a_create_too(app: Creep) -> None:
    asset = app.create_asset(sku_category="RAW_NET", sku_code="ip.1")
    assert app.create_asset(sku_category="RAW_NET", sku_code="ip.1",
                            asset_id=asset.asset_id) == asset
    with pytest.raises(IdTaken) as exc:
        app.import_assets([{"sku_category": "RAW_NET", "sku_code": "ip.2"},
                           {"sku_category": "RAW_NET", "sku_code": "ip.3",
                            "asset_id": asset.asset_id}])
    assert [f for f, _ in exc.value.errors] == ["assets[1].asset_id"]
    assert len(app.list_assets()) == 1
