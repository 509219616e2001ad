"""A worker's store calls run on its database threads while its event loop runs handlers. A
statement that hands rows to Python one at a time takes the GIL back once per row, and
beside a busy thread each take can wait a whole switch interval (5 ms): a 1,000-task claim
then took more than 5 s on SQLite, a heartbeat as long (claims could lapse under running
handlers) and a completion batch as long. The queue's hot statements return one row each."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from creep import Creep
from creep.domain.outcomes import Outcome, OutcomeKind, resolve
from creep.ports import Completion

N = 1000
#: Far above what these calls take beside a busy thread (well under 0.5 s each), far below
#: what a row-at-a-time statement takes there (N switch intervals: over 5 s).
BOUND_S = 2.5


@contextmanager
def busy_thread() -> Iterator[None]:
    """A thread that runs Python bytecode without pause, as a loop busy with handlers does."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def test_claim_heartbeat_and_completion_beside_a_busy_thread(app: Creep) -> None:
    app.submit_many([{"tenant_id": "t", "env": "dev", "idempotency_key": f"k{i}",
                      "task_type": "NOOP", "input_payload": {"i": i}} for i in range(N)])
    store, now = app.store, app.clock.now()
    with busy_thread():
        claimed, claim_s = timed(lambda: store.task_claim("w", ["NOOP"], N, now, 60))
        beat, beat_s = timed(lambda: store.task_heartbeat(
            "w", [(c.task_id, c.claim_token) for c in claimed], now, 60))
        completions = []
        for c in claimed:
            outcome = Outcome(c.task_id, c.claim_token, OutcomeKind.SUCCEEDED, result=None,
                              result_json=b"null")
            completions.append(Completion(outcome, resolve(
                outcome, attempt=c.attempt, max_attempts=c.max_attempts, now=now,
                backoff=app.backoff)))
        applied, complete_s = timed(lambda: store.task_complete_many(completions, now))
    assert len(claimed) == N and not beat.lost and len(applied) == N
    assert max(claim_s, beat_s, complete_s) < BOUND_S, (claim_s, beat_s, complete_s)
    assert app.get_task(claimed[0].task_id).status == "SUCCESS"
