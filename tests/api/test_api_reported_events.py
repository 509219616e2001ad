"""POST /v1/events (and the SDK's report_event): what the control plane accepts of a reported
asset event and does because of it, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from creep import Creep, FrozenClock
from creep.client import ApiProblem, Client
from tests.api.conftest import Server
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


def test_statuses_and_creep_s_own_event_types_are_422s_naming_the_field(
    api: TestClient, app: Creep
) -> None:
    aid = _asset(app)
    r = _report(api, asset_id=aid, event_type="PROBE", old_status="in_use",
                new_status="GONE")
    assert r.status_code == 422, r.text
    assert sorted(e["field"] for e in r.json()["errors"]) == ["new_status", "old_status"]
    for event_type in ("BANNED", "COOLING_START", "TASK_FAIL", "ALLOCATED"):
        r = _report(api, asset_id=aid, event_type=event_type, new_status="BANNED")
        assert r.status_code == 422, r.text
        [error] = r.json()["errors"]
        assert error["field"] == "event_type" and "written by creep" in error["rule"]
    assert [e.event_type for e in app.asset_events(asset_id=aid)] == ["IMPORTED"]
    assert app.get_asset(aid).status.value == "READY"


def test_a_reported_status_change_is_applied_and_listed_in_caused(
    api: TestClient, app: Creep
) -> None:
    aid = _asset(app)
    body = {"asset_id": aid, "event_type": "PROVIDER_BANNED", "old_status": "READY",
            "new_status": "BANNED", "provider_status": "BANNED", "event_id": str(uuid.uuid4())}
    r = _report(api, **body)
    assert r.status_code == 201, r.text
    # Sent again (a lost answer), though the asset is BANNED now: the first answer, again.
    again = _report(api, **body)
    assert (again.status_code, again.json()) == (200, r.json())
    assert again.headers["idempotent-replayed"] == "true"
    event, caused = r.json()["event"], r.json()["caused"]
    assert (event["old_status"], event["new_status"]) == ("READY", "BANNED")
    assert [(e["event_type"], e["causation_id"], e["source"]) for e in caused] == [
        ("BANNED", event["event_id"], "control_plane")]
    asset = api.get(f"/v1/assets/{aid}", headers=ADMIN).json()
    assert asset["status"] == "BANNED"
    chain = api.get(f"/v1/events/{caused[0]['event_id']}/chain", headers=ADMIN).json()
    assert [e["event_type"] for e in chain["items"]] == ["BANNED", "PROVIDER_BANNED"]

    # A stale view is a 409 and stores nothing; an illegal transition a 409 naming it.
    stale = _report(api, asset_id=aid, event_type="PROVIDER_CLEARED", old_status="COOLING",
                    new_status="READY")
    assert stale.status_code == 409 and "is BANNED, not COOLING" in stale.json()["detail"]
    illegal = _report(api, asset_id=aid, event_type="PROVIDER_SOLD", new_status="SOLD")
    assert illegal.status_code == 409, illegal.text
    assert illegal.json()["type"].endswith("illegal-transition")
    assert "new_status" in illegal.json()["detail"]
    assert "BANNED -> SOLD" in illegal.json()["detail"]
    in_use = _report(api, asset_id=aid, event_type="PROVIDER_BUSY", new_status="IN_USE")
    assert in_use.status_code == 422 and in_use.json()["errors"][0]["field"] == "new_status"
    assert [e.event_type for e in app.asset_events(asset_id=aid)] == [
        "IMPORTED", "PROVIDER_BANNED", "BANNED"]

    cleared = _report(api, asset_id=aid, event_type="PROVIDER_CLEARED", old_status="BANNED",
                      new_status="READY")
    assert cleared.status_code == 201, cleared.text
    assert [e["event_type"] for e in cleared.json()["caused"]] == ["UNBANNED"]
    assert app.get_asset(aid).status.value == "READY"


def _audit(api: TestClient, **params: str) -> list[dict[str, object]]:
    r = api.get("/v1/audit", headers=ADMIN, params=params)
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["items"]))  # oldest first


def test_a_reported_status_change_is_audited_as_an_operator_s_change_of_its_kind(
    api: TestClient, app: Creep
) -> None:
    """A report whose new_status changed the asset was audited only as `assetEvent`
    `reported`: GET /v1/audit?resource_type=asset&action=banned missed a ban a provider
    reported. The asset now gets the row an operator's change of that kind writes (banned,
    unbanned, archived; another status `updated`, as PATCH), its data naming the report."""
    aid = _asset(app)
    changes = [("PROVIDER_BANNED", "BANNED", "banned"), ("PROVIDER_CLEARED", "READY", "unbanned"),
               ("PROVIDER_COOLDOWN", "COOLING", "updated"),
               ("PROVIDER_RETIRED", "ARCHIVED", "archived")]
    reported = []
    for event_type, status, _ in changes:
        r = _report(api, asset_id=aid, event_type=event_type, new_status=status,
                    event_id=str(uuid.uuid4()), message=f"{status.lower()} by the provider")
        assert r.status_code == 201, r.text
        reported.append(r.json()["event"])
    rows = _audit(api, resource_type="asset", resource_id=aid)
    assert [r["action"] for r in rows] == [action for _, _, action in changes]
    for row, event, (event_type, status, _) in zip(rows, reported, changes, strict=True):
        assert row["data"] == {"reported_event_id": event["event_id"],
                               "event_type": event_type, "source": "external_provider",
                               "reason": f"{status.lower()} by the provider"}
        assert row["request_id"] is not None and row["tenant_id"] == "acme"
        diff = row["diff_object"]
        assert f'"status": "{event["old_status"]}"' in diff["old_object"].replace('":"', '": "')
        assert f'"status": "{status}"' in diff["new_object"].replace('":"', '": "')
    # Each report is still audited as reported, too.
    assert [r["resource"]["identifier"] for r in _audit(
        api, resource_type="assetEvent", action="reported")] == [
            e["event_id"] for e in reported]
    # An operator's ban reads the same way (action and resource).
    other = app.create_asset(sku_category="RAW_NET", sku_code="ip.uk.2",
                             tenant_id="acme").asset_id
    assert api.post(f"/v1/assets/{other}/ban", headers=ADMIN, json={}).status_code == 200
    [ban] = _audit(api, resource_type="asset", resource_id=other, action="banned")
    assert ban["resource"]["identifier"] == other

    # A report that changes no status (none stated, or the asset's own), a replay and a
    # refused report write no asset row.
    third = app.create_asset(sku_category="RAW_NET", sku_code="ip.uk.3",
                             tenant_id="acme").asset_id
    same = {"asset_id": third, "event_type": "PROVIDER_NOTICE", "new_status": "READY",
            "event_id": str(uuid.uuid4())}
    assert _report(api, **same).status_code == 201
    assert _report(api, **same).status_code == 200
    assert _report(api, asset_id=third, event_type="PROVIDER_NOTICE").status_code == 201
    assert _report(api, asset_id=third, event_type="PROVIDER_SOLD",
                   new_status="NEW").status_code == 409
    banned = {"asset_id": third.upper(), "event_type": "PROVIDER_BANNED", "new_status": "BANNED",
              "event_id": str(uuid.uuid4())}
    assert _report(api, **banned).status_code == 201
    assert _report(api, **banned).status_code == 200
    assert [r["action"] for r in _audit(api, resource_type="asset", resource_id=third)] == [
        "banned"]


def test_the_sdk_and_a_remote_worker_report_a_ban_that_revokes_every_lease(
    server: Server,
) -> None:
    """Over a real server: an SDK report stating BANNED revokes the leases two claimed tasks
    hold on the asset (`caused`: BANNED, then each LEASE_REVOKED); a remote worker's
    ctx.report_event (POST /v1/tasks/{id}/asset-events) does the same to its own lease."""
    _, key = server.tenant()
    category = f"NET_{uuid.uuid4().hex[:6]}"
    kind = f"HOLD_{uuid.uuid4().hex[:6]}"
    hints = [{"sku_category": category}]
    with Client(server.url, key) as c:
        with pytest.raises(ApiProblem) as bad:
            c.report_event("PROBE", str(uuid.uuid4()), new_status="banned")
        assert bad.value.status == 422 and bad.value.errors[0]["field"] == "new_status"
        asset = c.create_asset(sku_category=category, sku_code="ip.uk.1", max_concurrency=2)
        with pytest.raises(ApiProblem) as own:
            c.report_event("ASSET_BANNED", asset.asset_id)
        assert own.value.status == 422 and own.value.errors[0]["field"] == "event_type"
        with pytest.raises(ApiProblem) as ahead:
            c.report_event("PROBE", asset.asset_id,
                           occurred_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
        assert ahead.value.status == 422 and ahead.value.errors[0]["field"] == "occurred_at"

        tasks = [c.create_task(task_type=kind, resource_hints=hints) for _ in range(2)]
        assert len(c.claim([kind], max_tasks=2)) == 2
        leases = [c.list_leases(task_id=t.task_id)[0] for t in tasks]
        assert {x.status for x in leases} == {"ACTIVE"}
        with pytest.raises(ApiProblem) as stale:
            c.report_event("PROVIDER_BANNED", asset.asset_id, old_status="READY",
                           new_status="BANNED")
        assert stale.value.status == 409
        reported = c.report_event("PROVIDER_BANNED", asset.asset_id, old_status="IN_USE",
                                  new_status="BANNED", lease_id=leases[0].lease_id)
        assert (reported.event.old_status, reported.event.new_status) == ("IN_USE", "BANNED")
        caused = reported.caused
        assert [e.event_type for e in caused] == ["BANNED", "LEASE_REVOKED", "LEASE_REVOKED"]
        assert caused[0].causation_id == reported.event.event_id
        assert caused[0].task_id == tasks[0].task_id
        assert {e.causation_id for e in caused[1:]} == {caused[0].event_id}
        assert {c.list_leases(task_id=t.task_id)[0].status for t in tasks} == {"REVOKED"}
        assert c.get_asset(asset.asset_id).status == "BANNED"

        other = c.create_asset(sku_category=category, sku_code="ip.uk.2")
        task = c.create_task(task_type=kind, resource_hints=hints)
        [claimed] = c.claim([kind])
        assert claimed.task.task_id == task.task_id
    with server.client(key) as http:
        r = http.post(f"/v1/tasks/{task.task_id}/asset-events", json={
            "claim_token": claimed.claim_token, "event_type": "HTTP_403_BANNED",
            "new_status": "BANNED", "http_status": 403})
        assert r.status_code == 201, r.text
        assert [e["event_type"] for e in r.json()["caused"]] == ["BANNED", "LEASE_REVOKED"]
        assert r.json()["event"]["asset_id"] == other.asset_id
        r = http.post(f"/v1/tasks/{task.task_id}/asset-events", json={
            "claim_token": claimed.claim_token, "event_type": "UNBANNED",
            "asset_id": other.asset_id})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "event_type"
