"""Ids in upper case (or braced, or without hyphens) name the same task, asset, lease, event
or artifact on both backends, through REST and the Python API: PostgreSQL's uuid columns
found them, SQLite (text) answered 404, empty lists and summaries, and stored a ledger
entry's upper-case task_id as written (then missing from the task's lower-case filter)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from creep import Creep, FrozenClock
from creep.domain.errors import NotFound
from tests.api.conftest import read_sse
from tests.api.inprocess import ADMIN, TestClient, acme_api


@pytest.fixture
def app(db_url: str, clock: FrozenClock, tmp_path: Path) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock, artifact_dir=tmp_path / "artifacts")
    yield creep_app
    creep_app.close()


@pytest.fixture
def api(app: Creep, db_url: str, clock: FrozenClock, tmp_path: Path) -> Iterator[TestClient]:
    with acme_api(app, db_url, clock, artifact_dir=str(tmp_path / "artifacts")) as client:
        yield client


def _leased_task(app: Creep, clock: FrozenClock) -> tuple[str, str, str]:
    """A RUNNING task of acme holding a kept lease on an asset: (task_id, asset_id, lease_id)."""
    [asset] = app.import_assets([{"sku_category": "RAW_NET", "sku_code": "ip.case.1",
                                  "tenant_id": "acme", "cost_per_lease": "1.5"}])
    task = app.submit(task_type="CASE", tenant_id="acme",
                      resource_hints=[{"sku_category": "RAW_NET"}],
                      constraints={"keep_leases": True})
    assert app.store.task_claim("w", ["CASE"], 1, clock.now(), 60.0)
    [lease] = app.list_leases(task_id=task.task_id)
    return task.task_id, asset.asset_id, lease.lease_id


def _ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def test_rest_reads_and_changes_by_an_upper_case_id(app: Creep, api: TestClient,
                                                    clock: FrozenClock) -> None:
    tid, aid, lid = _leased_task(app, clock)
    up_t, up_a, up_l = tid.upper(), aid.upper(), lid.upper()
    assert _ok(api.get(f"/v1/tasks/{up_t}", headers=ADMIN))["task_id"] == tid
    assert _ok(api.get(f"/v1/tasks/{{{up_t}}}", headers=ADMIN))["task_id"] == tid  # braced
    assert _ok(api.get(f"/v1/tasks/{tid.replace('-', '')}", headers=ADMIN))["task_id"] == tid
    # (PostgreSQL could not read this form: a 503 "database unavailable".)
    assert _ok(api.get(f"/v1/tasks/urn:uuid:{up_t}", headers=ADMIN))["task_id"] == tid
    events = _ok(api.get(f"/v1/tasks/{tid}/events", headers=ADMIN))["items"]
    assert _ok(api.get(f"/v1/tasks/{up_t}/events", headers=ADMIN))["items"] == events
    assert len(events) == 3
    # Filters: ledger (list and summary), leases, asset events.
    [cost] = _ok(api.get("/v1/ledger", headers=ADMIN, params={"task_id": up_t}))["items"]
    assert cost["task_id"] == tid and cost["amount"] == "1.5"
    [summary] = _ok(api.get("/v1/ledger/summary", headers=ADMIN,
                            params={"task_id": up_t}))["items"]
    assert summary["cost"] == "1.5"
    for params in ({"task_id": up_t}, {"asset_id": up_a}):
        [lease] = _ok(api.get("/v1/leases", headers=ADMIN, params=params))["items"]
        assert lease["lease_id"] == lid
    by_task = _ok(api.get("/v1/events", headers=ADMIN, params={"task_id": up_t}))["items"]
    assert [e["event_type"] for e in by_task] == ["ALLOCATED"]
    by_asset = _ok(api.get("/v1/events", headers=ADMIN, params={"asset_id": up_a}))["items"]
    assert len(by_asset) == 2
    assert len(_ok(api.get(f"/v1/assets/{up_a}/events", headers=ADMIN))["items"]) == 2
    chain = _ok(api.get(f"/v1/events/{by_task[0]['event_id'].upper()}/chain", headers=ADMIN))
    assert [e["event_id"] for e in chain["items"]] == [by_task[0]["event_id"]]
    # Artifacts.
    made = _ok(api.post(f"/v1/tasks/{up_t}/artifacts", headers=ADMIN,
                        files={"file": ("a.txt", b"case")}, data={"kind": "log"}), 201)
    assert made["task_id"] == tid
    art = made["artifact_id"].upper()
    assert [a["artifact_id"] for a in _ok(api.get(f"/v1/tasks/{up_t}/artifacts",
                                                  headers=ADMIN))["items"]] == [made["artifact_id"]]
    assert _ok(api.get(f"/v1/artifacts/{art}", headers=ADMIN))["artifact_id"] == made[
        "artifact_id"]
    assert api.get(f"/v1/artifacts/{art}/content", headers=ADMIN).content == b"case"
    # A ledger entry naming the task in upper case is the task's (checked against it, stored
    # and listed as its own).
    entry = _ok(api.post("/v1/ledger", headers=ADMIN, json={
        "tenant_id": "acme", "entry_type": "REVENUE", "amount": "4", "currency": "USD",
        "task_id": up_t, "asset_id": up_a, "lease_id": up_l}), 201)
    assert (entry["task_id"], entry["asset_id"], entry["lease_id"]) == (tid, aid, lid)
    assert len(_ok(api.get("/v1/ledger", headers=ADMIN, params={"task_id": tid}))["items"]) == 2
    # Changes: a task's fields, an asset's, its lease, its status; the audit names each row
    # as creep wrote it.
    version = _ok(api.get(f"/v1/tasks/{tid}", headers=ADMIN))["task_version"]
    assert _ok(api.patch(f"/v1/tasks/{up_t}", headers={**ADMIN, "If-Match": str(version)},
                         json={"priority": 7}))["priority"] == 7
    asset = _ok(api.get(f"/v1/assets/{up_a}", headers=ADMIN))
    assert asset["asset_id"] == aid
    assert _ok(api.patch(f"/v1/assets/{up_a}",
                         headers={**ADMIN, "If-Match": str(asset["version"])},
                         json={"health_score": 50}))["health_score"] == 50
    version = _ok(api.get(f"/v1/assets/{aid}", headers=ADMIN))["version"]
    [bulk] = _ok(api.patch("/v1/assets", headers=ADMIN, json={"items": [
        {"asset_id": up_a, "expected_version": version, "health_score": 25}]}))["items"]
    assert bulk["asset_id"] == aid and bulk["health_score"] == 25
    assert _ok(api.post(f"/v1/leases/{up_l}/release", headers=ADMIN))["status"] == "RELEASED"
    assert _ok(api.post(f"/v1/assets/{up_a}/ban", headers=ADMIN, json={}))["status"] == "BANNED"
    assert _ok(api.post(f"/v1/assets/{up_a}/unban", headers=ADMIN,
                        json={}))["status"] == "READY"
    assert _ok(api.post(f"/v1/tasks/{up_t}/cancel", headers=ADMIN,
                        json={}))["cancel_requested"] is True
    audit = _ok(api.get("/v1/audit", headers=ADMIN, params={"resource_id": tid}))["items"]
    assert {r["action"] for r in audit} >= {"updated", "cancelled"}
    # A finished task: retry, and its events stream (which ends) by the upper-case id.
    done = app.submit(task_type="CASE_DONE", tenant_id="acme").task_id
    assert _ok(api.post(f"/v1/tasks/{done.upper()}/cancel", headers=ADMIN,
                        json={}))["status"] == "CANCELLED"
    with api.stream("GET", f"/v1/tasks/{done.upper()}/events/stream", headers=ADMIN) as r:
        assert r.status_code == 200
        streamed = read_sse(r)
    assert [e["event"] for e in streamed] == ["created", "queued", "cancelled", "end"]
    assert _ok(api.post(f"/v1/tasks/{done.upper()}/retry", headers=ADMIN))["status"] == "QUEUED"
    # Text that is no UUID still names nothing.
    assert api.get(f"/v1/tasks/{tid[:-1]}X", headers=ADMIN).status_code == 404
    assert _ok(api.get("/v1/ledger", headers=ADMIN, params={"task_id": "nope"}))["items"] == []


def test_python_api_reads_and_changes_by_an_upper_case_id(app: Creep,
                                                          clock: FrozenClock) -> None:
    tid, aid, lid = _leased_task(app, clock)
    up_t, up_a, up_l = tid.upper(), aid.upper(), lid.upper()
    assert app.get_task(up_t).task_id == tid
    assert len(app.task_events(up_t)) == 3
    assert len(app.events_after(task_id=up_t)) == 3
    assert app.get_asset(up_a).asset_id == aid
    assert [x.lease_id for x in app.list_leases(task_id=up_t)] == [lid]
    assert [x.lease_id for x in app.list_leases(asset_id=up_a)] == [lid]
    assert [e.event_type for e in app.asset_events(task_id=up_t)] == ["ALLOCATED"]
    by_asset = app.asset_events(asset_id=up_a)
    assert len(by_asset) == 2
    assert [e.event_id for e in app.asset_event_chain(by_asset[0].event_id.upper())] == [
        by_asset[0].event_id]
    [other] = app.import_assets([{"sku_category": "RAW_NET", "sku_code": "ip.case.2",
                                  "tenant_id": "acme"}])
    first, second = sorted([aid, other.asset_id])
    assert [a.asset_id for a in app.list_assets(tenant_id="acme", after=first.upper())] == [
        second]
    entry = app.record_ledger_entry(entry_type="REVENUE", amount="4", currency="USD",
                                    tenant_id="acme", task_id=up_t, asset_id=up_a,
                                    lease_id=up_l)
    assert (entry.task_id, entry.asset_id, entry.lease_id) == (tid, aid, lid)
    assert len(app.ledger_entries(task_id=tid)) == 2
    assert len(app.ledger_entries(task_id=up_t)) == 2
    [summary] = app.ledger_summary(task_id=up_t)
    assert (summary.cost, summary.revenue) == (Decimal("1.5"), Decimal("4"))
    art = app.put_artifact(up_t, b"case", kind="log", file_name="a.txt")
    assert art.task_id == tid
    assert [a.artifact_id for a in app.list_artifacts(up_t)] == [art.artifact_id]
    assert app.get_artifact(art.artifact_id.upper()).artifact_id == art.artifact_id
    assert app.read_artifact(art.artifact_id.upper())[1] == b"case"
    task = app.get_task(tid)
    assert app.update_task(up_t, task.task_version, priority=7).priority == 7
    asset = app.get_asset(aid)
    assert app.update_asset(up_a, asset.version, health_score=50).health_score == 50
    assert app.release_lease(up_l).status.value == "RELEASED"
    assert app.ban_asset(up_a).status.value == "BANNED"
    assert app.unban_asset(up_a).status.value == "READY"
    assert app.cancel(up_t).cancel_requested is True
    done = app.submit(task_type="CASE_DONE", tenant_id="acme").task_id
    assert app.cancel(done.upper()).status.value == "CANCELLED"
    assert app.retry(done.upper()).status.value == "QUEUED"
    with pytest.raises(NotFound):
        app.get_task(tid[:-1] + "X")


def test_worker_routes_take_a_task_id_in_any_form(app: Creep, api: TestClient,
                                                  clock: FrozenClock) -> None:
    """The HTTP worker's per-task routes read the task id as the others do: upper case was
    404 on SQLite (found on PostgreSQL), and urn:uuid: was a 503 "database unavailable" on
    PostgreSQL, a caller's typo reported as an outage."""
    task = app.submit(task_type="CASE", tenant_id="acme")
    [item] = _ok(api.post("/v1/workers/claim", headers=ADMIN,
                          json={"task_types": ["CASE"]}))["items"]
    tok, tid = item["claim_token"], task.task_id
    assert item["task"]["task_id"] == tid
    for form in (tid.upper(), f"urn:uuid:{tid}", tid.replace("-", "")):
        hb = _ok(api.post(f"/v1/tasks/{form}/heartbeat", headers=ADMIN,
                          json={"claim_token": tok}))
        assert hb["cancel_requested"] is False
    _ok(api.post(f"/v1/tasks/{tid.upper()}/progress", headers=ADMIN,
                 json={"claim_token": tok, "progress": 40}))
    assert app.get_task(tid).progress == 40
    done = _ok(api.post(f"/v1/tasks/urn:uuid:{tid.upper()}/complete", headers=ADMIN,
                        json={"claim_token": tok, "result": {"ok": 1}}))
    assert (done["task_id"], done["status"]) == (tid, "SUCCESS")


def _forms(an_id: str) -> list[str]:
    """An id as others may write it: upper case, braced, without hyphens, as a URN."""
    return [an_id.upper(), f"{{{an_id}}}", an_id.replace("-", ""), f"urn:uuid:{an_id.upper()}"]


def test_batch_schedule_and_key_ids_in_any_form(api: TestClient) -> None:
    """A batch, a schedule (by its uid) and an API key are found by their id however it is
    written, as a task is: every one of these routes answered 404 on both backends (their
    ids are text columns) to an id a caller copied in upper case."""
    batch = _ok(api.post("/v1/batches", headers=ADMIN, json={
        "tenant_id": "acme", "title": "case", "tasks": [{"ref": "a", "task_type": "CASE"}]}),
        201)
    bid = batch["batch_id"]
    for form in _forms(bid):
        assert _ok(api.get(f"/v1/batches/{form}", headers=ADMIN))["batch_id"] == bid
    cancelled = _ok(api.post(f"/v1/batches/{bid.upper()}/cancel", headers=ADMIN))
    assert cancelled["batch_id"] == bid and cancelled["cancelled_count"] == 1

    sched = _ok(api.post("/v1/schedules", headers=ADMIN, json={
        "tenant_id": "acme", "name": "case", "type": "CASE", "interval": 60}), 201)
    uid = sched["uid"]
    for form in _forms(uid):
        got = api.get(f"/v1/schedules/{form}", headers=ADMIN)
        assert _ok(got)["uid"] == uid
    patched = _ok(api.patch(f"/v1/schedules/{uid.upper()}", json={"priority": 3},
                            headers={**ADMIN, "If-Match": got.headers["etag"]}))
    assert patched["uid"] == uid and patched["priority"] == 3
    fired = _ok(api.post(f"/v1/schedules/{uid.upper()}/trigger", headers=ADMIN), 201)
    assert fired["task_uid"] == uid
    runs = _ok(api.get(f"/v1/schedules/{uid.upper()}/executions", headers=ADMIN))["items"]
    assert [e["execution_uid"] for e in runs] == [fired["execution_uid"]]
    assert api.delete(f"/v1/schedules/{uid.upper()}", headers=ADMIN).status_code == 204
    assert api.get(f"/v1/schedules/{uid}", headers=ADMIN).status_code == 404

    key = _ok(api.post("/v1/keys", headers=ADMIN, json={"name": "k", "tenant_id": "acme"}), 201)
    kid = key["key_id"]
    revoked = _ok(api.delete(f"/v1/keys/{kid.upper()}", headers=ADMIN))
    assert revoked["key_id"] == kid and revoked["revoked_at"] is not None
    assert api.get("/v1/whoami", headers={"Authorization": f"Bearer {key['key']}"}
                   ).status_code == 401
    # The audit log's principal filter (a key id) reads it so too.
    mine = _ok(api.get("/v1/whoami", headers=ADMIN))["key_id"]
    by_key = _ok(api.get("/v1/audit", headers=ADMIN, params={"principal": mine.upper()}))
    assert {(r["resource_type"], r["action"]) for r in by_key["items"]} >= {
        ("batch", "cancelled"), ("apiKey", "revoked")}
    # Text that is no UUID still names nothing.
    for path in (f"/v1/batches/{bid[:-1]}X", f"/v1/schedules/{uid[:-1]}X"):
        assert api.get(path, headers=ADMIN).status_code == 404, path
    assert api.delete(f"/v1/keys/{kid[:-1]}X", headers=ADMIN).status_code == 404


def test_a_schedule_uid_chosen_in_upper_case_is_found_in_any_form(app: Creep,
                                                                  api: TestClient) -> None:
    """The Python API lets a caller choose a schedule's uid: one that is a UUID is kept in
    creep's form (as a chosen task_id is), so every spelling of it finds the schedule, there
    and over REST; any other uid, and a name, are text matched as written."""
    chosen = "0190F0E2-3D4A-7B6C-8D9E-0A1B2C3D4E5F"
    made = app.create_schedule(uid=chosen, tenant_id="acme", name="upper", type="CASE",
                               interval=60)
    assert made.uid == chosen.lower()
    for form in (chosen, chosen.lower(), f"{{{chosen}}}"):
        assert app.get_schedule(form).uid == chosen.lower()
        assert _ok(api.get(f"/v1/schedules/{form}", headers=ADMIN))["uid"] == chosen.lower()
    assert app.update_schedule(chosen, priority=4).priority == 4
    app.delete_schedule(chosen)
    with pytest.raises(NotFound):
        app.get_schedule(chosen.lower())
    other = app.create_schedule(uid="Nightly-Report", tenant_id="acme", name="Named-Like-This",
                                type="CASE", interval=60)
    assert other.uid == "Nightly-Report"
    assert _ok(api.get("/v1/schedules/Nightly-Report", headers=ADMIN))["name"] == (
        "Named-Like-This")
    assert api.get("/v1/schedules/nightly-report", headers=ADMIN).status_code == 404
    # By its name (a tenant's): deleted, not a silent no-op.
    app.delete_schedule("Named-Like-This", tenant_id="acme")
    with pytest.raises(NotFound):
        app.get_schedule("Nightly-Report")
