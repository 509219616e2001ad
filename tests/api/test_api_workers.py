"""The HTTP worker protocol against a real server, and `creep worker --api-url` running the
Python worker over it: tenant-scoped claims, long poll, heartbeat answering cancellation,
progress, events, complete, fail, and stale tokens (409)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import Server
from tests.conftest import child_pythonpath

ROOT = Path(__file__).resolve().parents[2]


def _submit(c: httpx.Client, task_type: str, **fields: Any) -> str:
    r = c.post("/v1/tasks", json={"task_type": task_type, **fields})
    assert r.status_code == 201, r.text
    task_id: str = r.json()["task_id"]
    return task_id


def _claim(c: httpx.Client, types: list[str], n: int = 10, **extra: Any) -> list[dict[str, Any]]:
    r = c.post("/v1/workers/claim", json={"task_types": types, "max_tasks": n, **extra})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _event_types(c: httpx.Client, task_id: str) -> list[str]:
    """The task's event types once the last one is readable: on PostgreSQL the event feed
    shows a transaction's events only once every older transaction has ended."""
    def fetch() -> list[str]:
        items = c.get(f"/v1/tasks/{task_id}/events").json()["items"]
        return [e["event_type"] for e in items]

    _wait_for(lambda: fetch()[-1:] in (["succeeded"], ["failed"], ["cancelled"]),
              f"the final event of {task_id}")
    return fetch()


def _wait_for(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_protocol_round_trip_and_tenant_scope(worker_server: Server) -> None:
    _, key_a = worker_server.tenant()
    tenant_b, key_b = worker_server.tenant()
    ro = worker_server.key(tenant_b, read_only=True)["key"]
    with worker_server.client(key_a) as a, worker_server.client(key_b) as b, worker_server.client(ro) as b_ro:
        task = _submit(a, "RT", input_payload={"n": 1})
        assert _claim(b, ["RT"]) == []  # another tenant's task is invisible
        assert b_ro.post("/v1/workers/claim", json={"task_types": ["RT"]}).status_code == 403
        (item,) = _claim(a, ["RT"], worker_id="w-1")
        tok = item["claim_token"]
        assert item["task"]["task_id"] == task and item["task"]["status"] == "RUNNING"
        assert item["task"]["input_payload"] == {"n": 1} and item["deadline_at"]

        base = f"/v1/tasks/{task}"
        hb = a.post(f"{base}/heartbeat", json={"claim_token": tok, "claim_ttl": 30})
        assert hb.status_code == 200 and hb.json() == {"cancel_requested": False,
                                                     "revoked_lease_ids": []}
        # Another tenant gets 404 on every call, even with the right token.
        for path, body in (("heartbeat", {}), ("progress", {"progress": 1}),
                           ("complete", {}), ("fail", {}),
                           ("events", {"event_type": "log"})):
            r = b.post(f"{base}/{path}", json={"claim_token": tok, **body})
            assert r.status_code == 404, (path, r.text)
        assert a.post(f"{base}/progress",
                      json={"claim_token": tok, "progress": 60, "message": "rendering"}
                      ).json() == {"task_id": task, "progress": 60}
        ev = a.post(f"{base}/events", json={"claim_token": tok, "event_type": "log.line",
                                            "payload": {"line": "frame 1"}})
        assert ev.status_code == 201 and ev.json()["event_type"] == "log.line"
        forged = a.post(f"{base}/events", json={"claim_token": tok, "event_type": "succeeded"})
        assert forged.status_code == 422 and forged.json()["errors"][0]["field"] == "event_type"
        # `end` closes the event stream: reserved, so no task event can pass for the close.
        end = a.post(f"{base}/events", json={"claim_token": tok, "event_type": "end"})
        assert end.status_code == 422, end.text
        [error] = end.json()["errors"]
        assert error["field"] == "event_type" and "reserved" in error["rule"]
        assert a.get(base).json()["progress"] == 60

        done = a.post(f"{base}/complete", json={"claim_token": tok, "result": {"frames": 3}})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "SUCCESS"
        assert done.json()["result_payload"] == {"frames": 3}
        # The token is stale now: 409 problem for every call.
        for path, body in (("heartbeat", {}), ("progress", {"progress": 1}),
                           ("complete", {}), ("fail", {}),
                           ("events", {"event_type": "log"})):
            r = a.post(f"{base}/{path}", json={"claim_token": tok, **body})
            assert r.status_code == 409, (path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        assert _event_types(a, task)[-1:] == ["succeeded"]
        assert _event_types(a, task) == [
            "created", "queued", "started", "progress", "log.line", "succeeded"]
    with worker_server.admin() as admin:
        audit = admin.get("/v1/audit", params={"resource_type": "task", "action": "completed"})
        completed = [x for x in audit.json()["items"] if x["resource"]["identifier"] == task]
        assert len(completed) == 1  # the refused (stale) completion wrote no audit row


def test_long_poll_cancel_and_fail(worker_server: Server) -> None:
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        got: list[list[dict[str, Any]]] = []
        poller = threading.Thread(
            target=lambda: got.append(_claim(c, ["LP"], wait=30)), daemon=True)
        poller.start()
        time.sleep(0.3)
        assert poller.is_alive()  # waiting: nothing to claim yet
        task = _submit(c, "LP")
        poller.join(timeout=30)
        assert [i["task"]["task_id"] for i in got[0]] == [task]
        tok = got[0][0]["claim_token"]
        assert c.post(f"/v1/tasks/{task}/cancel").status_code == 200
        hb = c.post(f"/v1/tasks/{task}/heartbeat", json={"claim_token": tok})
        assert hb.json() == {"cancel_requested": True, "revoked_lease_ids": []}
        r = c.post(f"/v1/tasks/{task}/fail", json={"claim_token": tok, "kind": "cancelled"})
        assert r.json()["status"] == "CANCELLED"

        flaky = _submit(c, "FL", constraints={"max_retries": 1})
        (item,) = _claim(c, ["FL"])
        r = c.post(f"/v1/tasks/{flaky}/fail", json={
            "claim_token": item["claim_token"], "kind": "retry", "retry_delay": 0,
            "message": "boom", "error": "Traceback ..."})
        assert r.status_code == 200 and r.json()["status"] == "QUEUED"
        (again,) = _claim(c, ["FL"], wait=10)
        assert again["task"]["attempt"] == 2
        r = c.post(f"/v1/tasks/{flaky}/fail", json={
            "claim_token": again["claim_token"], "kind": "failed", "code": "BANNED"})
        assert (r.json()["status"], r.json()["result_code"]) == ("FAILED", "BANNED")
        # A claim nothing answers: empty after the wait.
        assert _claim(c, ["NOTHING"], wait=0.2) == []
        bad = c.post("/v1/workers/claim", json={"task_types": [], "max_tasks": 0, "wait": 99})
        assert bad.status_code == 422
        assert {e["field"] for e in bad.json()["errors"]} == {"task_types", "max_tasks", "wait"}


def test_expired_claim_is_rescued_and_its_token_goes_stale(worker_server: Server) -> None:
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        task = _submit(c, "EXP")
        (first,) = _claim(c, ["EXP"], claim_ttl=1)
        # No heartbeat: the server's maintenance requeues the task; a new claim takes it.
        second: list[dict[str, Any]] = []
        _wait_for(lambda: bool(second.extend(_claim(c, ["EXP"], wait=1)) or second),
                  "the rescued task to be claimable again")
        assert second[0]["task"]["attempt"] == 2
        r = c.post(f"/v1/tasks/{task}/complete", json={"claim_token": first["claim_token"]})
        assert r.status_code == 409
        r = c.post(f"/v1/tasks/{task}/complete", json={"claim_token": second[0]["claim_token"]})
        assert r.status_code == 200 and r.json()["status"] == "SUCCESS"


def test_a_claim_sent_again_with_its_claim_id_answers_what_it_claimed(
    worker_server: Server,
) -> None:
    """A claim whose answer was lost (the server committed it) is sent again with the same
    claim_id: it answers the same tasks, claims nothing more, and only for that worker and
    tenant."""
    _, key_a = worker_server.tenant()
    _, key_b = worker_server.tenant()
    kind, claim_id = f"CR_{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    with worker_server.client(key_a) as a, worker_server.client(key_b) as b:
        ids = [_submit(a, kind, priority=p) for p in (5, 9, 1)]
        _submit(b, kind)  # tenant B's own, for B's claim below
        body = {"worker_id": "w-1", "claim_id": claim_id, "claim_ttl": 60}
        first = _claim(a, [kind], 2, **body)
        assert [i["task"]["task_id"] for i in first] == [ids[1], ids[0]]
        assert {i["claim_token"] for i in first} == {claim_id}
        def expires() -> datetime:
            return datetime.fromisoformat(a.get(f"/v1/tasks/{ids[0]}").json()["claim_expires_at"])

        before = expires()
        again = _claim(a, [kind], 2, **body, resend=True)
        assert again == first  # the same claimed tasks, token and deadline
        # ... their claim renewed, as a new claim's would be (heartbeats start only now).
        assert expires() > before
        assert a.get(f"/v1/tasks/{ids[2]}").json()["status"] == "QUEUED"  # nothing more
        for task_id in ids[:2]:
            t = a.get(f"/v1/tasks/{task_id}").json()
            assert (t["status"], t["attempt"]) == ("RUNNING", 1)
            events = a.get(f"/v1/tasks/{task_id}/events").json()["items"]
            assert [e["event_type"] for e in events].count("started") == 1
        # A task of the claim that ended is not answered again.
        r = a.post(f"/v1/tasks/{ids[1]}/complete", json={"claim_token": claim_id})
        assert r.status_code == 200, r.text
        assert [i["task"]["task_id"] for i in _claim(a, [kind], 2, **body, resend=True)] \
            == [ids[0]]
        # Neither another worker_id nor another tenant replays it: they claim their own.
        (other,) = _claim(a, [kind], 2, worker_id="w-2", claim_id=claim_id, resend=True)
        assert other["task"]["task_id"] == ids[2]
        (theirs,) = _claim(b, [kind], 2, **body, resend=True)
        assert theirs["task"]["task_id"] not in ids
        assert _claim(b, [kind], 2, **body, resend=True) == [theirs]
        # A new claim_id claims anew; w-1's claim still runs its task.
        more = _submit(a, kind)
        (fresh,) = _claim(a, [kind], 2, worker_id="w-1", claim_id=str(uuid.uuid4()))
        assert fresh["task"]["task_id"] == more
        assert [i["task"]["task_id"] for i in _claim(a, [kind], 2, **body, resend=True)] \
            == [ids[0]]
        # A claim_id claims once: sent again without `resend` too (a first send still
        # polling when its resend claimed), it answers its tasks and claims nothing more.
        newer = _submit(a, kind)
        assert [i["task"]["task_id"] for i in _claim(a, [kind], 2, **body)] == [ids[0]]
        assert a.get(f"/v1/tasks/{newer}").json()["status"] == "QUEUED"
        # Once its tasks have ended it answers none, and still claims nothing.
        r = a.post(f"/v1/tasks/{ids[0]}/complete", json={"claim_token": claim_id})
        assert r.status_code == 200, r.text
        assert _claim(a, [kind], 2, **body, resend=True) == []
        assert a.get(f"/v1/tasks/{newer}").json()["status"] == "QUEUED"
        bad = a.post("/v1/workers/claim", json={"task_types": [kind], "claim_id": "x"})
        assert bad.status_code == 422, bad.text
        assert [e["field"] for e in bad.json()["errors"]] == ["claim_id"]


def _remote_worker(worker_server: Server, key: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": child_pythonpath(), "CREEP_API_KEY": key}
    env.pop("CREEP_DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "creep.cli", "worker", "--app", "tests.apps.http_app:app",
         "--api-url", worker_server.url, "--log-level", "WARNING", "--concurrency", "4", *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def test_python_worker_over_http(worker_server: Server) -> None:
    _, key = worker_server.tenant()
    _, other_key = worker_server.tenant()
    with worker_server.client(key) as c, worker_server.client(other_key) as other:
        echo = [_submit(c, "ECHO", input_payload={"i": i}) for i in range(5)]
        refused = _submit(c, "REFUSE")
        flaky = _submit(c, "FLAKY")
        untouched = _submit(other, "ECHO")
        # Let the FLAKY retry come due at once.
        worker = _remote_worker(worker_server, key, "--burst")
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out.decode()
        for task_id in echo:
            t = c.get(f"/v1/tasks/{task_id}").json()
            assert t["status"] == "SUCCESS", t
            assert t["result_payload"]["echo"] == t["input_payload"]
            assert _event_types(c, task_id) == [
                "created", "queued", "started", "progress", "succeeded"]
        r = c.get(f"/v1/tasks/{refused}").json()
        assert (r["status"], r["result_code"]) == ("FAILED", "HARD_FAIL")
        f = c.get(f"/v1/tasks/{flaky}").json()
        assert f["status"] in ("QUEUED", "SUCCESS")  # retried with the server's backoff
        assert "first attempt fails" in (f["result_message"] or f["last_error"] or "")
        assert other.get(f"/v1/tasks/{untouched}").json()["status"] == "QUEUED"


def test_python_worker_over_http_is_cancelled_and_stops_on_sigterm(worker_server: Server) -> None:
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        task = _submit(c, "WAIT_FOR_CANCEL")
        worker = _remote_worker(worker_server, key, "--claim-ttl", "3", "--shutdown-grace", "5")
        try:
            _wait_for(lambda: c.get(f"/v1/tasks/{task}").json()["status"] == "RUNNING",
                      "the worker to claim the task")
            assert c.post(f"/v1/tasks/{task}/cancel").status_code == 200
            _wait_for(lambda: c.get(f"/v1/tasks/{task}").json()["status"] == "CANCELLED",
                      "the handler to see the cancellation")
            later = _submit(c, "ECHO")
            _wait_for(lambda: c.get(f"/v1/tasks/{later}").json()["status"] == "SUCCESS",
                      "the long-polling worker to pick up new work")
        finally:
            worker.terminate()
            out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, out.decode()


def test_remote_worker_with_a_bad_key_exits_non_zero(worker_server: Server) -> None:
    worker = _remote_worker(worker_server, "not-a-valid-key-" + "y" * 20, "--burst")
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode != 0 and b"401" in out


def test_progress_resent_after_a_lost_answer_writes_one_event(worker_server: Server) -> None:
    """A worker whose progress call got no answer (a timeout, a 503 from a proxy) sends it
    again: the first one was written, so the resend wrote a second `progress` event. A
    progress identical to the one this claim recorded last records nothing more; another
    value (or an earlier one again) is written. A new claim's first progress is written
    even if the previous run left the same value."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as a:
        task = _submit(a, "RT_PROGRESS", constraints={"max_retries": 2})
        (item,) = _claim(a, ["RT_PROGRESS"], claim_ttl=60)
        base, tok = f"/v1/tasks/{task}", item["claim_token"]

        def progress(pct: int, message: str | None, token: str = tok) -> None:
            r = a.post(f"{base}/progress",
                       json={"claim_token": token, "progress": pct, "message": message})
            assert r.json() == {"task_id": task, "progress": pct}, r.text

        def progress_events() -> list[tuple[int, str | None]]:
            items = a.get(f"{base}/events").json()["items"]
            return [(e["payload"]["progress"], e["payload"]["message"]) for e in items
                    if e["event_type"] == "progress"]

        for pct, message in ((50, "half"), (50, "half"), (60, "more"), (50, "half")):
            progress(pct, message)
        # The run gives the task back; the next claim's first progress is its own event.
        assert a.post(f"{base}/fail", json={"claim_token": tok, "kind": "requeue"}
                      ).status_code == 200
        (again,) = _claim(a, ["RT_PROGRESS"], claim_ttl=60)
        progress(50, None, again["claim_token"])
        progress(50, None, again["claim_token"])
        assert a.post(f"{base}/complete", json={"claim_token": again["claim_token"]}
                      ).status_code == 200
        _event_types(a, task)
        assert progress_events() == [(50, "half"), (60, "more"), (50, "half"), (50, None)]


def test_remote_worker_against_a_url_without_the_api_exited_with_a_traceback(
    worker_server: Server,
) -> None:
    """An --api-url that is no creep API (a wrong path: the claim answers 404) stopped the
    worker with a Python traceback instead of the one-line error a bad key gets."""
    _, key = worker_server.tenant()
    env = {**os.environ, "PYTHONPATH": child_pythonpath(), "CREEP_API_KEY": key}
    env.pop("CREEP_DATABASE_URL", None)
    worker = subprocess.run(
        [sys.executable, "-m", "creep.cli", "worker", "--app", "tests.apps.http_app:app",
         "--api-url", worker_server.url + "/not-the-api", "--log-level", "WARNING",
         "--burst"],
        env=env, cwd=ROOT, capture_output=True, timeout=60,
    )
    out = (worker.stdout + worker.stderr).decode()
    assert worker.returncode != 0, out
    assert "Traceback" not in out and "claim refused: HTTP 404" in out, out
