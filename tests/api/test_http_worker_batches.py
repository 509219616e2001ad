"""creep's HTTP worker (HttpWorkerStore) on the batch routes, against a real server: one
request per heartbeat round and per batch of results; a server without them (404/405) gets
the per-task routes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from creep import Creep, TaskContext
from creep.domain.errors import NotWritten
from creep.domain.outcomes import Backoff, Outcome, OutcomeKind, resolve
from creep.engine.worker import Worker, WorkerSettings
from creep.ports import Completion
from creep.remote import http_worker_store
from creep.remote.http_worker_store import HttpWorkerStore
from tests.api.conftest import Server
from tests.api.test_api_operations import TcpProxy
from tests.api.test_api_worker_batches import (
    COMPLETE,
    HEARTBEAT,
    _audited,
    _claimed,
    _kind,
    _submit,
)


class Recorder(httpx.BaseTransport):
    """Real HTTP, with the paths it sent; `lose_answer` drops the server's answer to the
    first request of that path (sent and written, but the worker sees a 503)."""

    def __init__(self, lose_answer: str | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.paths: list[str] = []
        self.lose_answer = lose_answer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = self.inner.handle_request(request)
        if request.url.path == self.lose_answer:
            self.lose_answer = None
            response.read()
            response.close()
            return httpx.Response(503, text="the answer was lost on the way back")
        return response

    def close(self) -> None:
        self.inner.close()

    def per_task(self, name: str) -> list[str]:
        return [p for p in self.paths if p.startswith("/v1/tasks/") and p.endswith("/" + name)]


app = Creep()
started: set[str] = set()
runs: list[str] = []


@app.handler("BP_ECHO")
async def echo(ctx: TaskContext) -> Any:
    return {"echo": ctx.task.input_payload}


@app.handler("BP_WAIT")
async def wait(ctx: TaskContext) -> None:
    started.add(ctx.task_id)
    await asyncio.sleep(120)  # stopped by the worker when its heartbeat hears of a cancel


@app.handler("BP_ONCE")
async def once(ctx: TaskContext) -> None:
    runs.append(ctx.task_id)


@pytest.fixture
def remote(worker_server: Server) -> Iterator[tuple[str, httpx.Client]]:
    _, key = worker_server.tenant()
    with worker_server.client(key) as c:
        yield key, c


class LosesAClaimAnswer(TcpProxy):
    """A TCP proxy to the API that forwards the first claim request to the server, lets it
    answer (the claim is committed by then), and drops both connections before the answer
    reaches the worker; everything else passes."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target)
        self.armed = True
        self.dropped = threading.Event()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            claim = threading.Event()  # this connection's last request is the first claim
            threading.Thread(target=self._requests, args=(client, upstream, claim),
                             daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, claim),
                             daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, claim: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.armed and data.startswith(b"POST " + CLAIM.encode()):
                    self.armed = False
                    claim.set()
                dst.sendall(data)

    def _answers(self, src: socket.socket, dst: socket.socket, claim: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if claim.is_set():
                    break
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if claim.is_set():
            self.dropped.set()


def _run_worker(url: str, key: str, transport: Recorder, **settings: Any) -> dict[str, int]:
    store = HttpWorkerStore(url, key, claim_wait=0.0, transport=transport)
    options: dict[str, Any] = {"concurrency": 8, "claim_ttl": 2.0, "maintenance": False,
                               "poll_interval": 0.05, "shutdown_grace": 5.0, **settings}
    worker = Worker(store, app.handlers, WorkerSettings(**options))  # type: ignore[arg-type]
    try:
        return asyncio.run(worker.run(burst=True))
    finally:
        store.close()


def _wait_for(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


CLAIM = "/v1/workers/claim"


@pytest.mark.parametrize("lost", ["connection dropped", "503"])
def test_http_worker_whose_claim_answer_was_lost_runs_those_tasks_once(
    worker_server: Server, remote: tuple[str, httpx.Client], lost: str,
) -> None:
    """The server committed a claim whose answer never reached the worker. The worker sends
    the same claim (its claim_id) again and runs those tasks: without that they sat RUNNING
    until their claim expired, then were charged an attempt (dead-lettered at
    max_retries=0) without ever running."""
    key, c = remote
    ids = [_submit(c, "BP_ONCE", constraints={"max_retries": 0}) for _ in range(6)]
    runs.clear()
    rec = Recorder(lose_answer=CLAIM if lost == "503" else None)
    url, proxy = worker_server.url, None
    if lost == "connection dropped":
        server = urlsplit(worker_server.url)
        proxy = LosesAClaimAnswer((server.hostname or "127.0.0.1", server.port or 80))
        proxy.start()
        url = f"http://127.0.0.1:{proxy.port}"
    try:
        stats = _run_worker(url, key, rec)
    finally:
        if proxy is not None:
            proxy.cut()
    assert rec.lose_answer is None and (proxy is None or proxy.dropped.is_set())
    assert rec.paths.count(CLAIM) >= 2
    for task_id in ids:
        t = c.get(f"/v1/tasks/{task_id}").json()
        assert (t["status"], t["attempt"]) == ("SUCCESS", 1), t
    assert sorted(runs) == sorted(ids)  # each ran, once
    assert stats["completed"] == 6 and stats["lost"] == 0


def test_http_store_claims_without_a_claim_id_from_a_server_older_than_it() -> None:
    sent: list[dict[str, Any]] = []

    def older(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        sent.append(body)
        if "claim_id" in body:
            return httpx.Response(422, json={"errors": [
                {"field": "claim_id", "in": "body", "rule": "Extra inputs are not permitted"}]})
        return httpx.Response(200, json={"items": []})

    store = HttpWorkerStore("http://creep.test", "key", transport=httpx.MockTransport(older))
    now = datetime.now(UTC)
    assert store.task_claim("w", ["X"], 4, now, 30) == []
    assert store.task_claim("w", ["X"], 4, now, 30) == []
    assert store.claim_ids is False
    assert ["claim_id" in b for b in sent] == [True, False, False]


def test_http_worker_sends_a_round_of_results_as_one_request(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    key, c = remote
    ids = [_submit(c, "BP_ECHO", input_payload={"i": i}) for i in range(12)]
    rec = Recorder()
    stats = _run_worker(worker_server.url, key, rec)
    for i, task_id in enumerate(ids):
        t = c.get(f"/v1/tasks/{task_id}").json()
        assert (t["status"], t["result_payload"]) == ("SUCCESS", {"echo": {"i": i}}), t
    assert stats["completed"] == 12 and stats["lost"] == 0
    assert rec.per_task("complete") == [] and rec.per_task("fail") == []
    assert 1 <= rec.paths.count(COMPLETE) < 12, rec.paths


def test_http_worker_hears_a_cancel_through_the_batch_heartbeat(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    key, c = remote
    waiting = [_submit(c, "BP_WAIT") for _ in range(3)]
    rec = Recorder()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(
        _run_worker(worker_server.url, key, rec, heartbeat_interval=0.2)))
    thread.start()
    try:
        _wait_for(lambda: started.issuperset(waiting), "the handlers to start")
        _wait_for(lambda: rec.paths.count(HEARTBEAT) >= 2, "a heartbeat round or two")
        for task_id in waiting:
            assert c.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert [c.get(f"/v1/tasks/{t}").json()["status"] for t in waiting] == ["CANCELLED"] * 3
    assert rec.per_task("heartbeat") == []
    assert result["completed"] == 3


def test_http_store_hears_of_a_lost_claim_through_the_batch_heartbeat(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    key, c = remote
    (t1, k1), (t2, k2) = _claimed(c, _kind(), 2)
    assert c.post(f"/v1/tasks/{t2}/complete", json={"claim_token": k2}).status_code == 200
    assert c.post(f"/v1/tasks/{t1}/cancel").status_code == 200
    rec = Recorder()
    store = HttpWorkerStore(worker_server.url, key, transport=rec)
    try:
        result = store.task_heartbeat("w", [(t1, k1), (t2, k2)], datetime.now(UTC), 30)
    finally:
        store.close()
    assert (result.lost, result.cancel_requested) == ([t2], [t1])
    assert rec.paths == [HEARTBEAT]


def test_http_worker_resending_results_whose_answer_was_lost_keeps_their_outcome(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    """The first batch of results is written, but its answer is lost (a 503 from a proxy):
    the worker sends the batch again, which now answers applied=false. That is the worker's
    own earlier write, not a lost claim: the results stand, written once, audited once."""
    key, c = remote
    ids = [_submit(c, "BP_ECHO", input_payload={"i": i}) for i in range(3)]
    rec = Recorder(lose_answer=COMPLETE)
    stats = _run_worker(worker_server.url, key, rec)
    assert rec.lose_answer is None and rec.paths.count(COMPLETE) >= 2
    with worker_server.admin() as admin:
        for i, task_id in enumerate(ids):
            t = c.get(f"/v1/tasks/{task_id}").json()
            assert (t["status"], t["result_payload"], t["attempt"]) == (
                "SUCCESS", {"echo": {"i": i}}, 1), t
            events = [e["event_type"] for e in c.get(f"/v1/tasks/{task_id}/events").json()[
                "items"]]
            assert events.count("succeeded") == 1, events
            assert _audited(admin, task_id) == ["completed"]
    assert rec.per_task("fail") == []  # no refusal fallback either
    assert stats["completed"] == 3 and stats["lost"] == 0


def _done(task_id: str, token: str, result: Any) -> Completion:
    o = Outcome(task_id, token, OutcomeKind.SUCCEEDED, result=result)
    now = datetime.now(UTC)
    return Completion(o, resolve(o, attempt=1, max_attempts=3, now=now, backoff=Backoff()))


def test_http_store_singles_out_an_outcome_the_batch_route_refuses(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    """A result the API refuses (unstorable text) makes the batch a 422: the batch goes
    again one by one, so the others are written and the refused run retries."""
    key, c = remote
    (t1, k1), (t2, k2) = _claimed(c, _kind(), 2, constraints={"max_retries": 3})
    rec = Recorder()
    store = HttpWorkerStore(worker_server.url, key, transport=rec)
    try:
        applied = store.task_complete_many(
            [_done(t1, k1, {"ok": 1}), _done(t2, k2, "a\u0000b")], datetime.now(UTC))
    finally:
        store.close()
    assert applied == [t1] and store.batch_routes
    assert rec.paths == [COMPLETE, f"/v1/tasks/{t1}/complete", f"/v1/tasks/{t2}/complete",
                         f"/v1/tasks/{t2}/fail"]
    assert c.get(f"/v1/tasks/{t1}").json()["status"] == "SUCCESS"
    t = c.get(f"/v1/tasks/{t2}").json()
    assert t["status"] == "QUEUED" and "refused" in (t["result_message"] or t["last_error"]), t


@pytest.mark.parametrize("missing", ["/v1/workers/no-such-route", "/health/live"])
def test_http_worker_falls_back_to_per_task_routes_without_batch_routes(
    worker_server: Server, remote: tuple[str, httpx.Client], missing: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server older than the batch routes answers 404 (or 405, a GET-only path): the
    worker remembers and uses the per-task routes."""
    monkeypatch.setattr(http_worker_store, "HEARTBEAT_PATH", missing)
    monkeypatch.setattr(http_worker_store, "COMPLETE_PATH", missing)
    key, c = remote
    (t1, k1), (t2, k2) = _claimed(c, _kind(), 2)
    assert c.post(f"/v1/tasks/{t2}/cancel").status_code == 200
    rec = Recorder()
    store = HttpWorkerStore(worker_server.url, key, transport=rec)
    try:
        beat = store.task_heartbeat("w", [(t1, k1), (t2, k2)], datetime.now(UTC), 30)
        assert not store.batch_routes
        applied = store.task_complete_many(
            [_done(t1, k1, 1), _done(t2, str(uuid.uuid4()), 2)], datetime.now(UTC))
    finally:
        store.close()
    assert (beat.lost, beat.cancel_requested) == ([], [t2])
    assert applied == [t1]
    assert rec.paths == [missing, f"/v1/tasks/{t1}/heartbeat", f"/v1/tasks/{t2}/heartbeat",
                         f"/v1/tasks/{t1}/complete", f"/v1/tasks/{t2}/complete"]
    assert c.get(f"/v1/tasks/{t1}").json()["status"] == "SUCCESS"
    assert c.get(f"/v1/tasks/{t2}").json()["status"] == "RUNNING"

    ids = [_submit(c, "BP_ECHO", input_payload={"i": i}) for i in range(3)]
    rec = Recorder()
    assert _run_worker(worker_server.url, key, rec)["completed"] == 3
    assert [c.get(f"/v1/tasks/{t}").json()["status"] for t in ids] == ["SUCCESS"] * 3
    assert rec.paths.count(missing) == 1 and len(rec.per_task("complete")) == 3


class LoseProgressAnswer(Recorder):
    """Loses the answer to the first progress call (written, but the worker sees a 503)."""

    armed = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed and request.url.path.endswith("/progress"):
            self.armed, self.lose_answer = False, request.url.path
        return super().handle_request(request)


@app.handler("BP_PROGRESS")
async def report_progress(ctx: TaskContext) -> None:
    await ctx.progress(50, "half way")


def test_http_worker_resending_a_progress_whose_answer_was_lost_writes_it_once(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    """ctx.progress() on an HTTP worker is sent again after a failure that may have reached
    the server (as README says: waited out, not raised into the handler). Its first send
    was written: the resend wrote a second `progress` event."""
    key, c = remote
    task_id = _submit(c, "BP_PROGRESS")
    rec = LoseProgressAnswer()
    stats = _run_worker(worker_server.url, key, rec)
    assert stats["completed"] == 1
    assert rec.per_task("progress") == [f"/v1/tasks/{task_id}/progress"] * 2
    assert c.get(f"/v1/tasks/{task_id}").json()["status"] == "SUCCESS"
    events = c.get(f"/v1/tasks/{task_id}/events").json()["items"]
    assert [e["payload"] for e in events if e["event_type"] == "progress"] == [
        {"progress": 50, "message": "half way"}]


class RefuseLaterHeartbeats(Recorder):
    """Real HTTP, except that every heartbeat request after the first answers 503."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == HEARTBEAT and HEARTBEAT in self.paths:
            self.paths.append(request.url.path)
            return httpx.Response(503, text="busy")
        return super().handle_request(request)


def test_http_store_keeps_the_answers_of_a_heartbeat_round_whose_later_chunk_failed(
    worker_server: Server, remote: tuple[str, httpx.Client], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above 1,000 running tasks a heartbeat round is several requests. A later one failing
    (a 503) raised out of the round, dropping what the earlier ones answered: a cancel the
    worker never acted on, a lost claim it kept running. The answers received are kept."""
    monkeypatch.setattr(http_worker_store, "MAX_BATCH", 2)
    key, c = remote
    (t1, k1), (t2, k2), (t3, k3) = _claimed(c, _kind(), 3)
    assert c.post(f"/v1/tasks/{t1}/cancel").status_code == 200
    assert c.post(f"/v1/tasks/{t2}/complete", json={"claim_token": k2}).status_code == 200
    rec = RefuseLaterHeartbeats()
    store = HttpWorkerStore(worker_server.url, key, transport=rec)
    try:
        result = store.task_heartbeat("w", [(t1, k1), (t2, k2), (t3, k3)], datetime.now(UTC),
                                      30)
    finally:
        store.close()
    assert rec.paths == [HEARTBEAT, HEARTBEAT]
    assert (result.cancel_requested, result.lost, result.revoked) == ([t1], [t2], {})


class LoseLedgerAnswer(Recorder):
    """Loses the answer to the first ledger call (written, but the worker sees a 503)."""

    armed = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed and request.url.path.endswith("/ledger"):
            self.armed, self.lose_answer = False, request.url.path
        return super().handle_request(request)


@app.handler("BP_CHARGE")
async def charge_once(ctx: TaskContext) -> dict[str, str]:
    entry = await ctx.charge("0.30", description="captcha")
    return {"entry_id": entry.entry_id}


def test_http_worker_resends_a_charge_whose_answer_was_lost_and_it_is_written_once(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    """A ctx.charge that reached the server but whose answer was lost (a 503 from a proxy, a
    timeout) raised StorageError into the handler, failing the attempt with the cost
    written; a handler that tried again charged twice. The worker sends it again with the
    entry's id, which the server writes once."""
    key, c = remote
    task_id = _submit(c, "BP_CHARGE", currency="USD", max_total_cost="0.30")
    rec = LoseLedgerAnswer()
    stats = _run_worker(worker_server.url, key, rec)
    t = c.get(f"/v1/tasks/{task_id}").json()
    assert (t["status"], t["attempt"]) == ("SUCCESS", 1), t
    assert stats["completed"] == 1
    assert rec.per_task("ledger") == [f"/v1/tasks/{task_id}/ledger"] * 2
    entries = c.get("/v1/ledger", params={"task_id": task_id}).json()["items"]
    assert [(e["entry_id"], e["amount"]) for e in entries] == [
        (t["result_payload"]["entry_id"], "0.30")]


class LoseEventAnswer(Recorder):
    """Loses the answer to the first asset-event call (written; the worker sees a 503)."""

    armed = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed and request.url.path.endswith("/asset-events"):
            self.armed, self.lose_answer = False, request.url.path
        return super().handle_request(request)


@app.handler("BP_REPORT")
async def report_once(ctx: TaskContext) -> dict[str, Any]:
    event = await ctx.report_event("HTTP_PROBE_FAIL", http_status=403)
    await ctx.heartbeat()  # hears of the revocation: one the handler caused does not stop it
    return {"event_id": event.event_id, "revoked": list(ctx.revoked_lease_ids)}


def test_http_worker_resends_a_reported_event_whose_answer_was_lost_and_it_is_written_once(
    worker_server: Server,
) -> None:
    """A ctx.report_event that reached the server but whose answer was lost raised
    StorageError into the handler, failing the attempt with the event written (and a
    handler that tried again reported it twice). The worker sends it again with its
    event_id, which the server writes once, answering what it caused the first time (the
    auto-ban's revocation of the handler's own lease, which then does not stop it)."""
    tenant, key = worker_server.tenant()
    with Creep(worker_server.database_url) as admin_app:
        admin_app.set_ban_policy("BP_NET", max_failures=1, window_seconds=3600,
                                 tenant_id=tenant)
    with worker_server.client(key) as c:
        r = c.post("/v1/assets", json={"sku_category": "BP_NET", "sku_code": "ip.1",
                                       "currency": "USD"})
        assert r.status_code == 201, r.text
        asset_id = r.json()["asset_id"]
        task_id = _submit(c, "BP_REPORT", resource_hints=[{"sku_category": "BP_NET"}],
                          currency="USD", constraints={"max_retries": 0})
        rec = LoseEventAnswer()
        stats = _run_worker(worker_server.url, key, rec)
        t = c.get(f"/v1/tasks/{task_id}").json()
        assert (t["status"], t["attempt"]) == ("SUCCESS", 1), t
        assert stats["completed"] == 1
        assert rec.per_task("asset-events") == [f"/v1/tasks/{task_id}/asset-events"] * 2
        events = c.get("/v1/events", params={"asset_id": asset_id}).json()["items"]
    reported = [e for e in events if e["event_type"] == "HTTP_PROBE_FAIL"]
    assert [e["event_id"] for e in reported] == [t["result_payload"]["event_id"]]
    revoked = [e["lease_id"] for e in events if e["event_type"] == "LEASE_REVOKED"]
    assert t["result_payload"]["revoked"] == revoked != []


class NeverAnswerLedger(Recorder):
    """The first ledger call is written but its answer lost (a 503); every later one is
    lost the same way (`busy` False) or refused unwritten with a 429 (`busy` True)."""

    def __init__(self, busy: bool) -> None:
        super().__init__()
        self.busy = busy
        self.ledger_calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/ledger"):
            self.ledger_calls += 1
            if self.busy and self.ledger_calls > 1:
                self.paths.append(request.url.path)
                return httpx.Response(429, text="slow down")
            self.lose_answer = request.url.path
        return super().handle_request(request)


@app.handler("BP_CHARGE_UNANSWERED")
async def charge_unanswered(ctx: TaskContext) -> dict[str, Any]:
    try:
        await ctx.charge("0.30", description="captcha")
    except Exception as exc:  # what the handler is told is the test
        return {"error": type(exc).__name__, "not_written": isinstance(exc, NotWritten),
                "message": str(exc)}
    return {"error": None}


@pytest.mark.parametrize("busy", [False, True], ids=["answers_lost", "then_busy"])
def test_http_worker_charge_resent_until_the_claim_ttl_is_not_told_nothing_was_written(
    worker_server: Server, remote: tuple[str, httpx.Client], busy: bool,
) -> None:
    """A ctx.charge whose answers stay lost is sent again for up to the claim TTL; then the
    handler got NotWritten ("nothing written", or the 429 of a last resend) although the
    first send was written: a handler trusting it and charging again with a new entry
    would pay twice. It gets a StorageError saying the outcome is unknown."""
    key, c = remote
    task_id = _submit(c, "BP_CHARGE_UNANSWERED", currency="USD")
    rec = NeverAnswerLedger(busy)
    stats = _run_worker(worker_server.url, key, rec, claim_ttl=1.5)
    t = c.get(f"/v1/tasks/{task_id}").json()
    assert stats["completed"] == 1 and t["status"] == "SUCCESS", t
    told = t["result_payload"]
    assert (told["error"], told["not_written"]) == ("StorageError", False), told
    assert "unknown" in told["message"], told
    assert rec.ledger_calls > 2
    entries = c.get("/v1/ledger", params={"task_id": task_id}).json()["items"]
    assert [e["amount"] for e in entries] == ["0.30"]


class LoseLeasesAnswer(Recorder):
    """Loses the answer to the first leases call (a 503)."""

    armed = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed and request.url.path.endswith("/leases"):
            self.armed, self.lose_answer = False, request.url.path
        return super().handle_request(request)


@app.handler("BP_LEASES")
async def list_leases(ctx: TaskContext) -> dict[str, Any]:
    return {"leases": [x.lease_id for x in await ctx.leases()]}


def test_http_worker_sends_ctx_leases_again_after_a_lost_answer(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    """ctx.leases() only reads, but over HTTP a 5xx or a timeout on it raised StorageError
    into the handler (the attempt failed) as if it were a write that must not be sent
    twice. It is sent again, as a refused connection is."""
    key, c = remote
    r = c.post("/v1/assets", json={"sku_category": "BP_LEASE", "sku_code": "ip.1",
                                   "currency": "USD"})
    assert r.status_code == 201, r.text
    task_id = _submit(c, "BP_LEASES", resource_hints=[{"sku_category": "BP_LEASE"}],
                      currency="USD", constraints={"max_retries": 0})
    rec = LoseLeasesAnswer()
    stats = _run_worker(worker_server.url, key, rec)
    t = c.get(f"/v1/tasks/{task_id}").json()
    assert (t["status"], t["attempt"]) == ("SUCCESS", 1), t
    assert stats["completed"] == 1
    assert rec.per_task("leases") == [f"/v1/tasks/{task_id}/leases"] * 2
    assert t["result_payload"]["leases"] == t["lease_ids"] != []


@app.handler("BP_LONG_PROGRESS")
async def long_progress(ctx: TaskContext) -> str:
    await ctx.progress(50, "x" * 2500)
    return "ok"


def test_http_worker_progress_with_a_message_over_2000_chars_failed_the_attempt(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    """A database worker records any progress message, but the API takes one of at most
    2,000 characters: over HTTP, ctx.progress with a longer one raised the 422 into the
    handler, failing the attempt. It is cut to 2,000, as an outcome's message is."""
    key, c = remote
    task_id = _submit(c, "BP_LONG_PROGRESS", constraints={"max_retries": 0})
    stats = _run_worker(worker_server.url, key, Recorder())
    t = c.get(f"/v1/tasks/{task_id}").json()
    assert (t["status"], t["attempt"]) == ("SUCCESS", 1), t
    assert stats["completed"] == 1
    events = c.get(f"/v1/tasks/{task_id}/events").json()["items"]
    assert [e["payload"] for e in events if e["event_type"] == "progress"] == [
        {"progress": 50, "message": "x" * 2000}]


def test_http_worker_with_a_concurrency_over_2000_stopped_at_its_first_claim(
    worker_server: Server, remote: tuple[str, httpx.Client],
) -> None:
    """A worker claims up to half its concurrency at a time, but the claim route takes at
    most 1,000 tasks: with --concurrency 2002, the first claim was refused (422 max_tasks)
    and the worker exited with the error, where a database worker runs. The HTTP worker
    claims at most 1,000 per request."""
    key, c = remote
    ids = [_submit(c, "BP_ECHO", input_payload={"i": i}) for i in range(3)]
    stats = _run_worker(worker_server.url, key, Recorder(), concurrency=2002)
    assert stats["completed"] == 3
    assert [c.get(f"/v1/tasks/{t}").json()["status"] for t in ids] == ["SUCCESS"] * 3
