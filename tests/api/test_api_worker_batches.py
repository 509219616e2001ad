"""The HTTP worker protocol's batch routes over real HTTP: POST /v1/workers/heartbeat (a
heartbeat round in one request) and POST /v1/workers/complete (a batch of results in one
request and one transaction)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.api.conftest import Server

HEARTBEAT, COMPLETE = "/v1/workers/heartbeat", "/v1/workers/complete"


def _submit(c: httpx.Client, task_type: str, **fields: Any) -> str:
    r = c.post("/v1/tasks", json={"task_type": task_type, **fields})
    assert r.status_code == 201, r.text
    task_id: str = r.json()["task_id"]
    return task_id


def _claimed(c: httpx.Client, task_type: str, n: int, **fields: Any) -> list[tuple[str, str]]:
    """n tasks of a type of their own, submitted and claimed: [(task_id, claim_token)]."""
    ids = [_submit(c, task_type, **fields) for _ in range(n)]
    r = c.post("/v1/workers/claim", json={"task_types": [task_type], "max_tasks": n,
                                          "claim_ttl": 60})
    assert r.status_code == 200, r.text
    tokens = {i["task"]["task_id"]: i["claim_token"] for i in r.json()["items"]}
    assert set(tokens) == set(ids)
    return [(task_id, tokens[task_id]) for task_id in ids]


def _kind() -> str:
    return f"BP_{uuid.uuid4().hex[:8]}"


def _beat(c: httpx.Client, claims: list[tuple[str, str]], **extra: Any) -> httpx.Response:
    return c.post(HEARTBEAT, json={"claims": [{"task_id": t, "claim_token": k}
                                              for t, k in claims], **extra})


def _audited(admin: httpx.Client, task_id: str) -> list[str]:
    r = admin.get("/v1/audit", params={"resource_type": "task", "limit": 1000})
    assert r.status_code == 200, r.text
    return sorted(x["action"] for x in r.json()["items"]
                  if x["resource"]["identifier"] == task_id
                  and x["action"] in ("completed", "failed"))


def _fields(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    return [e["field"] for e in r.json()["errors"]]


# -- POST /v1/workers/heartbeat ----------------------------------------------------------------


def test_batch_heartbeat_answers_each_claim_and_keeps_tenants_apart(
    worker_server: Server,
) -> None:
    _, key_a = worker_server.tenant()
    _, key_b = worker_server.tenant()
    kind = _kind()
    with worker_server.client(key_a) as a, worker_server.client(key_b) as b:
        (t1, k1), (t2, k2), (t3, k3) = _claimed(a, kind, 3)
        ((tb, kb),) = _claimed(b, kind, 1)
        before = {t: a.get(f"/v1/tasks/{t}").json()["claim_expires_at"] for t in (t1, t2)}
        b_before = b.get(f"/v1/tasks/{tb}").json()["claim_expires_at"]
        assert a.post(f"/v1/tasks/{t2}/cancel").status_code == 200
        assert a.post(f"/v1/tasks/{t3}/complete", json={"claim_token": k3}).status_code == 200
        r = _beat(a, [(t1, k1), (t2, k2), (t3, k3), (tb, kb), (str(uuid.uuid4()), k1),
                      (t1.replace(t1[0], "x", 1), k1)], claim_ttl=600)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [(i["task_id"], i["held"], i["cancel_requested"]) for i in items] == [
            (t1, True, False), (t2, True, True),  # held, and asked to stop
            (t3, False, False),  # finished: the token is stale
            (tb, False, False),  # another tenant's, with its right token: not held
            (items[4]["task_id"], False, False), (items[5]["task_id"], False, False),
        ]
        assert all(i["revoked_lease_ids"] == [] for i in items)
        for t in (t1, t2):  # renewed for the TTL asked for
            assert a.get(f"/v1/tasks/{t}").json()["claim_expires_at"] > before[t]
        # Another tenant's claim was not renewed, and reads as not held, like a missing task.
        assert b.get(f"/v1/tasks/{tb}").json()["claim_expires_at"] == b_before
        assert _beat(b, [(tb, kb)]).json()["items"][0]["held"] is True


def test_batch_heartbeat_validates_each_claim(worker_server: Server) -> None:
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        ((task, tok),) = _claimed(c, _kind(), 1)
        r = c.post(HEARTBEAT, json={"claims": [{"task_id": task, "claim_token": tok},
                                               {"task_id": task}]})
        assert _fields(r) == ["claims[1].claim_token"]
        assert _fields(_beat(c, [(task, tok), (task, tok)])) == ["claims[1].task_id"]
        assert _fields(_beat(c, [])) == ["claims"]
        assert _fields(_beat(c, [(task, tok)] * 1001)) == ["claims"]
        assert _fields(_beat(c, [(task, tok)], claim_ttl=0.5)) == ["claim_ttl"]


# -- POST /v1/workers/complete -----------------------------------------------------------------


def test_batch_complete_applies_each_held_item_in_one_request(worker_server: Server) -> None:
    tenant_a, key_a = worker_server.tenant()
    _, key_b = worker_server.tenant()
    kind = _kind()
    with (worker_server.client(key_a) as a, worker_server.client(key_b) as b,
          worker_server.admin() as admin):
        claims = _claimed(a, kind, 5, constraints={"max_retries": 3})
        (t1, k1), (t2, k2), (t3, k3), (t4, k4), (t5, _) = claims
        ((tb, kb),) = _claimed(b, kind, 1)
        items = [
            {"task_id": t1, "outcome": "complete", "claim_token": k1, "result": {"n": 1}},
            {"task_id": t2, "outcome": "fail", "claim_token": k2, "kind": "failed",
             "code": "BAD_INPUT", "message": "no"},
            {"task_id": t3, "outcome": "fail", "claim_token": k3, "kind": "retry",
             "retry_delay": 3600},
            {"task_id": t4, "outcome": "fail", "claim_token": k4, "kind": "requeue"},
            {"task_id": t5, "outcome": "complete", "claim_token": str(uuid.uuid4())},  # stale
            {"task_id": tb, "outcome": "complete", "claim_token": kb},  # not tenant A's
        ]
        r = a.post(COMPLETE, json={"items": items})
        assert r.status_code == 200, r.text
        assert r.json() == {"items": [
            {"task_id": t, "applied": ok}
            for t, ok in ((t1, True), (t2, True), (t3, True), (t4, True), (t5, False),
                          (tb, False))]}
        tasks = {t: a.get(f"/v1/tasks/{t}").json() for t in (t1, t2, t3, t4, t5)}
        assert (tasks[t1]["status"], tasks[t1]["result_payload"]) == ("SUCCESS", {"n": 1})
        assert (tasks[t2]["status"], tasks[t2]["result_code"]) == ("FAILED", "BAD_INPUT")
        assert tasks[t3]["status"] == "QUEUED" and tasks[t3]["run_after"] > tasks[t3]["updated_at"]
        assert tasks[t4]["status"] == "QUEUED"
        assert tasks[t4]["attempt"] < tasks[t3]["attempt"]  # requeue charges no attempt
        assert tasks[t5]["status"] == "RUNNING"
        assert b.get(f"/v1/tasks/{tb}").json()["status"] == "RUNNING"
        # Audited as /complete and /fail are: one row per applied item, none for the rest.
        assert [_audited(admin, t) for t in (t1, t2, t3, t4, t5, tb)] == [
            ["completed"], ["failed"], ["failed"], ["failed"], [], []]
        audit = admin.get("/v1/audit", params={"resource_type": "task", "action": "completed"})
        (row,) = [x for x in audit.json()["items"] if x["resource"]["identifier"] == t1]
        assert row["tenant_id"] == tenant_a

        # Sent again (a worker that did not hear the answer): nothing applies twice.
        again = a.post(COMPLETE, json={"items": items})
        assert [i["applied"] for i in again.json()["items"]] == [False] * 6
        assert a.get(f"/v1/tasks/{t1}").json()["updated_at"] == tasks[t1]["updated_at"]
        assert [_audited(admin, t) for t in (t1, t2)] == [["completed"], ["failed"]]
        # The per-task routes agree: the token is stale.
        assert a.post(f"/v1/tasks/{t1}/complete", json={"claim_token": k1}).status_code == 409


def test_batch_complete_with_an_invalid_item_writes_nothing(worker_server: Server) -> None:
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        (t1, k1), (t2, k2) = _claimed(c, _kind(), 2)
        good = {"task_id": t1, "outcome": "complete", "claim_token": k1, "result": 1}
        cases: list[tuple[list[dict[str, Any]], list[str]]] = [
            ([good, {"task_id": t2, "outcome": "fail", "claim_token": k2, "kind": "later"}],
             ["items[1].kind"]),
            ([good, {"task_id": t2, "outcome": "fail", "claim_token": k2,
                     "retry_delay": -1}], ["items[1].retry_delay"]),
            ([good, {"task_id": t2, "outcome": "complete", "claim_token": k2,
                     "kind": "failed", "code": "X"}], ["items[1].kind", "items[1].code"]),
            ([good, {"task_id": t2, "outcome": "fail", "claim_token": k2, "result": 1}],
             ["items[1].result"]),
            ([good, {"task_id": t2, "outcome": "done", "claim_token": k2}],
             ["items[1].outcome"]),
            ([good, {"task_id": t2, "outcome": "complete"}], ["items[1].claim_token"]),
            ([good, {"task_id": t2, "outcome": "complete", "claim_token": k2,
                     "message": "a\u0000b"}], ["items[1].message"]),
            ([good, {**good, "claim_token": k2}], ["items[1].task_id"]),
            ([], ["items"]),
            ([good] * 1001, ["items"]),
        ]
        for items, fields in cases:
            assert _fields(c.post(COMPLETE, json={"items": items})) == fields, items
        for task_id in (t1, t2):
            t = c.get(f"/v1/tasks/{task_id}").json()
            assert t["status"] == "RUNNING", t
        assert [i["applied"] for i in c.post(COMPLETE, json={"items": [good]}).json()["items"]
                ] == [True]
