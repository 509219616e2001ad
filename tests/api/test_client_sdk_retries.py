"""The SDK resends a write only when that cannot write it twice, against a real server: a 503
may come after the server committed the request (its answer lost on the way back), so a
write is resent after one only when the server recognises the resend (an id the SDK chose
once per call); a refused connection or a 429 (nothing ran) is retried for every call."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from creep.client import (
    NO_RETRY,
    ApiProblem,
    AsyncClient,
    Claimed,
    Client,
    ClientError,
    RetryPolicy,
    TransportError,
)
from tests.api.conftest import Server
from tests.api.test_http_worker_batches import LosesAClaimAnswer

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)


class _Faults:
    """Faults planned per (method, path), each used once: `lose` sends the request to the
    server (which writes it) and answers 503 instead of its answer; `refuse` answers 429
    without sending it; `unreachable` fails to connect."""

    def __init__(self) -> None:
        self.planned: dict[tuple[str, str], str] = {}
        self.sent: list[tuple[str, str]] = []

    def plan(self, fault: str, method: str, path: str) -> None:
        self.planned[(method, path)] = fault

    def take(self, request: httpx.Request) -> str | None:
        key = (request.method, request.url.path)
        fault = self.planned.pop(key, None)
        if fault != "refuse" and fault != "unreachable":
            self.sent.append(key)
        if fault == "unreachable":
            raise httpx.ConnectError("connection refused", request=request)
        return fault

    @staticmethod
    def answer(fault: str | None, request: httpx.Request) -> httpx.Response | None:
        if fault == "lose":
            return httpx.Response(503, text="the answer was lost on the way back")
        if fault == "refuse":
            return httpx.Response(429, headers={"Retry-After": "0"}, text="slow down")
        return None


class Faulty(_Faults, httpx.BaseTransport):
    def __init__(self) -> None:
        super().__init__()
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.take(request)
        if fault == "refuse":
            return self.answer(fault, request)  # type: ignore[return-value]
        response = self.inner.handle_request(request)
        if fault == "lose":
            response.read()
            response.close()
            return self.answer(fault, request)  # type: ignore[return-value]
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncFaulty(_Faults, httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        super().__init__()
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.take(request)
        if fault == "refuse":
            return self.answer(fault, request)  # type: ignore[return-value]
        response = await self.inner.handle_async_request(request)
        if fault == "lose":
            await response.aread()
            await response.aclose()
            return self.answer(fault, request)  # type: ignore[return-value]
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_write_whose_answer_was_lost_is_written_once(server: Server) -> None:
    _, key = server.tenant()
    faults = Faulty()
    project = f"p-{uuid.uuid4().hex[:8]}"
    with Client(server.url, key, retry=FAST, transport=faults) as c:
        # Replayed by the id the SDK chose: the call answers the object written the first time.
        kind = f"RETRIED-{uuid.uuid4().hex[:8]}"
        faults.plan("lose", "POST", "/v1/tasks")
        task = c.create_task(task_type=kind, env="dev")
        assert [t.task_id for t in c.iter_tasks(task_type=kind)] == [task.task_id]
        faults.plan("lose", "POST", "/v1/batches")
        batch = c.create_batch("retried", [{"task_type": kind}, {"task_type": kind}])
        assert c.get_batch(batch.batch_id).total_count == 2
        assert len(list(c.iter_tasks(task_type=kind))) == 3
        asset = c.create_asset(sku_category="RAW_NET", sku_code=f"retry.{project}")
        faults.plan("lose", "POST", "/v1/events")
        reported = c.report_event("PROBE_FAILED", asset.asset_id)
        probes = [e for e in c.iter_events(asset_id=asset.asset_id)
                  if e.event_type == "PROBE_FAILED"]
        assert [e.event_id for e in probes] == [reported.event.event_id]
        faults.plan("lose", "POST", "/v1/ledger")
        entry = c.record_entry("REVENUE", "2.50", "USD", project_id=project)
        assert [(e.entry_id, e.amount) for e in c.iter_ledger(project_id=project)] == [
            (entry.entry_id, Decimal("2.50"))]
        faults.plan("lose", "POST", "/v1/assets")
        lost = c.create_asset(sku_category="RAW_NET", sku_code=f"lost.{project}")
        assert [a.asset_id for a in c.iter_assets(sku_code=f"lost.{project}")] == [
            lost.asset_id]
        faults.plan("lose", "POST", "/v1/assets")
        many = c.create_assets([{"sku_category": "RAW_NET", "sku_code": f"many.{project}"},
                                {"sku_category": "GPU", "sku_code": f"many.{project}"}])
        assert sorted(a.asset_id for a in c.iter_assets(sku_code=f"many.{project}")) == sorted(
            a.asset_id for a in many)
        assert c.stats.statuses == [503] * 6

        # No id the server would know again: the 503 is the answer, and it was written once.
        faults.plan("lose", "POST", "/v1/schedules")
        with pytest.raises(ApiProblem) as unanswered:
            c.create_schedule(name=f"lost-{project}", type=f"SCHED-{project}", interval=3600,
                              enabled=False)
        assert unanswered.value.status == 503
        assert [s.name for s in c.list_schedules(task_type=f"SCHED-{project}")] == [
            f"lost-{project}"]

        # The worker protocol: an event of the run is not resent, a charge carries entry_id.
        [claimed] = c.claim([kind], max_tasks=1)
        run = claimed.task.task_id
        faults.plan("lose", "POST", f"/v1/tasks/{run}/events")
        with pytest.raises(ApiProblem):
            c.worker_action(run, "events", claimed.claim_token, event_type="sdk.note")
        assert [e.event_type for e in c.iter_task_events(run)].count("sdk.note") == 1
        faults.plan("lose", "POST", f"/v1/tasks/{run}/ledger")
        charge = c.worker_action(run, "ledger", claimed.claim_token, entry_type="COST",
                                 amount="0.10", currency="USD")
        assert [e.entry_id for e in c.iter_ledger(task_id=run)] == [charge["entry_id"]]
        # Each write above reached the server once, and the replayable ones twice.
        assert faults.sent.count(("POST", "/v1/ledger")) == 2
        assert faults.sent.count(("POST", "/v1/events")) == 2
        assert faults.sent.count(("POST", "/v1/assets")) == 5
        assert faults.sent.count(("POST", "/v1/schedules")) == 1


def test_a_write_that_never_ran_is_retried(server: Server) -> None:
    """A refused connection (nothing sent) and a 429 (refused before the route ran) are
    retried for any call, a write without an id too."""
    _, key = server.tenant()
    faults = Faulty()
    project = f"p-{uuid.uuid4().hex[:8]}"
    with Client(server.url, key, retry=FAST, transport=faults) as c:
        faults.plan("unreachable", "POST", "/v1/ledger")
        first = c.record_entry("REVENUE", "1", "USD", project_id=project)
        faults.plan("refuse", "POST", "/v1/ledger")
        second = c.record_entry("REVENUE", "2", "USD", project_id=project)
        assert c.stats.statuses == [0, 429]
        assert sorted(e.entry_id for e in c.iter_ledger(project_id=project)) == sorted(
            [first.entry_id, second.entry_id])


def test_async_client_resends_the_same_way(server: Server) -> None:
    _, key = server.tenant()
    project = f"p-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        faults = AsyncFaulty()
        async with AsyncClient(server.url, key, retry=FAST, transport=faults) as ac:
            faults.plan("lose", "POST", "/v1/assets")
            asset = await ac.create_asset(sku_category="RAW_NET", sku_code=f"a.{project}")
            assert [a.asset_id async for a in ac.iter_assets(sku_code=f"a.{project}")] == [
                asset.asset_id]
            faults.plan("lose", "POST", "/v1/events")
            reported = await ac.report_event("PROBE_FAILED", asset.asset_id)
            probes = [e.event_id async for e in ac.iter_events(asset_id=asset.asset_id)
                      if e.event_type == "PROBE_FAILED"]
            assert probes == [reported.event.event_id]
            faults.plan("lose", "POST", "/v1/ledger")
            entry = await ac.record_entry("REVENUE", "3", "USD", project_id=project)
            assert [e.entry_id async for e in ac.iter_ledger(project_id=project)] == [
                entry.entry_id]
            assert faults.sent.count(("POST", "/v1/ledger")) == 2

    asyncio.run(main())


class HoldsAClaimAnswer(LosesAClaimAnswer):
    """Forwards the first claim to the server (which commits it) and never passes its answer
    on: the client's read times out."""

    def _answers(self, src: socket.socket, dst: socket.socket, claim: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if claim.is_set():
                    self.dropped.set()
                    continue
                dst.sendall(data)


def _proxy(server: Server, lost: str) -> LosesAClaimAnswer:
    target = urlsplit(server.url)
    kind = HoldsAClaimAnswer if lost == "timeout" else LosesAClaimAnswer
    proxy = kind((target.hostname or "127.0.0.1", target.port or 80))
    proxy.start()
    return proxy


def _queued(c: Client, kind: str, n: int) -> list[str]:
    return [c.create_task(task_type=kind, env="dev", constraints={"max_retries": 0}).task_id
            for _ in range(n)]


def _runs_each_once(c: Client, claimed: list[Claimed], ids: list[str]) -> None:
    """What the lost claim took, answered again: each task once, under the claim's token,
    its attempt the first; they complete (the token holds) and are charged nothing more."""
    assert sorted(x.task.task_id for x in claimed) == sorted(ids)
    assert len({x.claim_token for x in claimed}) == 1
    for x in claimed:
        assert (x.task.status, x.task.attempt) == ("RUNNING", 1)
        c.worker_action(x.task.task_id, "complete", x.claim_token, result={})
    for task_id in ids:
        t = c.get_task(task_id)
        assert (t.status, t.attempt) == ("SUCCESS", 1)


@pytest.mark.parametrize("lost", ["connection dropped", "timeout", "503"])
def test_a_claim_whose_answer_was_lost_answers_what_it_claimed(server: Server,
                                                               lost: str) -> None:
    """The server committed a claim whose answer never reached the SDK. The SDK sends it
    again (its claim_id, "resend": true) and answers the tasks it took: they used to stay
    RUNNING with no one running them until their claim expired, then were charged an attempt
    (dead-lettered at max_retries=0) without having run."""
    _, key = server.tenant()
    kind = f"LOST-CLAIM-{uuid.uuid4().hex[:8]}"
    with Client(server.url, key) as c:
        ids = _queued(c, kind, 3)
    faults, url, proxy = Faulty(), server.url, None
    if lost == "503":
        faults.plan("lose", "POST", "/v1/workers/claim")
    else:
        proxy = _proxy(server, lost)
        url = f"http://127.0.0.1:{proxy.port}"
    try:
        with Client(url, key, retry=FAST, transport=faults, timeout=2) as c:
            claimed = c.claim([kind], max_tasks=10, claim_ttl=60)
            assert c.stats.retries == 1
    finally:
        if proxy is not None:
            proxy.cut()
    assert proxy is None or proxy.dropped.is_set()
    with Client(server.url, key) as c:
        _runs_each_once(c, claimed, ids)


def test_a_claim_that_raised_is_replayed_by_its_claim_id(server: Server) -> None:
    """Without retries (or once they are spent) the call raises; the same claim_id sent again
    with resend=True answers what the lost claim took, and claims nothing more."""
    _, key = server.tenant()
    kind = f"REPLAYED-{uuid.uuid4().hex[:8]}"
    with Client(server.url, key) as c:
        ids = _queued(c, kind, 2)
    proxy = _proxy(server, "connection dropped")
    claim_id = str(uuid.uuid4())
    try:
        with (Client(f"http://127.0.0.1:{proxy.port}", key, retry=NO_RETRY) as c,
              pytest.raises(TransportError)):
            c.claim([kind], max_tasks=2, claim_id=claim_id)
    finally:
        proxy.cut()
    with Client(server.url, key) as c:
        later = _queued(c, kind, 1)
        claimed = c.claim([kind], max_tasks=2, claim_id=claim_id, resend=True)
        assert {x.claim_token for x in claimed} == {claim_id}
        _runs_each_once(c, claimed, ids)
        assert c.get_task(later[0]).status == "QUEUED"


def test_async_client_replays_a_claim_whose_answer_was_lost(server: Server) -> None:
    _, key = server.tenant()
    kind = f"ALOST-{uuid.uuid4().hex[:8]}"
    with Client(server.url, key) as c:
        ids = _queued(c, kind, 3)
    proxy = _proxy(server, "connection dropped")

    async def main() -> list[Claimed]:
        async with AsyncClient(f"http://127.0.0.1:{proxy.port}", key, retry=FAST) as ac:
            claimed = await ac.claim([kind], max_tasks=10, claim_ttl=60)
            assert ac.stats.retries == 1
            return claimed

    try:
        claimed = asyncio.run(main())
    finally:
        proxy.cut()
    assert proxy.dropped.is_set()
    with Client(server.url, key) as c:
        _runs_each_once(c, claimed, ids)


def test_claim_from_a_server_older_than_claim_id_goes_without_it() -> None:
    sent: list[dict[str, Any]] = []

    def older(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        sent.append(body)
        if "claim_id" in body:
            return httpx.Response(422, json={"errors": [
                {"field": "claim_id", "in": "body", "rule": "Extra inputs are not permitted"}]})
        return httpx.Response(200, json={"items": []})

    with Client("http://creep.test", "key", transport=httpx.MockTransport(older)) as c:
        assert c.claim(["X"]) == []
        assert c.claim(["X"]) == []
        # A claim_id the caller chose is not dropped: the server cannot honour it.
        with pytest.raises(ApiProblem):
            c.claim(["X"], claim_id=str(uuid.uuid4()))
        with pytest.raises(ClientError, match="claim_id"):
            c.claim(["X"], resend=True)  # a resend names the claim it sends again
    assert ["claim_id" in b for b in sent] == [True, False, False, True]


def test_create_asset_takes_the_callers_asset_id(server: Server) -> None:
    """The same create with an asset_id of the caller's answers the asset made then;
    another asset under it is the server's 409 naming asset_id."""
    _, key = server.tenant()
    asset_id = str(uuid.uuid4())
    with Client(server.url, key, retry=FAST) as c:
        first = c.create_asset(sku_category="RAW_NET", sku_code="own.1", asset_id=asset_id)
        again = c.create_asset(sku_category="RAW_NET", sku_code="own.1", asset_id=asset_id)
        assert first.asset_id == again.asset_id == asset_id and again.raw == first.raw
        with pytest.raises(ApiProblem) as taken:
            c.create_asset(sku_category="RAW_NET", sku_code="own.2", asset_id=asset_id)
        assert taken.value.status == 409
        assert taken.value.short_type == "idempotency-conflict"
        assert [e["field"] for e in taken.value.errors] == ["asset_id"]
        with pytest.raises(ApiProblem) as listed:
            c.create_assets([{"sku_category": "RAW_NET", "sku_code": "own.3"},
                             {"sku_category": "RAW_NET", "sku_code": "own.2",
                              "asset_id": asset_id}])
        assert [e["field"] for e in listed.value.errors] == ["[1].asset_id"]
        assert [a.asset_id for a in c.iter_assets()] == [asset_id]


def test_record_entry_takes_the_callers_entry_id(server: Server) -> None:
    """An entry_id of the caller's: a later call with it (a script run again) answers the
    entry written then; another entry under it is the server's 409."""
    _, key = server.tenant()
    project = f"p-{uuid.uuid4().hex[:8]}"
    entry_id = str(uuid.uuid4())
    with Client(server.url, key, retry=FAST) as c:
        first = c.record_entry("REFUND", "1.25", "USD", project_id=project, entry_id=entry_id)
        again = c.record_entry("REFUND", Decimal("1.250"), "USD", project_id=project,
                               entry_id=entry_id)
        assert first.entry_id == again.entry_id == entry_id
        assert again.raw == first.raw
        with pytest.raises(ApiProblem) as taken:
            c.record_entry("REFUND", "9", "USD", project_id=project, entry_id=entry_id)
        assert taken.value.status == 409
        assert taken.value.short_type == "idempotency-conflict"
        assert [e["field"] for e in taken.value.errors] == ["entry_id"]
        assert [e.entry_id for e in c.iter_ledger(project_id=project)] == [entry_id]
