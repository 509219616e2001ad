"""/v1/schedules while the schedule changes under a request (an in-process app on an injected
clock, both backends): what a manual trigger fires and what an update's audit row records."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest

from creep import Creep, FrozenClock
from tests.api.inprocess import ADMIN, T0, TestClient


def _once_before(
    app: Creep, monkeypatch: pytest.MonkeyPatch, method: str, meanwhile: Callable[[], object]
) -> None:
    """Run `meanwhile` (another process) once, right before the store's `method` runs: in a
    thread of its own, so the request's audit row does not ride along with its writes."""
    store: Any = app.store
    real = getattr(store, method)

    def wrapped(*args: Any, **kw: Any) -> Any:
        monkeypatch.setattr(store, method, real)
        other = threading.Thread(target=meanwhile)
        other.start()
        other.join()
        return real(*args, **kw)

    monkeypatch.setattr(store, method, wrapped)


def _audit(api: TestClient, uid: str, action: str) -> list[dict[str, Any]]:
    r = api.get("/v1/audit", params={"resource_type": "scheduledTask", "limit": 100},
                headers=ADMIN)
    assert r.status_code == 200, r.text
    return [row for row in r.json()["items"]
            if row["resource"]["identifier"] == uid and row["action"] == action]


def test_a_trigger_fires_the_definition_updated_before_its_transaction(
    app: Creep, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /v1/schedules/{uid}/trigger (and `creep schedule trigger`) read the schedule and
    built the task from it; a PATCH committed before the firing's transaction gave that run
    the old type and data while its execution named the new type."""
    r = api.post("/v1/schedules", json={"tenant_id": "acme", "name": "report",
                                        "type": "REPORT_V1", "interval": 3600,
                                        "data": {"v": 1}}, headers=ADMIN)
    assert r.status_code == 201, r.text
    uid = r.json()["uid"]
    _once_before(app, monkeypatch, "schedule_fire",
                 lambda: app.update_schedule(uid, type="REPORT_V2", data={"v": 2}))
    fired = api.post(f"/v1/schedules/{uid}/trigger", headers=ADMIN)
    assert fired.status_code == 201, fired.text
    execution = fired.json()
    task = api.get(f"/v1/tasks/{execution['task_id']}", headers=ADMIN).json()
    assert (task["task_type"], task["input_payload"]) == ("REPORT_V2", {"v": 2})
    assert execution["task_type"] == "REPORT_V2"
    [row] = _audit(api, uid, "triggered")  # one row, naming the run that was written
    assert row["resource"]["data"] == {"execution_uid": execution["execution_uid"]}
    assert orjson.loads(row["diff_object"]["new_object"])["task_id"] == execution["task_id"]


def test_an_update_audits_the_schedule_it_saved(
    app: Creep, api: TestClient, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH of other fields than the timing keeps the stored next_run (the leader may
    have fired since the PATCH read it). Its audit row's new image showed the next_run (and
    statistics) read before the save: 00:01, while the saved schedule said 00:02."""
    r = api.post("/v1/schedules", json={"tenant_id": "acme", "name": "minutely",
                                        "type": "T", "cron_expr": "* * * * *"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    uid = r.json()["uid"]
    sch = app.scheduler(holder_id="A", retention_jobs=[])
    clock.advance(minutes=1, seconds=1)
    _once_before(app, monkeypatch, "schedule_save", sch.run_once)
    ok = api.patch(f"/v1/schedules/{uid}", json={"priority": 7},
                   headers={**ADMIN, "If-Match": '"1"'})
    assert ok.status_code == 200, ok.text
    saved = ok.json()
    assert saved["next_run"] == (T0 + timedelta(minutes=2)).isoformat()
    assert saved["last_executed_at"] is not None
    [row] = _audit(api, uid, "updated")
    old = orjson.loads(row["diff_object"]["old_object"])
    new = orjson.loads(row["diff_object"]["new_object"])
    assert old["next_run"] == (T0 + timedelta(minutes=1)).isoformat() and old["priority"] == 0
    assert new == saved


def test_a_delete_audits_the_schedule_it_deleted(
    app: Creep, api: TestClient, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DELETE read the schedule, then deleted it in a transaction of its own; the leader may
    fire in between. Its audit row's old image showed the next_run (and statistics) read
    before: 00:01 and no run, while the schedule deleted said 00:02 and one run."""
    r = api.post("/v1/schedules", json={"tenant_id": "acme", "name": "minutely",
                                        "type": "T", "cron_expr": "* * * * *"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    uid = r.json()["uid"]
    sch = app.scheduler(holder_id="A", retention_jobs=[])
    clock.advance(minutes=1, seconds=1)
    _once_before(app, monkeypatch, "schedule_delete", sch.run_once)
    gone = api.delete(f"/v1/schedules/{uid}", headers=ADMIN)
    assert gone.status_code == 204, gone.text
    assert api.get(f"/v1/schedules/{uid}", headers=ADMIN).status_code == 404
    [row] = _audit(api, uid, "deleted")
    old = orjson.loads(row["diff_object"]["old_object"])
    assert old["next_run"] == (T0 + timedelta(minutes=2)).isoformat()
    assert old["last_executed_at"] is not None and old["version"] == 1
    assert row["diff_object"]["new_object"] in (None, "null")
