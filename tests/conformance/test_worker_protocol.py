"""The worker protocol behind the HTTP worker endpoints, on every backend: tenant-scoped
claims, long-poll waits, heartbeats that answer cancellation, progress, complete, fail and
worker events, all fenced by the claim token."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from creep import Backoff, ClaimLost, Creep, FrozenClock, NotFound, ValidationError
from creep.engine.worker_protocol import ClaimRequest, WorkerProtocol, validate_claim


@pytest.fixture
def proto(app: Creep, clock: FrozenClock) -> Iterator[WorkerProtocol]:
    p = WorkerProtocol(app.store, clock, Backoff(base_seconds=10, cap_seconds=10),
                       poll_interval=0.05)
    yield p
    p.close()


def _req(n: int = 10, wait: float = 0.0, types: list[str] | None = None) -> ClaimRequest:
    return validate_claim("w1", types or ["A"], n, wait, 30)


def test_claim_is_scoped_to_the_tenant(app: Creep, proto: WorkerProtocol) -> None:
    mine = app.submit(tenant_id="t1", task_type="A", priority=10)
    theirs = app.submit(tenant_id="t2", task_type="A", priority=90)
    claimed = asyncio.run(proto.claim(_req(), "t1"))
    assert [c.task.task_id for c in claimed] == [mine.task_id]
    assert claimed[0].task.status == "RUNNING" and claimed[0].task.attempt == 1
    assert [e.event_type for e in app.task_events(mine.task_id)][-1] == "started"
    assert app.get_task(theirs.task_id).status == "QUEUED"
    # An admin worker (no tenant) takes any tenant's task.
    assert [c.task.task_id for c in asyncio.run(proto.claim(_req(), None))] == [theirs.task_id]


def test_long_poll_returns_when_work_arrives(app: Creep, proto: WorkerProtocol) -> None:
    async def scenario() -> tuple[list[str], float]:
        started = time.monotonic()
        waiting = asyncio.create_task(proto.claim(_req(wait=30), "t1"))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        task = await asyncio.to_thread(app.submit, tenant_id="t1", task_type="A")
        claimed = await asyncio.wait_for(waiting, 20)
        assert [c.task.task_id for c in claimed] == [task.task_id]
        return [c.task.task_id for c in claimed], time.monotonic() - started

    ids, _ = asyncio.run(scenario())
    assert len(ids) == 1
    # Nothing to do: an empty answer once the wait is over.
    assert asyncio.run(proto.claim(_req(wait=0.1), "t1")) == []


def test_claim_gives_back_what_it_claimed_for_a_client_that_left(
    app: Creep, proto: WorkerProtocol,
) -> None:
    """The client hung up while the claim ran: the task goes back to the queue with no
    attempt charged, not RUNNING for nobody until the claim expires."""
    task = app.submit(tenant_id="t1", task_type="A")
    answers = iter([False, True])  # here before the claim, gone after it

    async def gone() -> bool:
        return next(answers)

    assert asyncio.run(proto.claim(_req(), "t1", gone)) == []
    back = app.get_task(task.task_id)
    assert back.status == "QUEUED" and back.attempt == 0
    assert [c.task.task_id for c in asyncio.run(proto.claim(_req(), "t1"))] == [task.task_id]


def test_a_claim_given_back_for_a_client_that_left_lets_its_resend_claim(
    app: Creep, proto: WorkerProtocol,
) -> None:
    """A claim_id claims once, but a claim given back claimed nothing: its resend (the
    client left, then sent it again) claims the task, not an empty answer."""
    task = app.submit(tenant_id="t1", task_type="A")
    claim_id = str(uuid.uuid4())
    answers = iter([False, True])

    async def gone() -> bool:
        return next(answers)

    first = validate_claim("w1", ["A"], 10, 0, 30, claim_id)
    assert asyncio.run(proto.claim(first, "t1", gone)) == []
    again = validate_claim("w1", ["A"], 10, 0, 30, claim_id, True)
    (c,) = asyncio.run(proto.claim(again, "t1"))
    assert (c.task.task_id, c.claim_token, c.task.attempt) == (task.task_id, claim_id, 1)
    # ... and then claims no more.
    app.submit(tenant_id="t1", task_type="A")
    assert asyncio.run(proto.claim(again, "t1")) == [c]


def test_heartbeat_progress_events_complete(app: Creep, proto: WorkerProtocol) -> None:
    task = app.submit(tenant_id="t1", task_type="A")
    (c,) = asyncio.run(proto.claim(_req(), "t1"))
    tok = c.claim_token
    assert not proto.heartbeat(task.task_id, tok, "t1", worker_id="w1",
                              claim_ttl=30).cancel_requested
    proto.progress(task.task_id, tok, "t1", 40, "rendering")
    ev = proto.add_event(task.task_id, tok, "t1", "log.line", {"line": "hello"})
    assert ev.event_type == "log.line" and ev.payload == {"line": "hello"}
    app.cancel(task.task_id)
    assert proto.heartbeat(task.task_id, tok, "t1", worker_id="w1", claim_ttl=30).cancel_requested
    done = proto.complete(task.task_id, tok, "t1", {"frames": 3})
    assert done.status == "SUCCESS" and done.result_payload == {"frames": 3}
    assert [e.event_type for e in app.task_events(task.task_id)] == [
        "created", "queued", "started", "progress", "log.line", "cancel_requested", "succeeded"]
    # The task is finished: the token is stale now, for every call.
    for call in (
        lambda: proto.heartbeat(task.task_id, tok, "t1", worker_id="w1", claim_ttl=30),
        lambda: proto.progress(task.task_id, tok, "t1", 50),
        lambda: proto.add_event(task.task_id, tok, "t1", "log.line", {}),
        lambda: proto.complete(task.task_id, tok, "t1", None),
        lambda: proto.fail(task.task_id, tok, "t1", kind="retry"),
    ):
        with pytest.raises(ClaimLost):
            call()


def test_stale_token_after_rescue_and_reclaim(
    app: Creep, proto: WorkerProtocol, clock: FrozenClock
) -> None:
    task = app.submit(tenant_id="t1", task_type="A")
    (first,) = asyncio.run(proto.claim(validate_claim("w1", ["A"], 1, 0, 5), "t1"))
    clock.advance(10)  # the claim expires; maintenance requeues the task
    app.maintain()
    clock.advance(2)  # past the retry backoff
    (second,) = asyncio.run(proto.claim(validate_claim("w2", ["A"], 1, 0, 5), "t1"))
    assert second.task.attempt == 2 and second.claim_token != first.claim_token
    with pytest.raises(ClaimLost):
        proto.complete(task.task_id, first.claim_token, "t1", {"late": True})
    with pytest.raises(ClaimLost):
        proto.heartbeat(task.task_id, "not-a-token", "t1", worker_id="w1", claim_ttl=5)
    assert proto.complete(task.task_id, second.claim_token, "t1", 1).status == "SUCCESS"


def test_fail_kinds(app: Creep, proto: WorkerProtocol, clock: FrozenClock) -> None:
    a, b, c, d = (app.submit(tenant_id="t1", task_type="A", priority=p,
                             constraints={"max_retries": 1}) for p in (90, 80, 70, 60))
    claims = {x.task.task_id: x.claim_token for x in asyncio.run(proto.claim(_req(), "t1"))}
    retried = proto.fail(a.task_id, claims[a.task_id], "t1", kind="retry", message="flaky",
                         retry_delay=3)
    assert retried.status == "QUEUED"
    assert (retried.run_after - clock.now()).total_seconds() == 3
    failed = proto.fail(b.task_id, claims[b.task_id], "t1", kind="failed", code="BANNED",
                        message="account banned")
    assert (failed.status, failed.result_code) == ("FAILED", "BANNED")
    assert proto.fail(c.task_id, claims[c.task_id], "t1", kind="timed_out").status == "TIMEOUT"
    requeued = proto.fail(d.task_id, claims[d.task_id], "t1", kind="requeue")
    assert requeued.status == "QUEUED" and requeued.attempt == 0
    # The retry spends the last attempt: dead letter.
    clock.advance(5)
    (again,) = [x for x in asyncio.run(proto.claim(_req(), "t1")) if x.task.task_id == a.task_id]
    dead = proto.fail(a.task_id, again.claim_token, "t1", kind="retry", error="Traceback ...")
    assert (dead.status, dead.result_code) == ("DEAD_LETTER", "MAX_RETRIES_EXCEEDED")


def test_tenant_isolation_and_validation(app: Creep, proto: WorkerProtocol) -> None:
    task = app.submit(tenant_id="t1", task_type="A")
    (c,) = asyncio.run(proto.claim(_req(), "t1"))
    with pytest.raises(NotFound):
        proto.heartbeat(task.task_id, c.claim_token, "t2", worker_id="w", claim_ttl=30)
    with pytest.raises(NotFound):
        proto.complete(task.task_id, c.claim_token, "t2", None)
    with pytest.raises(ValidationError) as info:
        validate_claim("", [], 0, -1, 0)
    assert [f for f, _ in info.value.errors] == [
        "worker_id", "task_types", "max_tasks", "wait", "claim_ttl"]
    with pytest.raises(ValidationError) as info:
        proto.add_event(task.task_id, c.claim_token, "t1", "succeeded", [1])
    assert [f for f, _ in info.value.errors] == ["event_type", "payload"]
    with pytest.raises(ValidationError):
        proto.progress(task.task_id, c.claim_token, "t1", 101)
    with pytest.raises(ValidationError) as info:
        proto.fail(task.task_id, c.claim_token, "t1", kind="explode", retry_delay=-1)
    assert [f for f, _ in info.value.errors] == ["kind", "retry_delay"]
    assert app.get_task(task.task_id).status == "RUNNING"
