"""Edges of the HTTP worker protocol and the REST API under failure: a refused result, lease
revocation and the lease context on a remote worker, a long-poll claim whose client left,
field names in 422s, batch replays, the client's Decimal and datetime arguments. Each test is
named after the bug it caught."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import Server
from tests.conftest import child_pythonpath

ROOT = Path(__file__).resolve().parents[2]

_REMOTE_APP = '''
import asyncio
from creep import Creep

app = Creep()


@app.handler("RV_CHARGE")
async def charge(ctx):
    await ctx.charge("0.10", description="captcha")
    await ctx.earn("1")
    return {"leases": ctx.lease_ids}


@app.handler("RV_REPORT")
async def report(ctx):
    event = await ctx.report_event("HTTP_PROBE_FAIL", http_status=403, latency_ms=10,
                                   severity="WARN", retryable=True)
    return {"event": event.event_id}


@app.handler("RV_REPORT_TWICE")
async def report_twice(ctx):
    # A report resent with its event id (as after a lost answer) is the event written first;
    # another report under that id conflicts, and the claim holds.
    from creep.domain.errors import ClaimLost, ConflictError

    event = await ctx.report_event("HTTP_PROBE_OK", http_status=200, latency_ms=5)
    again = await ctx.report_event("HTTP_PROBE_OK", http_status=200, latency_ms=5,
                                   event_id=event.event_id)
    try:
        await ctx.report_event("HTTP_PROBE_OK", http_status=201, latency_ms=5,
                               event_id=event.event_id)
    except ClaimLost:
        return {"second": again == event, "other": "claim lost"}
    except ConflictError:
        return {"second": again == event, "other": "conflict"}
    return {"second": again == event, "other": "written"}


@app.handler("RV_LEASES")
async def leases(ctx):
    return {"n": len(await ctx.leases())}


@app.handler("RV_REVOKE")
async def wait_for_revocation(ctx):
    # Runs until its lease is revoked (the worker then stops it), at most ~20 s.
    for _ in range(400):
        await ctx.heartbeat()
        await asyncio.sleep(0.05)
    return {"revoked_seen": list(ctx.revoked_lease_ids)}


@app.handler("RV_LONG_CODE")
async def long_code(ctx):
    from creep import Fail
    raise Fail(code="E" * 80, message="a result code longer than the API's 64 characters")


@app.handler("RV_LATER")
async def later(ctx):
    from creep import Retry
    return Retry(delay=40 * 86400)


@app.handler("RV_OK")
async def ok(ctx):
    return "ok"


@app.handler("RV_OVER")
async def over_budget(ctx):
    from creep import BudgetExceeded
    try:
        await ctx.charge("10")
    except BudgetExceeded as exc:
        return {"refused": exc.code}
    return {"refused": None}


@app.handler("RV_CHARGES")
async def charges(ctx):
    for _ in range(4):
        await ctx.charge("0.01")
    await ctx.report_event("HTTP_PROBE_OK", http_status=200)
    return {"leases": len(await ctx.leases())}


@app.handler("RV_STUCK")
def stuck(ctx):
    # A sync handler that ignores cancellation: its thread runs on past the shutdown grace.
    import time
    time.sleep(90)


@app.handler("RV_BAN")
async def report_and_ban(ctx):
    await ctx.report_event("HTTP_PROBE_FAIL", http_status=403)
    return {"revoked": list(ctx.revoked_lease_ids), "leases": ctx.lease_ids}
'''


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("remote_app")
    (d / "remote_edges_app.py").write_text(textwrap.dedent(_REMOTE_APP))
    return d


def _remote_worker(worker_server: Server, key: str, app_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": child_pythonpath(str(app_dir)), "CREEP_API_KEY": key}
    env.pop("CREEP_DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "creep.cli", "worker", "--app", "remote_edges_app:app",
         "--api-url", worker_server.url, "--log-level", "WARNING", "--concurrency", "2", *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _submit(c: httpx.Client, task_type: str, **fields: Any) -> str:
    r = c.post("/v1/tasks", json={"task_type": task_type, **fields})
    assert r.status_code == 201, r.text
    task_id: str = r.json()["task_id"]
    return task_id


def _wait_for(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _asset(c: httpx.Client, **fields: Any) -> dict[str, Any]:
    r = c.post("/v1/assets", json={"sku_category": "RV_NET", "sku_code": "ip.uk.1",
                                   "currency": "USD", **fields})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


_HINTED = {"resource_hints": [{"sku_category": "RV_NET"}], "currency": "USD",
           "constraints": {"max_retries": 0}}


# -- remote (HTTP) worker: lease context -------------------------------------------------------


def test_remote_worker_ctx_charge_and_earn_fail_the_task(worker_server: Server, app_dir: Path) -> None:
    """A handler calling ctx.charge/ctx.earn runs fine on a database worker, but under
    `creep worker --api-url` HttpWorkerStore has no ledger_record: AttributeError, the task
    is dead-lettered and nothing reaches the ledger."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        _asset(c)
        task = _submit(c, "RV_CHARGE", max_total_cost="5", **_HINTED)
        worker = _remote_worker(worker_server, key, app_dir, "--burst")
        out, _ = worker.communicate(timeout=60)
        t = c.get(f"/v1/tasks/{task}").json()
        assert t["status"] == "SUCCESS", (t["status"], t["last_error"], out.decode()[-2000:])
        ledger = c.get("/v1/ledger", params={"task_id": task}).json()["items"]
        assert {e["entry_type"] for e in ledger} >= {"COST", "REVENUE"}


def test_remote_worker_ctx_report_event_fails_the_task(worker_server: Server, app_dir: Path) -> None:
    """ctx.report_event over HTTP: HttpWorkerStore has no asset_event_report."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        _asset(c)
        task = _submit(c, "RV_REPORT", **_HINTED)
        worker = _remote_worker(worker_server, key, app_dir, "--burst")
        out, _ = worker.communicate(timeout=60)
        t = c.get(f"/v1/tasks/{task}").json()
        assert t["status"] == "SUCCESS", (t["status"], t["last_error"], out.decode()[-2000:])


def test_remote_worker_ctx_leases_fails_the_task(worker_server: Server, app_dir: Path) -> None:
    """ctx.leases() over HTTP: HttpWorkerStore has no lease_list."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        _asset(c)
        task = _submit(c, "RV_LEASES", **_HINTED)
        worker = _remote_worker(worker_server, key, app_dir, "--burst")
        out, _ = worker.communicate(timeout=60)
        t = c.get(f"/v1/tasks/{task}").json()
        assert t["status"] == "SUCCESS", (t["status"], t["last_error"], out.decode()[-2000:])
        assert t["result_payload"] == {"n": 1}


def test_remote_worker_never_learns_of_a_revoked_lease(worker_server: Server, app_dir: Path) -> None:
    """README: a revoked lease stops the handler on the worker's next heartbeat and the task
    retries with LEASE_REVOKED. The HTTP heartbeat answers only cancel_requested, so a worker
    over the API keeps running on a banned asset and the task ends SUCCESS."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        asset = _asset(c)
        task = _submit(c, "RV_REVOKE", **{**_HINTED, "constraints": {"max_retries": 1}})
        worker = _remote_worker(worker_server, key, app_dir, "--claim-ttl", "5")
        try:
            _wait_for(lambda: c.get(f"/v1/tasks/{task}").json()["status"] == "RUNNING",
                      "the remote worker to claim the task")
            r = c.post(f"/v1/assets/{asset['asset_id']}/ban", json={"reason": "probe"})
            assert r.status_code == 200, r.text
            _wait_for(lambda: c.get(f"/v1/tasks/{task}").json()["status"] != "RUNNING",
                      "the task to leave RUNNING", timeout=40)
        finally:
            worker.terminate()
            worker.communicate(timeout=60)
        t = c.get(f"/v1/tasks/{task}").json()
        assert t["result_code"] == "LEASE_REVOKED", (t["status"], t["result_code"],
                                                      t["result_payload"])




def test_remote_worker_budget_refusal_is_budget_exceeded(worker_server: Server, app_dir: Path) -> None:
    """A cost over max_total_cost raises BudgetExceeded in the handler, as on a database
    worker (nothing is written)."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        task = _submit(c, "RV_OVER", max_total_cost="5", currency="USD")
        worker = _remote_worker(worker_server, key, app_dir, "--burst")
        out, _ = worker.communicate(timeout=60)
        t = c.get(f"/v1/tasks/{task}").json()
        assert t["result_payload"] == {"refused": "BUDGET_EXCEEDED"}, (t, out.decode()[-2000:])
        assert c.get("/v1/ledger", params={"task_id": task}).json()["items"] == []


def test_remote_worker_duplicate_event_id_is_no_lost_claim(
    worker_server: Server, app_dir: Path,
) -> None:
    """An asset event reported under an id that exists already answered 409 typed
    `conflict`, as a stale claim token did: creep's HTTP worker raised ClaimLost into the
    handler (a worker in another language would drop the task). A lost claim is now a 409
    of its own type, `claim-lost`; another event under that id is the handler's
    ConflictError and the claim holds (the same event again is the event written first)."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        _asset(c)
        task = _submit(c, "RV_REPORT_TWICE", **_HINTED)
        worker = _remote_worker(worker_server, key, app_dir, "--burst")
        out, _ = worker.communicate(timeout=60)
        t = c.get(f"/v1/tasks/{task}").json()
        assert t["status"] == "SUCCESS", (t["last_error"], out.decode()[-2000:])
        assert t["result_payload"] == {"second": True, "other": "conflict"}
        stale, token = _claimed(c, "RV_STALE")
        r = c.post(f"/v1/tasks/{stale}/heartbeat", json={"claim_token": str(uuid.uuid4())})
        assert r.status_code == 409 and r.json()["type"].endswith("/claim-lost"), r.text
        assert c.post(f"/v1/tasks/{stale}/complete",
                      json={"claim_token": token}).status_code == 200


def test_remote_worker_report_event_that_bans_revokes_the_lease(
    worker_server: Server, app_dir: Path,
) -> None:
    """ctx.report_event whose auto-ban bans the leased asset: its lease lands in
    ctx.revoked_lease_ids, as on a database worker."""
    from creep import Creep

    tenant, key = worker_server.tenant()
    with Creep(worker_server.database_url) as app:
        app.set_ban_policy("RV_NET", max_failures=1, window_seconds=3600, tenant_id=tenant)
    with worker_server.client(key) as c:
        asset = _asset(c)
        task = _submit(c, "RV_BAN", **_HINTED)
        worker = _remote_worker(worker_server, key, app_dir, "--burst")
        out, _ = worker.communicate(timeout=60)
        t = c.get(f"/v1/tasks/{task}").json()
        assert t["status"] == "SUCCESS", (t["last_error"], out.decode()[-2000:])
        assert t["result_payload"]["revoked"] == t["result_payload"]["leases"] != []
        assert c.get(f"/v1/assets/{asset['asset_id']}").json()["status"] == "BANNED"


def test_lease_context_routes_are_fenced_and_tenant_scoped(worker_server: Server) -> None:
    """The worker's ledger, asset-event and lease routes: another tenant's key gets 404, a
    stale token 409, a cost over budget 409 budget-exceeded, a foreign asset 422 asset_id."""
    _, key_a = worker_server.tenant()
    _, key_b = worker_server.tenant()
    with worker_server.client(key_a) as a, worker_server.client(key_b) as b:
        _asset(a)
        theirs = _asset(b)
        task = _submit(a, "RV_FENCE", max_total_cost="5", **_HINTED)
        r = a.post("/v1/workers/claim", json={"task_types": ["RV_FENCE"], "claim_ttl": 60})
        (item,) = r.json()["items"]
        token = item["claim_token"]
        base = f"/v1/tasks/{task}"
        cost = {"claim_token": token, "entry_type": "COST", "amount": "1"}
        event = {"claim_token": token, "event_type": "HTTP_PROBE_OK"}
        for path, body in (("ledger", cost), ("asset-events", event),
                           ("leases", {"claim_token": token})):
            assert b.post(f"{base}/{path}", json=body).status_code == 404, path
        stale = {**cost, "claim_token": str(uuid.uuid4())}
        assert a.post(f"{base}/ledger", json=stale).status_code == 409
        assert a.post(f"{base}/asset-events",
                      json={**event, "claim_token": stale["claim_token"]}).status_code == 409
        assert a.post(f"{base}/leases",
                      json={"claim_token": stale["claim_token"]}).json()["items"] == []
        assert a.post(f"{base}/ledger", json=cost).status_code == 201
        over = a.post(f"{base}/ledger", json={**cost, "amount": "10"})
        assert over.status_code == 409 and over.json()["type"].endswith("budget-exceeded")
        foreign = a.post(f"{base}/ledger", json={**cost, "asset_id": theirs["asset_id"]})
        assert foreign.status_code == 422
        assert [e["field"] for e in foreign.json()["errors"]] == ["asset_id"]
        assert a.post(f"{base}/asset-events", json=event).status_code == 201
        (lease,) = a.post(f"{base}/leases", json={"claim_token": token}).json()["items"]
        assert lease["task_id"] == task and "claim_token" not in lease


def _wedged_completions(worker_server: Server, app_dir: Path, task_type: str) -> None:
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        odd = _submit(c, task_type, constraints={"max_retries": 3})
        worker = _remote_worker(worker_server, key, app_dir, "--claim-ttl", "30", "--shutdown-grace", "1")
        try:
            # Claimed once: a Retry sends it back to QUEUED (run_after later) at once.
            _wait_for(lambda: c.get(f"/v1/tasks/{odd}").json()["attempt"] > 0,
                      "the remote worker to claim the task")
            time.sleep(1.0)
            plain = _submit(c, "RV_OK")
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                if c.get(f"/v1/tasks/{plain}").json()["status"] == "SUCCESS":
                    break
                time.sleep(0.1)
            t_odd, t_plain = (c.get(f"/v1/tasks/{x}").json() for x in (odd, plain))
        finally:
            worker.terminate()
            try:
                out, _ = worker.communicate(timeout=8)
            except subprocess.TimeoutExpired:
                worker.kill()
                out, _ = worker.communicate()
        assert t_odd["status"] != "RUNNING", ("the odd task's result was never written",
                                              out.decode()[-1500:])
        assert t_plain["status"] == "SUCCESS", (
            "a later, ordinary task's result is stuck behind it", t_plain["status"])


def test_remote_worker_wedged_by_a_fail_code_over_64_chars(worker_server: Server, app_dir: Path) -> None:
    """Fail(code=...) longer than FailIn's 64 characters: the API answers 422, which
    HttpWorkerStore raises as ValidationError (a CreepError); Worker._flush retries the same
    batch forever, so this and every later completion of the worker is never written."""
    _wedged_completions(worker_server, app_dir, "RV_LONG_CODE")


def test_remote_worker_wedged_by_a_long_retry_delay(worker_server: Server, app_dir: Path) -> None:
    """Retry(delay=40 days) (README: any delay, past year 9999 waits until then) is a 422
    over HTTP (retry_delay <= 30 days): the completer retries it forever, wedged."""
    _wedged_completions(worker_server, app_dir, "RV_LATER")


# -- the HTTP worker protocol: long-poll claim ------------------------------------------------


def test_long_poll_claim_keeps_claiming_after_the_worker_hung_up(worker_server: Server) -> None:
    """A worker's long poll (`wait`) that the worker abandons (its HTTP timeout, a crash, a
    restart) goes on in the server until `wait` runs out, and claims the next task submitted
    meanwhile for nobody: the task sits RUNNING until its claim expires and is then retried
    as WORKER_LOST with an attempt charged (dead-lettered if it was the last one)."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/workers/claim", json={"task_types": ["RV_GHOST"], "wait": 20,
                                              "claim_ttl": 60}, timeout=1)
        time.sleep(1.0)  # the worker is gone
        task = _submit(c, "RV_GHOST")
        time.sleep(2.0)
        t = c.get(f"/v1/tasks/{task}").json()
        assert t["status"] == "QUEUED", (
            f"claimed by a long poll whose client left: {t['status']}, "
            f"attempt {t['attempt']}")


# -- error answers -----------------------------------------------------------------------------


def test_unstorable_text_422_names_body_instead_of_the_field(worker_server: Server) -> None:
    """README: a 422 problem's `errors: [{field, in, rule}]` names each field. Text no
    database can store (NUL, a lone surrogate) is refused by _In's model validator with
    field "body" and the real field buried in the rule ("Value error, reason: ...")."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        task = _submit(c, "RV_TEXT")
        raw = {"content-type": "application/json"}
        for path, body, field in (
            (f"/v1/tasks/{task}/cancel", b'{"reason": "a\\u0000b"}', "reason"),
            ("/v1/tasks", b'{"task_type": "RV", "description": "a\\ud800b"}', "description"),
            ("/v1/ledger", b'{"entry_type": "REVENUE", "amount": "1", "currency": "USD", '
                           b'"description": "a\\u0000b"}', "description"),
        ):
            r = c.post(path, content=body, headers=raw)
            assert r.status_code == 422, r.text
            fields = [e["field"] for e in r.json()["errors"]]
            assert fields == [field], (path, r.json()["errors"])


def test_ledger_entry_with_unknown_asset_or_lease_blames_task_id(worker_server: Server) -> None:
    """POST /v1/ledger naming another tenant's (or no) asset or lease answers a 422 on
    `task_id: unknown task`, a field the request did not even send."""
    _, key_a = worker_server.tenant()
    _, key_b = worker_server.tenant()
    with worker_server.client(key_a) as a, worker_server.client(key_b) as b:
        asset = _asset(a)
        import uuid as _uuid
        for extra, field in (({"asset_id": asset["asset_id"]}, "asset_id"),
                             ({"lease_id": str(_uuid.uuid4())}, "lease_id")):
            r = b.post("/v1/ledger", json={"entry_type": "REVENUE", "amount": "1",
                                           "currency": "USD", **extra})
            assert r.status_code in (404, 422), r.text
            if r.status_code == 422:
                assert [e["field"] for e in r.json()["errors"]] == [field], r.json()


# -- batches: idempotency keys -----------------------------------------------------------------


def test_batch_resent_with_the_same_idempotency_keys_is_a_409_different_body(
    worker_server: Server,
) -> None:
    """The client gives every batch task an idempotency key "so a retried request never
    creates a task twice", but the very same POST /v1/batches sent again answers 409
    idempotency-conflict "with a different body": each task's request fingerprint includes
    the batch_id (and dependency task ids) the server drew at random for that request."""
    _, key = worker_server.tenant()
    body = {"title": "b", "tasks": [
        {"ref": "x", "task_type": "RV_B", "idempotency_key": "rv-bk-1"},
        {"ref": "y", "task_type": "RV_B", "idempotency_key": "rv-bk-2", "depends_on": ["x"]}]}
    with worker_server.client(key) as c:
        first = c.post("/v1/batches", json=body)
        assert first.status_code == 201, first.text
        again = c.post("/v1/batches", json=body)
        assert again.status_code != 409, again.text
        assert again.status_code in (200, 201), again.text
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json()["batch_id"] == first.json()["batch_id"]
        assert again.json()["tasks"] == first.json()["tasks"]  # (the refs are "tasks")
        listed = c.get("/v1/batches").json()["items"]
        assert [b["batch_id"] for b in listed] == [first.json()["batch_id"]]  # no empty one
        changed = {**body, "tasks": [{**body["tasks"][0], "priority": 7}, body["tasks"][1]]}
        assert c.post("/v1/batches", json=changed).status_code == 409


# -- the Python client -------------------------------------------------------------------------


def test_client_create_and_update_task_refuse_decimal_and_datetime(worker_server: Server) -> None:
    """README (Python client): money is a Decimal and timestamps are datetimes, "and either
    may be passed in". create_task, update_task and create_batch send their body without
    core.jsonable: TypeError before anything is sent."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from creep.client import Client

    _, key = worker_server.tenant()
    later = datetime.now(UTC) + timedelta(hours=1)
    with Client(worker_server.url, key) as cl:
        task = cl.create_task(task_type="RV_CL", max_total_cost=Decimal("5"), currency="USD",
                              run_after=later)
        assert task.max_total_cost == Decimal("5")
        updated = cl.update_task(task.task_id, expected_version=task.task_version,
                                 max_total_cost=Decimal("3"))
        assert updated.max_total_cost == Decimal("3")
        cl.create_batch("b", [{"task_type": "RV_CL", "run_after": later}])


# -- HttpWorkerStore against a scripted API ----------------------------------------------------


def test_http_store_turns_a_refused_outcome_into_a_retry_and_goes_on() -> None:
    """A 4xx other than 404/409/408/429 on complete/fail is not retried (it would block every
    later completion): the run is failed as a retry naming the refusal, and the next item is
    sent. Delays and codes are sent as the API takes them."""
    from datetime import UTC, datetime

    import orjson

    from creep.domain.errors import StorageError
    from creep.domain.outcomes import MAX_RETRY_DELAY, Backoff, Outcome, OutcomeKind, resolve
    from creep.ports import Completion
    from creep.remote.http_worker_store import HttpWorkerStore

    sent: list[tuple[str, dict[str, Any]]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/workers/"):  # a server without batch routes
            return httpx.Response(404)
        body = orjson.loads(request.content)
        sent.append((request.url.path, body))
        if request.url.path.endswith("/t1/complete"):
            return httpx.Response(413, text="too large")
        if request.url.path.endswith("/t3/fail"):
            return httpx.Response(429)
        return httpx.Response(200, json={})

    store = HttpWorkerStore("http://api", "k", transport=httpx.MockTransport(answer))
    now = datetime.now(UTC)

    def done(task_id: str, kind: OutcomeKind, **kw: Any) -> Completion:
        o = Outcome(task_id, "tok", kind, **kw)
        return Completion(o, resolve(o, attempt=1, max_attempts=3, now=now, backoff=Backoff()))

    applied = store.task_complete_many([
        done("t1", OutcomeKind.SUCCEEDED, result={"big": 1}),
        done("t2", OutcomeKind.RETRY, retry_delay=float("inf")),
        done("t4", OutcomeKind.FAILED, code="E" * 80),
        done("t5", OutcomeKind.RETRY, retry_delay=-1.0),
    ], now)
    assert applied == ["t2", "t4", "t5"]
    paths = [p for p, _ in sent]
    assert paths[:2] == ["/v1/tasks/t1/complete", "/v1/tasks/t1/fail"]
    assert sent[1][1]["kind"] == "retry" and "HTTP 413" in sent[1][1]["message"]
    assert sent[2][1]["retry_delay"] == MAX_RETRY_DELAY
    assert sent[3][1]["code"] == "E" * 64
    assert sent[4][1]["retry_delay"] == 0.0
    with pytest.raises(StorageError):  # busy, not refused: the worker sends it again
        store.task_complete_many([done("t3", OutcomeKind.RETRY)], now)


# -- the HTTP worker protocol: what a claim's calls answer -------------------------------------


def _claimed(c: httpx.Client, task_type: str, **fields: Any) -> tuple[str, str]:
    task = _submit(c, task_type, **fields)
    r = c.post("/v1/workers/claim", json={"task_types": [task_type], "claim_ttl": 60})
    (item,) = r.json()["items"]
    return task, item["claim_token"]


def test_worker_event_payload_nested_deeply_is_a_500(worker_server: Server) -> None:
    """POST /v1/tasks/{id}/events with a payload nested 300 deep (valid JSON the server
    parses) answered 500: the size check's orjson.dumps raised 'Recursion limit reached'.
    A 422 on `payload` now, as the other JSON fields of the API answer; nothing written."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        task, token = _claimed(c, "RV_DEEP_EVENT")
        payload = "1"
        for _ in range(300):
            payload = '{"a": ' + payload + "}"
        r = c.post(f"/v1/tasks/{task}/events", headers={"content-type": "application/json"},
                   content=f'{{"claim_token": "{token}", "event_type": "x.log", '
                           f'"payload": {payload}}}'.encode())
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["payload"]
        events = c.get(f"/v1/tasks/{task}/events").json()["items"]
        assert "x.log" not in [e["event_type"] for e in events]


def test_worker_asset_event_on_an_unknown_asset_reads_as_a_lost_task(worker_server: Server) -> None:
    """POST /v1/tasks/{id}/asset-events naming an asset that is not the tenant's (another
    tenant's, or none) answered 404, the protocol's "no such task": a worker drops its claim
    on it, and creep's own HTTP worker raised ClaimLost ("the claim is no longer held") into
    the handler. The ledger route answers 422 on asset_id for the same asset; so does this."""
    _, key_a = worker_server.tenant()
    _, key_b = worker_server.tenant()
    with worker_server.client(key_a) as a, worker_server.client(key_b) as b:
        theirs = _asset(b)
        task, token = _claimed(a, "RV_UNKNOWN_ASSET")
        for asset_id in (theirs["asset_id"], str(uuid.uuid4())):
            r = a.post(f"/v1/tasks/{task}/asset-events", json={
                "claim_token": token, "event_type": "HTTP_PROBE_FAIL", "asset_id": asset_id})
            assert r.status_code == 422, r.text
            assert [e["field"] for e in r.json()["errors"]] == ["asset_id"]
        events = b.get("/v1/events", params={"asset_id": theirs["asset_id"]}).json()["items"]
        assert [e for e in events if e["task_id"] == task] == []
        # The claim still holds: the task completes.
        assert a.post(f"/v1/tasks/{task}/complete",
                      json={"claim_token": token}).status_code == 200


def test_remote_worker_ctx_charge_fails_the_task_when_the_tenant_is_rate_limited(
    worker_server: Server, app_dir: Path,
) -> None:
    """README: an HTTP worker waits out a busy server (429) with backoff. Its claims,
    heartbeats and results did, but a handler's ctx.charge/earn/report_event/leases raised
    the 429 (StorageError) into the handler: under the tenant's rate limit the attempt
    failed although the server had written nothing. They are sent again now (a 429, like a
    refused connection, wrote nothing), each entry written once."""
    tenant, key = worker_server.tenant(rate_limit_per_second=2, rate_limit_burst=2)
    with worker_server.admin() as admin:  # not rate-limited: only the worker's calls are
        _asset(admin, tenant_id=tenant)
        task = _submit(admin, "RV_CHARGES", tenant_id=tenant, max_total_cost="5", **_HINTED)
        worker = _remote_worker(worker_server, key, app_dir, "--burst", "--concurrency", "1")
        out, _ = worker.communicate(timeout=120)
        t = admin.get(f"/v1/tasks/{task}").json()
        assert t["status"] == "SUCCESS", (t["status"], t["last_error"], out.decode()[-2000:])
        assert t["result_payload"] == {"leases": 1}
        ledger = admin.get("/v1/ledger", params={"task_id": task}).json()["items"]
        assert sorted(e["amount"] for e in ledger if e["entry_type"] == "COST"
                      and e["lease_id"] is None) == ["0.01"] * 4


def test_http_store_resends_a_handler_write_only_when_nothing_was_written() -> None:
    """A handler's write that may have reached the server (a read timeout) stays a plain
    StorageError for the handler (an asset event without an event_id); only a refused
    connection or a 429 (Retry-After kept) is NotWritten, which the worker sends again. A
    ledger entry goes with its entry_id, an asset event with its event_id, which the server
    writes once: a timeout is SafeToResend too (sent again, but not "nothing written"),
    unless the server is older than entry_id (a 422 on it), when the entry goes without."""
    from datetime import UTC, datetime
    from decimal import Decimal

    import orjson

    from creep.domain.errors import NotWritten, SafeToResend, StorageError
    from creep.domain.ledger import EntryType, LedgerEntry
    from creep.remote.http_worker_store import HttpWorkerStore

    old_server = False
    sent: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        sent.append(body)
        if old_server and "entry_id" in body:
            return httpx.Response(422, json={"errors": [
                {"field": "entry_id", "rule": "Extra inputs are not permitted"}]})
        task = request.url.path.split("/")[3]
        if task == "timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        if task == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(429, headers={"Retry-After": "2"})

    store = HttpWorkerStore("http://api", "k", transport=httpx.MockTransport(answer))
    now = datetime.now(UTC)
    for task in ("timeout", "refused", "limited"):
        store._tokens[task] = "tok"
        with pytest.raises(StorageError) as raised:
            store.asset_event_report({"event_type": "X"}, now, tenant_id="t", task_id=task)
        assert isinstance(raised.value, NotWritten) == (task != "timeout"), task
        event_id = str(uuid.uuid4())  # ctx.report_event gives its event one: written once
        with pytest.raises(SafeToResend) as resend:
            store.asset_event_report({"event_type": "X", "event_id": event_id}, now,
                                     tenant_id="t", task_id=task)
        assert isinstance(resend.value, NotWritten) == (task != "timeout"), task
        assert sent[-1]["event_id"] == event_id
        entry = LedgerEntry(str(uuid.uuid4()), "t", None, task, None, None, EntryType.COST,
                            Decimal("1"), "USD", None, now, now)
        with pytest.raises(SafeToResend) as written_once:
            store.ledger_record(entry)
        assert isinstance(written_once.value, NotWritten) == (task != "timeout"), task
        assert sent[-1]["entry_id"] == entry.entry_id
        if task == "limited":
            assert written_once.value.retry_after == 2.0
    old_server = True
    entry = LedgerEntry(str(uuid.uuid4()), "t", None, "timeout", None, None, EntryType.COST,
                        Decimal("1"), "USD", None, now, now)
    with pytest.raises(StorageError) as raised:
        store.ledger_record(entry)
    assert not isinstance(raised.value, SafeToResend) and not store.ledger_entry_ids
    assert ["entry_id" in body for body in sent[-2:]] == [True, False]


def test_http_store_raises_id_taken_for_an_entry_id_of_another_entry() -> None:
    """The server's 409 idempotency-conflict on a charge's entry_id is IdTaken, as the
    database's store raises it (a handler's ctx.charge under an id it used for another
    charge); another 409 of the call stays a ConflictError."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from creep.domain.errors import ConflictError, IdTaken
    from creep.domain.ledger import EntryType, LedgerEntry
    from creep.remote.http_worker_store import HttpWorkerStore

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.split("/")[3] == "taken":
            return httpx.Response(409, json={
                "type": "https://creep.dev/problems/idempotency-conflict", "status": 409,
                "errors": [{"field": "entry_id", "in": "body", "rule": "exists already"}]})
        return httpx.Response(409, json={"type": "https://creep.dev/problems/conflict",
                                         "status": 409, "detail": "something else"})

    store = HttpWorkerStore("http://api", "k", transport=httpx.MockTransport(answer))
    now = datetime.now(UTC)
    for task, raised in (("taken", IdTaken), ("other", ConflictError)):
        store._tokens[task] = "tok"
        entry = LedgerEntry(str(uuid.uuid4()), "t", None, task, None, None, EntryType.COST,
                            Decimal("1"), "USD", None, now, now)
        with pytest.raises(ConflictError) as exc:
            store.ledger_record(entry)
        assert type(exc.value) is raised


def test_remote_burst_worker_exits_0_with_work_queued_when_its_claims_are_refused(
    worker_server: Server, app_dir: Path,
) -> None:
    """`creep worker --api-url --burst` runs "until nothing is runnable now", and README
    says a busy server (429) is waited out. A claim answered 429 (the tenant's rate limit)
    or not answered at all counted as an empty queue: after two, the burst run stopped
    with exit code 0 and the task still QUEUED. A failed claim is tried again now."""
    tenant, key = worker_server.tenant(rate_limit_per_second=0.4, rate_limit_burst=1)
    with worker_server.admin() as admin:
        task = _submit(admin, "RV_OK", tenant_id=tenant)
        with worker_server.client(key) as c:  # spends the tenant's one token
            assert c.get(f"/v1/tasks/{task}").status_code == 200
        worker = _remote_worker(worker_server, key, app_dir, "--burst")
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out.decode()[-2000:]
        t = admin.get(f"/v1/tasks/{task}").json()
        assert t["status"] == "SUCCESS", (t["status"], out.decode()[-2000:])


def test_worker_ledger_route_books_only_the_leases_of_the_claim(worker_server: Server) -> None:
    """POST /v1/tasks/{id}/ledger (an HTTP worker's ctx.charge) checked only that lease_id
    was the tenant's: a run could book its cost against another task's lease, or name a
    lease with an asset it is not on. Both are 422 on lease_id now; an asset_id alone may
    be any of the tenant's assets."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        assets = [_asset(c, sku_code=f"ip.uk.{i}")["asset_id"] for i in range(3)]
        kind = f"RV_OWN_{uuid.uuid4().hex[:6]}"
        mine, token = _claimed(c, kind, **_HINTED)
        theirs, their_token = _claimed(c, kind, **_HINTED)

        def lease_of(task: str, tok: str) -> dict[str, Any]:
            r = c.post(f"/v1/tasks/{task}/leases", json={"claim_token": tok})
            (lease,) = r.json()["items"]
            return dict(lease)

        my_lease, their_lease = lease_of(mine, token), lease_of(theirs, their_token)
        unleased = next(a for a in assets
                        if a not in (my_lease["asset_id"], their_lease["asset_id"]))
        cost = {"claim_token": token, "entry_type": "COST", "amount": "1"}

        def charge(**fields: Any) -> httpx.Response:
            return c.post(f"/v1/tasks/{mine}/ledger", json={**cost, **fields})

        for fields in ({"lease_id": their_lease["lease_id"]},
                       {"lease_id": my_lease["lease_id"], "asset_id": unleased}):
            r = charge(**fields)
            assert r.status_code == 422, (fields, r.text)
            assert [e["field"] for e in r.json()["errors"]] == ["lease_id"], r.text
        assert charge(lease_id=my_lease["lease_id"],
                      asset_id=my_lease["asset_id"]).status_code == 201
        assert charge(asset_id=unleased).status_code == 201
        entries = c.get("/v1/ledger", params={"task_id": mine}).json()["items"]
        assert [(e["lease_id"], e["asset_id"]) for e in entries] == [
            (my_lease["lease_id"], my_lease["asset_id"]), (None, unleased)]
        # The task's next run books against its own leases, not the earlier run's.
        assert c.post(f"/v1/tasks/{mine}/fail", json={"claim_token": token, "kind": "requeue"}
                      ).status_code == 200
        r = c.post("/v1/workers/claim", json={"task_types": [kind], "claim_ttl": 60})
        (item,) = r.json()["items"]
        again = {**cost, "claim_token": item["claim_token"]}
        r = c.post(f"/v1/tasks/{mine}/ledger", json={**again, "lease_id": my_lease["lease_id"]})
        assert r.status_code == 422 and "earlier run" in r.json()["errors"][0]["rule"], r.text


def test_worker_asset_event_resent_with_its_event_id_is_written_once(
    worker_server: Server,
) -> None:
    """A ctx.report_event whose answer was lost could not be sent again: the same event_id
    answered 409 (so the HTTP worker raised StorageError into the handler, which could only
    report it again as a second event). Sent again with its event_id and the same body, the
    answer is the event written the first time with what it caused (200 with
    Idempotent-Replayed: true, as POST /v1/ledger answers a replay; nothing more written,
    even once the claim is gone); another body under that id is 409."""
    from creep import Creep

    tenant, key = worker_server.tenant()
    with Creep(worker_server.database_url) as app:
        app.set_ban_policy("RV_NET", max_failures=1, window_seconds=3600, tenant_id=tenant)
    with worker_server.client(key) as c:
        asset = _asset(c)
        task, token = _claimed(c, f"RV_ONCE_EV_{uuid.uuid4().hex[:6]}", **_HINTED)
        event_id = str(uuid.uuid4())
        event = {"claim_token": token, "event_type": "HTTP_PROBE_FAIL", "http_status": 403,
                 "event_id": event_id, "tags": ["t"], "context": {"k": [1, 2.5]},
                 "occurred_at": "2025-01-02T03:04:05.123456+00:00"}
        first = c.post(f"/v1/tasks/{task}/asset-events", json=event)
        assert first.status_code == 201, first.text
        assert [e["event_type"] for e in first.json()["caused"]] == [
            "ASSET_BANNED", "LEASE_REVOKED"]
        assert "idempotent-replayed" not in first.headers
        again = c.post(f"/v1/tasks/{task}/asset-events", json=event)
        assert (again.status_code, again.json()) == (200, first.json()), again.text
        assert again.headers["idempotent-replayed"] == "true"
        other = c.post(f"/v1/tasks/{task}/asset-events", json={**event, "http_status": 500})
        assert other.status_code == 409 and not other.json()["type"].endswith("claim-lost")
        assert c.post(f"/v1/tasks/{task}/complete",
                      json={"claim_token": token}).status_code == 200
        late = c.post(f"/v1/tasks/{task}/asset-events", json=event)
        assert (late.status_code, late.json()) == (200, first.json()), late.text
        assert late.headers["idempotent-replayed"] == "true"
        events = c.get("/v1/events", params={"asset_id": asset["asset_id"]}).json()["items"]
        assert [e["event_id"] for e in events].count(event_id) == 1
        assert [e["event_type"] for e in events].count("ASSET_BANNED") == 1


def test_asset_event_resent_with_its_event_id_answers_the_first_and_is_audited_once(
    worker_server: Server,
) -> None:
    """POST /v1/events (a provider's webhook, sent again after a lost answer) with an
    event_id that exists: the same body answers the event written the first time (200 with
    Idempotent-Replayed: true, as POST /v1/ledger does; it was a 201 without the header),
    with one audit row; another body under that id stays 409."""
    tenant, key = worker_server.tenant()
    with worker_server.client(key) as c:
        asset = _asset(c)
        event_id = str(uuid.uuid4())
        event = {"asset_id": asset["asset_id"], "event_type": "PROVIDER_NOTICE",
                 "event_id": event_id, "message": "m"}
        first = c.post("/v1/events", json=event)
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        again = c.post("/v1/events", json=event)
        assert (again.status_code, again.json()) == (200, first.json()), again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == first.headers["location"]
        assert c.post("/v1/events", json={**event, "message": "n"}).status_code == 409
    with worker_server.admin() as admin:
        rows = admin.get("/v1/audit", params={"resource_type": "assetEvent",
                                              "tenant_id": tenant}).json()["items"]
    assert [r["resource"]["identifier"] for r in rows] == [event_id]


def test_worker_ledger_entry_resent_with_its_entry_id_is_written_once(
    worker_server: Server,
) -> None:
    """A ctx.charge whose answer was lost after the server wrote it was charged again when
    sent again (and could even be refused as over budget by its own first write). Sent with
    its entry_id, a resend answers the entry written the first time and writes nothing (200
    with Idempotent-Replayed: true, as POST /v1/ledger; it was a 201 without the header);
    the same entry_id with another entry is a 409."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        task, token = _claimed(c, f"RV_ONCE_{uuid.uuid4().hex[:6]}", max_total_cost="1",
                               currency="USD")
        entry_id = str(uuid.uuid4())
        cost = {"claim_token": token, "entry_type": "COST", "amount": "1",
                "entry_id": entry_id, "description": "captcha"}
        first = c.post(f"/v1/tasks/{task}/ledger", json=cost)
        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        again = c.post(f"/v1/tasks/{task}/ledger", json=cost)
        assert again.status_code == 200, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json() and first.json()["entry_id"] == entry_id
        other = c.post(f"/v1/tasks/{task}/ledger", json={**cost, "amount": "0.5"})
        assert other.status_code == 409 and "entry_id" in other.text, other.text
        bad = c.post(f"/v1/tasks/{task}/ledger", json={**cost, "entry_id": "nope"})
        assert [e["field"] for e in bad.json()["errors"]] == ["entry_id"], bad.text
        entries = c.get("/v1/ledger", params={"task_id": task}).json()["items"]
        assert [(e["entry_id"], e["amount"]) for e in entries] == [(entry_id, "1")]


def test_remote_worker_waited_past_its_grace_for_a_sync_handler_at_shutdown(
    worker_server: Server, app_dir: Path,
) -> None:
    """A sync handler cannot be stopped: at SIGTERM its task is given back (requeued, no
    attempt charged) once the grace is up, and the process exits then, as a database
    worker's does. `creep worker --api-url` waited for the handler's thread at exit."""
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        task_id = _submit(c, "RV_STUCK")
        worker = _remote_worker(worker_server, key, app_dir, "--shutdown-grace", "1")
        try:
            _wait_for(lambda: c.get(f"/v1/tasks/{task_id}").json()["status"] == "RUNNING",
                      "the remote worker to start the task")
            worker.terminate()
            out, _ = worker.communicate(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
        assert worker.returncode == 0, out.decode()[-2000:]
        t = c.get(f"/v1/tasks/{task_id}").json()
        assert (t["status"], t["attempt"]) == ("QUEUED", 0), t
