"""POST /v1/workers/claim sent again with its claim_id while the first send is still in
flight (an in-process app, both backends): however the two sends interleave, one claim_id
claims one batch, and both sends answer it."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from creep import Creep, FrozenClock
from creep.engine.worker_protocol import ClaimRequest, WorkerProtocol
from tests.api.inprocess import ADMIN, TestClient, acme_api


@pytest.fixture
def polled(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a claim has looked at the queue. Wake-ups are turned off (they are hints
    only): a long-polling claim looks at the queue when it starts and when its wait ends."""
    seen = threading.Event()
    claim_now = WorkerProtocol.claim_now

    def counted(self: WorkerProtocol, req: ClaimRequest, tenant_id: str | None) -> Any:
        try:
            return claim_now(self, req, tenant_id)
        finally:
            seen.set()

    monkeypatch.setattr(WorkerProtocol, "claim_now", counted)
    monkeypatch.setattr(WorkerProtocol, "_on_wake", lambda self, channel, payload: None)
    return seen


@pytest.fixture
def slow_api(app: Creep, db_url: str, clock: FrozenClock) -> Iterator[TestClient]:
    """The in-process API, its long polls looking at the queue once a minute."""
    with acme_api(app, db_url, clock, claim_poll_seconds=60) as client:
        yield client


def _submit(api: TestClient, kind: str) -> str:
    r = api.post("/v1/tasks", headers=ADMIN, json={"tenant_id": "acme", "task_type": kind})
    assert r.status_code == 201, r.text
    task_id: str = r.json()["task_id"]
    return task_id


def _claim(api: TestClient, body: dict[str, Any]) -> list[str]:
    r = api.post("/v1/workers/claim", headers=ADMIN, json=body)
    assert r.status_code == 200, r.text
    return [i["task"]["task_id"] for i in r.json()["items"]]


def _running(api: TestClient, ids: list[str]) -> list[str]:
    return [t for t in ids
            if api.get(f"/v1/tasks/{t}", headers=ADMIN).json()["status"] == "RUNNING"]


def test_a_resend_while_the_first_send_long_polls_claims_one_batch(
    slow_api: TestClient, polled: threading.Event
) -> None:
    """The first send waits on an empty queue; the worker, its answer lost (a proxy's
    timeout), sends the claim again after tasks came: the resend claims them. The first
    send, looking at the queue again at the end of its wait, claimed a second batch under
    the same claim_id, which nobody read: RUNNING until its claim expired, then charged an
    attempt. It answers the resend's batch instead."""
    kind = f"CR_{uuid.uuid4().hex[:8]}"
    body = {"task_types": [kind], "max_tasks": 2, "claim_id": str(uuid.uuid4()),
            "worker_id": "w-1", "claim_ttl": 60}
    answers: list[list[str]] = []
    first = threading.Thread(target=lambda: answers.append(_claim(slow_api, {**body, "wait": 4})))
    first.start()
    try:
        assert polled.wait(30), "the first send never looked at the queue"
        ids = [_submit(slow_api, kind) for _ in range(4)]
        again = _claim(slow_api, {**body, "resend": True})
    finally:
        first.join(60)
    assert len(again) == 2
    assert answers == [again]  # the first send answers the same batch ...
    assert _running(slow_api, ids) == [t for t in ids if t in again]  # ... and claims no more


def test_sends_of_one_claim_id_at_once_claim_one_batch(
    api: TestClient,
) -> None:
    """Several sends of one claim (a worker's retries racing each other and its first
    send), all at the same time: one batch is claimed, and every send answers it."""
    kind = f"CR_{uuid.uuid4().hex[:8]}"
    ids = [_submit(api, kind) for _ in range(12)]
    body = {"task_types": [kind], "max_tasks": 2, "claim_id": str(uuid.uuid4()),
            "worker_id": "w-1", "claim_ttl": 60}
    start = threading.Barrier(4)
    answers: list[list[str]] = []

    def send(resend: bool) -> None:
        start.wait(30)
        answers.append(_claim(api, {**body, "resend": resend}))

    sends = [threading.Thread(target=send, args=(i > 0,)) for i in range(4)]
    for s in sends:
        s.start()
    for s in sends:
        s.join(60)
    running = _running(api, ids)
    assert len(running) == 2
    assert [sorted(a) for a in answers] == [sorted(running)] * 4

