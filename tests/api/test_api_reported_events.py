"""POST /v1/events (and the SDK's report_event): what the control plane accepts of a reported
asset event and does because of it, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import httpx

from creep import Creep, FrozenClock
from tests.api.inprocess import ADMIN, TestClient


def _asset(app: Creep) -> str:
    return app.create_asset(sku_category="RAW_NET", sku_code="ip.uk.1",
                            tenant_id="acme").asset_id


def _report(api: TestClient, **body: object) -> httpx.Response:
    return api.post("/v1/events", json={"tenant_id": "acme", **body}, headers=ADMIN)


def test_an_occurred_at_past_the_allowed_skew_is_a_422_naming_it(
    api: TestClient, app: Creep, clock: FrozenClock
) -> None:
    aid = _asset(app)
    for when in ("2100-01-01T00:00:00Z", (clock.now() + timedelta(minutes=6)).isoformat()):
        r = _report(api, asset_id=aid, event_type="PROBE", occurred_at=when)
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["occurred_at"]
    assert [e.event_type for e in app.asset_events(asset_id=aid)] == ["IMPORTED"]
    ok = _report(api, asset_id=aid, event_type="PROBE",
                 occurred_at=(clock.now() + timedelta(minutes=4)).isoformat())
    assert ok.status_code == 201, ok.text
