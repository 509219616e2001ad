"""Soft delete over REST (the in-process API on both backends, a frozen clock): DELETE
/v1/tasks/{id} and POST /v1/tasks/{id}/restore, their audit rows, the `?deleted=true` list,
409s for unfinished and deleted tasks, optional If-Match, tenancy; and a delete racing a
retry against a real server."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import httpx

from creep import Creep, FrozenClock
from tests.api.conftest import Server
from tests.api.inprocess import ADMIN, TestClient, acme_api


def _task(api: TestClient, **fields: Any) -> dict[str, Any]:
    r = api.post("/v1/tasks", json={"task_type": "T", "tenant_id": "acme", **fields},
                 headers=ADMIN)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def _finished(api: TestClient, **fields: Any) -> dict[str, Any]:
    task = _task(api, **fields)
    r = api.post(f"/v1/tasks/{task['task_id']}/cancel", headers=ADMIN)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _audit(api: TestClient, task_id: str, action: str) -> list[dict[str, Any]]:
    r = api.get("/v1/audit", params={"resource_id": task_id, "action": action},
                headers=ADMIN)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["items"]
    return rows


def _events(api: TestClient, task_id: str) -> list[str]:
    r = api.get(f"/v1/tasks/{task_id}/events", headers=ADMIN)
    return [e["event_type"] for e in r.json()["items"]]


def _key(api: TestClient, **options: Any) -> dict[str, str]:
    r = api.post("/v1/keys", json={"name": "k", "tenant_id": "acme", **options}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def _ids(api: TestClient, **params: Any) -> list[str]:
    r = api.get("/v1/tasks", params={"limit": 500, **params}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return [t["task_id"] for t in r.json()["items"]]


def test_delete_and_restore_over_rest(api: TestClient, clock: FrozenClock) -> None:
    task = _finished(api)
    tid = task["task_id"]
    clock.advance(3)
    r = api.delete(f"/v1/tasks/{tid}", headers=ADMIN)
    assert r.status_code == 200, r.text
    deleted = r.json()
    assert deleted["deleted_at"] == clock.now().isoformat()
    assert deleted["task_version"] == task["task_version"] + 1
    assert deleted["status"] == "CANCELLED"
    assert r.headers["etag"] == f'"{deleted["task_version"]}"'
    # Still read, out of the list, in the deleted list.
    got = api.get(f"/v1/tasks/{tid}", headers=ADMIN)
    assert got.status_code == 200 and got.json() == deleted
    assert tid not in _ids(api)
    assert tid not in _ids(api, deleted="false")
    assert tid in _ids(api, deleted="true")
    # Audited like the other task changes, with the event in the same transaction.
    [row] = _audit(api, tid, "deleted")
    assert row["resource_type"] == "task" and row["tenant_id"] == "acme"
    assert row["request_method"] == "DELETE"
    assert '"deleted_at":null' in row["diff_object"]["old_object"].replace(" ", "")
    assert "deleted_at" in row["diff_object"]["new_object"]
    assert _events(api, tid)[-1] == "deleted"

    # Again: the task as it is, no event, no audit row.
    clock.advance(3)
    again = api.delete(f"/v1/tasks/{tid}", headers=ADMIN)
    assert again.status_code == 200 and again.json() == deleted
    assert len(_audit(api, tid, "deleted")) == 1
    assert _events(api, tid).count("deleted") == 1

    r = api.post(f"/v1/tasks/{tid}/restore", headers=ADMIN)
    assert r.status_code == 200, r.text
    restored = r.json()
    assert restored["deleted_at"] is None
    assert restored["task_version"] == deleted["task_version"] + 1
    assert tid in _ids(api) and tid not in _ids(api, deleted="true")
    [row] = _audit(api, tid, "restored")
    assert row["request_method"] == "POST"
    assert _events(api, tid)[-2:] == ["deleted", "restored"]
    # Restoring a task that is not deleted: as it is, nothing written.
    again = api.post(f"/v1/tasks/{tid}/restore", headers=ADMIN)
    assert again.status_code == 200 and again.json() == restored
    assert len(_audit(api, tid, "restored")) == 1


def test_an_unfinished_task_is_refused_with_a_problem(api: TestClient) -> None:
    task = _task(api)
    r = api.delete(f"/v1/tasks/{task['task_id']}", headers=ADMIN)
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"].endswith("/task-not-finished")
    assert problem["task_status"] == "QUEUED" and problem["task_id"] == task["task_id"]
    assert "cancel it first" in problem["detail"]
    assert _audit(api, task["task_id"], "deleted") == []
    assert api.get(f"/v1/tasks/{task['task_id']}", headers=ADMIN).json() == task


def test_a_deleted_task_refuses_changes_until_restored(api: TestClient) -> None:
    tid = _finished(api)["task_id"]
    deleted = api.delete(f"/v1/tasks/{tid}", headers=ADMIN).json()
    version = f'"{deleted["task_version"]}"'
    for r in (api.post(f"/v1/tasks/{tid}/retry", headers=ADMIN),
              api.post(f"/v1/tasks/{tid}/cancel", headers=ADMIN),
              api.patch(f"/v1/tasks/{tid}", json={"priority": 7},
                        headers={**ADMIN, "If-Match": version})):
        assert r.status_code == 409, r.text
        assert r.json()["type"].endswith("/task-deleted")
        assert "restore" in r.json()["detail"]
    assert api.get(f"/v1/tasks/{tid}", headers=ADMIN).json() == deleted
    assert _audit(api, tid, "retried") == [] and _audit(api, tid, "updated") == []
    api.post(f"/v1/tasks/{tid}/restore", headers=ADMIN)
    r = api.post(f"/v1/tasks/{tid}/retry", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "QUEUED"


def test_a_deleted_task_is_unknown_to_new_dependencies(api: TestClient) -> None:
    """POST /v1/tasks and POST /v1/batches naming a deleted task in depends_on: the 422 an
    unknown id gets, naming the field; nothing is created."""
    tid = _finished(api)["task_id"]
    api.delete(f"/v1/tasks/{tid}", headers=ADMIN)
    before = _ids(api)
    unknown = str(uuid.uuid4())
    for dep in (unknown, tid):
        r = api.post("/v1/tasks", json={"task_type": "T", "tenant_id": "acme",
                                        "depends_on": [dep]}, headers=ADMIN)
        assert r.status_code == 422, r.text
        [error] = r.json()["errors"]
        # The body has no `tasks` list: the field is the order's own.
        assert error["field"] == "depends_on[0]", error
        assert error["rule"] == f"unknown task id {dep}"
        if dep == unknown:
            as_unknown = {**error, "rule": f"unknown task id {tid}"}
    assert error == as_unknown
    r = api.post("/v1/batches", json={"title": "b", "tenant_id": "acme", "tasks": [
        {"task_type": "T"}, {"task_type": "T", "depends_on": [tid]}]}, headers=ADMIN)
    assert r.status_code == 422, r.text
    assert [(e["field"], e["rule"]) for e in r.json()["errors"]] == [
        ("tasks[1].depends_on[0]", f"unknown task id {tid}")]
    assert _ids(api) == before
    assert api.get("/v1/batches", headers=ADMIN).json()["items"] == []


def test_a_create_resent_after_its_dependency_was_deleted_replays(api: TestClient) -> None:
    """POST /v1/tasks sent again (same idempotency key and body) after the task it depends
    on went to the recycle bin: 200 Idempotent-Replayed with the task written then, no
    second audit row."""
    dep = _finished(api)["task_id"]
    body = {"task_type": "T", "tenant_id": "acme", "idempotency_key": "resent",
            "depends_on": [dep]}
    first = api.post("/v1/tasks", json=body, headers=ADMIN)
    assert first.status_code == 201, first.text
    api.delete(f"/v1/tasks/{dep}", headers=ADMIN)
    again = api.post("/v1/tasks", json=body, headers=ADMIN)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["task_id"] == first.json()["task_id"]
    assert len(_audit(api, first.json()["task_id"], "created")) == 1


def _refused_as_deleted(r: Any, tid: str) -> None:
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["type"].endswith("/task-deleted") and problem["task_id"] == tid
    assert "restore" in problem["detail"]


def test_a_deleted_task_takes_no_artifacts_over_rest(
    app: Creep, db_url: str, clock: FrozenClock, tmp_path: Path
) -> None:
    """Uploading to a deleted task: 409 task-deleted naming it, nothing stored or audited;
    its artifacts are still listed, read and downloaded; restored, it takes uploads again."""
    with acme_api(app, db_url, clock, artifact_dir=str(tmp_path / "blobs")) as api:
        tid = _task(api)["task_id"]
        up = api.post(f"/v1/tasks/{tid}/artifacts", files={"file": ("a.txt", b"kept")},
                      data={"kind": "output"}, headers=ADMIN)
        assert up.status_code == 201, up.text
        kept = up.json()
        api.post(f"/v1/tasks/{tid}/cancel", headers=ADMIN)
        api.delete(f"/v1/tasks/{tid}", headers=ADMIN)
        r = api.post(f"/v1/tasks/{tid}/artifacts", files={"file": ("b.txt", b"new")},
                     data={"kind": "output"}, headers=ADMIN)
        _refused_as_deleted(r, tid)
        listed = api.get(f"/v1/tasks/{tid}/artifacts", headers=ADMIN)
        assert listed.status_code == 200 and listed.json()["items"] == [kept]
        got = api.get(f"/v1/artifacts/{kept['artifact_id']}", headers=ADMIN)
        assert got.status_code == 200 and got.json() == kept
        content = api.get(f"/v1/artifacts/{kept['artifact_id']}/content", headers=ADMIN)
        assert content.status_code == 200 and content.content == b"kept"
        r = api.get("/v1/audit", params={"resource_type": "artifact"}, headers=ADMIN)
        assert [row["resource"]["identifier"] for row in r.json()["items"]] == [
            kept["artifact_id"]]

        api.post(f"/v1/tasks/{tid}/restore", headers=ADMIN)
        r = api.post(f"/v1/tasks/{tid}/artifacts", files={"file": ("b.txt", b"new")},
                     data={"kind": "output"}, headers=ADMIN)
        assert r.status_code == 201, r.text


def test_a_deleted_task_takes_no_ledger_entries_over_rest(api: TestClient) -> None:
    """POST /v1/ledger naming a deleted task: 409 task-deleted naming it, nothing written
    or audited; its entries are still listed; restored, it takes entries again."""
    tid = _finished(api)["task_id"]
    body = {"entry_type": "REVENUE", "amount": "3", "currency": "USD", "tenant_id": "acme",
            "task_id": tid}
    kept = api.post("/v1/ledger", json=body, headers=ADMIN)
    assert kept.status_code == 201, kept.text
    api.delete(f"/v1/tasks/{tid}", headers=ADMIN)
    audited = api.get("/v1/audit", params={"resource_type": "ledgerEntry"}, headers=ADMIN)
    _refused_as_deleted(api.post("/v1/ledger", json=body, headers=ADMIN), tid)
    listed = api.get("/v1/ledger", params={"task_id": tid}, headers=ADMIN)
    assert listed.status_code == 200 and listed.json()["items"] == [kept.json()]
    assert api.get("/v1/audit", params={"resource_type": "ledgerEntry"},
                   headers=ADMIN).json() == audited.json()
    api.post(f"/v1/tasks/{tid}/restore", headers=ADMIN)
    assert api.post("/v1/ledger", json=body, headers=ADMIN).status_code == 201


def test_if_match_is_honoured_when_given(api: TestClient) -> None:
    task = _finished(api)
    tid = task["task_id"]
    stale = api.delete(f"/v1/tasks/{tid}", headers={**ADMIN, "If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.json()["current_version"] == task["task_version"]
    bad = api.delete(f"/v1/tasks/{tid}", headers={**ADMIN, "If-Match": "yesterday"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "If-Match"
    ok = api.delete(f"/v1/tasks/{tid}", headers={**ADMIN, "If-Match": f'"{task["task_version"]}"'})
    assert ok.status_code == 200
    stale = api.post(f"/v1/tasks/{tid}/restore", headers={**ADMIN, "If-Match": '"1"'})
    assert stale.status_code == 412
    assert api.get(f"/v1/tasks/{tid}", headers=ADMIN).json()["deleted_at"] is not None


def test_the_deleted_list_pages_and_checks_its_filter(
    api: TestClient, clock: FrozenClock
) -> None:
    ids = []
    for _ in range(5):
        clock.advance(1)
        ids.append(_finished(api, task_type="PAGED")["task_id"])
        api.delete(f"/v1/tasks/{ids[-1]}", headers=ADMIN)
    _finished(api, task_type="PAGED")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"deleted": "true", "task_type": "PAGED", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/tasks", params=params, headers=ADMIN).json()
        seen += [t["task_id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    r = api.get("/v1/tasks", params={"deleted": "maybe"}, headers=ADMIN)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "deleted"


def test_keys_and_tenants(api: TestClient, app: Creep) -> None:
    tid = _finished(api)["task_id"]
    reader = _key(api, read_only=True)
    assert api.delete(f"/v1/tasks/{tid}", headers=reader).status_code == 403
    assert api.post(f"/v1/tasks/{tid}/restore", headers=reader).status_code == 403
    writer = _key(api)
    assert api.delete(f"/v1/tasks/{tid}", headers=writer).status_code == 200
    r = api.get("/v1/tasks", params={"deleted": "true"}, headers=reader)
    assert [t["task_id"] for t in r.json()["items"]] == [tid]
    # Another tenant's key: 404, as for a task that does not exist.
    assert api.post("/v1/tenants", json={"tenant_id": "other"}, headers=ADMIN).status_code == 201
    r = api.post("/v1/keys", json={"name": "o", "tenant_id": "other"}, headers=ADMIN)
    other = {"Authorization": f"Bearer {r.json()['key']}"}
    assert api.post(f"/v1/tasks/{tid}/restore", headers=other).status_code == 404
    assert api.get("/v1/tasks", params={"deleted": "true"}, headers=other).json()["items"] == []
    assert api.delete(f"/v1/tasks/{uuid.uuid4()}", headers=ADMIN).status_code == 404
    assert app.get_task(tid).deleted_at is not None


def test_batch_counts_keep_deleted_tasks_the_task_counts_leave_them_out(
    api: TestClient,
) -> None:
    """Deletion is not a status change: a batch still counts its deleted tasks. The task
    counts by status (the dashboard's overview, whose counts link to the task list) count
    what the list shows: the tasks not deleted; `?deleted=true` counts the recycle bin."""
    r = api.post("/v1/batches", json={"title": "b", "tenant_id": "acme",
                                      "tasks": [{"task_type": "T"}, {"task_type": "T"}]},
                 headers=ADMIN)
    assert r.status_code == 201, r.text
    batch = r.json()
    first = batch["tasks"][0]["task_id"]
    api.post(f"/v1/batches/{batch['batch_id']}/cancel", headers=ADMIN)
    _task(api)  # a QUEUED one

    def stats(**params: Any) -> dict[str, Any]:
        r = api.get("/v1/stats/tasks", params={"tenant_id": "acme", **params}, headers=ADMIN)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    before = stats()
    assert before["by_status"]["CANCELLED"] == 2 and before["total"] == 3
    assert stats(deleted="true")["total"] == 0
    assert api.delete(f"/v1/tasks/{first}", headers=ADMIN).status_code == 200
    after = api.get(f"/v1/batches/{batch['batch_id']}", headers=ADMIN).json()
    assert after["cancelled_count"] == 2 and after["total_count"] == 2
    live = stats()
    assert live["by_status"] == {**before["by_status"], "CANCELLED": 1}
    assert live["total"] == 2 and live["queue_depth"] == 1
    assert live["total"] == len(_ids(api, tenant_id="acme"))
    assert stats(deleted="false") == live
    binned = stats(deleted="true")
    assert binned["by_status"]["CANCELLED"] == 1 and binned["total"] == 1
    assert binned["queue_depth"] == 0
    bad = api.get("/v1/stats/tasks", params={"deleted": "maybe"}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "deleted"
    api.post(f"/v1/tasks/{first}/restore", headers=ADMIN)
    assert stats() == before


def _at_once(server: Server, key: str, *requests: tuple[str, str]) -> list[httpx.Response]:
    """Send the (method, path) requests together, each on a connection of its own."""
    barrier = threading.Barrier(len(requests))
    answers: list[httpx.Response | None] = [None] * len(requests)

    def send(i: int, method: str, path: str) -> None:
        with server.client(key) as own:
            barrier.wait()
            answers[i] = own.request(method, path)

    threads = [threading.Thread(target=send, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def test_a_delete_racing_a_retry_over_http(server: Server) -> None:
    """Against a real server: concurrent DELETE and POST .../retry of one task, many times;
    exactly one wins each time and a deleted task is never left queued."""
    _, key = server.tenant()
    wins = {"delete": 0, "retry": 0}
    with server.client(key) as c:
        for _ in range(10):
            tid = c.post("/v1/tasks", json={"task_type": "RACE"}).json()["task_id"]
            assert c.post(f"/v1/tasks/{tid}/cancel").status_code == 200
            deleted, retried = _at_once(server, key, ("DELETE", f"/v1/tasks/{tid}"),
                                        ("POST", f"/v1/tasks/{tid}/retry"))
            now = c.get(f"/v1/tasks/{tid}").json()
            codes = (deleted.status_code, retried.status_code)
            if codes == (200, 409):
                assert retried.json()["type"].endswith("/task-deleted")
                assert now["deleted_at"] is not None and now["status"] == "CANCELLED"
                wins["delete"] += 1
            else:
                assert codes == (409, 200), codes
                assert deleted.json()["type"].endswith("/task-not-finished")
                assert now["deleted_at"] is None and now["status"] == "QUEUED"
                wins["retry"] += 1
    assert sum(wins.values()) == 10
