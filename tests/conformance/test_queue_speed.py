"""The fast paths of the queue: a completion batch riding on the next claim, and the worker's
single deadline heap, checked on both backends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from creep import Creep, TaskContext, TaskStatus
from creep.domain.outcomes import Outcome, OutcomeKind, resolve
from creep.ports import Completion


def _success(app: Creep, task_id: str, token: str) -> Completion:
    outcome = Outcome(task_id, token, OutcomeKind.SUCCEEDED, result={"ok": 1},
                      result_json=b'{"ok":1}')
    return Completion(outcome, resolve(outcome, attempt=1, max_attempts=4,
                                       now=app.clock.now(), backoff=app.backoff))


def test_complete_and_claim_is_fenced_and_claims_the_rest(db_url: str) -> None:
    app = Creep(db_url)
    first, second, third = (
        app.submit(task_type="X", priority=p, input_payload={"p": p}) for p in (90, 80, 70)
    )
    store = app.store
    claimed = store.task_claim("w1", ["X"], 2, app.clock.now(), 60)
    assert [c.task.task_id for c in claimed] == [first.task_id, second.task_id]
    with_claim: Any = store  # an optional store method, outside the Store protocol
    combined = with_claim.task_complete_and_claim
    applied, more = combined(
        [_success(app, first.task_id, claimed[0].claim_token),
         _success(app, second.task_id, "00000000-0000-0000-0000-000000000000")],  # stale
        "w1", ["X"], 5, app.clock.now(), 60,
    )
    assert applied == [first.task_id]
    assert [c.task.task_id for c in more] == [third.task_id]
    assert more[0].task.status is TaskStatus.RUNNING and more[0].task.input_payload == {"p": 70}
    done = app.get_task(first.task_id)
    assert done.status is TaskStatus.SUCCESS and done.result_payload == {"ok": 1}
    assert done.progress == 100 and done.attempt == 1
    assert [e.event_type for e in app.task_events(first.task_id)] == [
        "created", "queued", "started", "succeeded"]
    assert app.get_task(second.task_id).status is TaskStatus.RUNNING  # the stale token lost
    assert [e.event_type for e in app.task_events(second.task_id)][-1] == "started"
    # Nothing to complete and nothing left to claim: a no-op, not an error.
    assert combined([], "w1", ["X"], 5, app.clock.now(), 60) == ([], [])
    app.close()


def test_many_deadlines_one_heap(db_url: str) -> None:
    """Tasks with short and long timeouts in one worker: each times out on its own deadline
    while the others finish normally."""
    app = Creep(db_url)

    @app.handler("MAYBE_SLOW")
    async def maybe_slow(ctx: TaskContext) -> object:
        if ctx.task.input_payload["slow"]:
            await asyncio.sleep(30)
        return "fast"

    slow = app.submit_many(
        [{"task_type": "MAYBE_SLOW", "timeout_ms": 100 + 50 * i, "input_payload": {"slow": True}}
         for i in range(5)]
    )
    fast = app.submit_many(
        [{"task_type": "MAYBE_SLOW", "timeout_ms": 60_000, "input_payload": {"slow": False}}
         for _ in range(50)]
    )
    started = time.monotonic()
    stats = app.run_worker(burst=True, install_signals=False, concurrency=20)
    assert time.monotonic() - started < 20
    assert stats["completed"] == 55
    assert {app.get_task(t.task_id).status for t in slow} == {TaskStatus.TIMEOUT}
    assert {app.get_task(t.task_id).status for t in fast} == {TaskStatus.SUCCESS}
    app.close()
