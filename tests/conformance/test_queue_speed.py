"""The fast paths of the queue: a completion batch riding on the next claim, and the worker's
single deadline heap, checked on both backends."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

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


def test_deadline_heap_drops_finished_tasks(db_url: str) -> None:
    """A steady drain (each batch's deadlines after the armed one) does not keep the heap
    entries of finished tasks, nor the runs and contexts they hold, until their deadlines."""
    app = Creep(db_url)

    @app.handler("X")
    async def quick(ctx: TaskContext) -> object:
        return None

    app.submit_many([{"task_type": "X", "input_payload": {"i": i}} for i in range(600)])
    worker = app.worker(concurrency=10)
    stats = asyncio.run(worker.run(burst=True))
    assert stats["completed"] == 600
    assert len(worker._deadlines) <= 64 + 2 * 10
    app.close()


def test_bulk_submission_claims_by_priority_then_submission_order(db_url: str) -> None:
    """One bulk insert is laid out in claim order on SQLite; a claim still takes the highest
    priority first and, on SQLite, equal priorities of one submission in submission order
    (PostgreSQL leaves ties of one created_at unordered)."""
    app = Creep(db_url)
    tasks = app.submit_many([
        {"task_type": "X", "priority": p, "input_payload": {"i": i}}
        for i, p in enumerate([5, 50, 5, 99, 50, 0, 99, 5])
    ])
    claimed = app.store.task_claim("w1", ["X"], 10, app.clock.now(), 60)
    assert [c.task.priority for c in claimed] == [99, 99, 50, 50, 5, 5, 5, 0]
    assert sorted(c.task_id for c in claimed) == sorted(t.task_id for t in tasks)
    if db_url.startswith("sqlite"):
        assert [c.task.input_payload["i"] for c in claimed] == [3, 6, 1, 4, 0, 2, 7, 5]
    app.close()


def test_claimed_task_decodes_its_order_lazily_and_equally(db_url: str) -> None:
    """ClaimedTask carries the id, type and attempt counters; its TaskOrder is the claimed
    row either way (decoded on first read on SQLite)."""
    app = Creep(db_url)
    task = app.submit(task_type="X", priority=7, input_payload={"a": [1, 2]}, tags=["t"])
    (claimed,) = app.store.task_claim("w1", ["X"], 1, app.clock.now(), 60)
    assert (claimed.task_id, claimed.task_type, claimed.attempt, claimed.max_attempts) == (
        task.task_id, "X", 1, task.max_attempts)
    order = claimed.task
    assert order is claimed.task  # decoded once
    assert order.status is TaskStatus.RUNNING and order.attempt == 1
    assert order.input_payload == {"a": [1, 2]} and order.tags == ["t"]
    assert order.priority == 7 and order.claimed_by == "w1"
    app.close()


def test_a_claimed_order_is_the_stored_row_for_every_field(db_url: str) -> None:
    """Every field of a claimed task's order (SQLite hands it over as one JSON array of the
    row) equals the stored task: text with quotes and non-ASCII, decimals, JSON columns,
    timestamps; and each claim writes one 'started' event with the worker and attempt."""
    import dataclasses
    from decimal import Decimal

    app = Creep(db_url)
    fields: dict[str, Any] = {
        "task_type": "X", "priority": 100, "tenant_id": "t\"1", "env": "prød",
        "idempotency_key": "k\\1", "project_id": "p", "external_ref": "ext \u2603",
        "task_category": "cat", "description": "line1\nline2 \"q\"", "timeout_ms": 1234,
        "max_total_cost": Decimal("12.3400"), "business_value_hint": Decimal("0.5"),
        "currency": "USDT", "constraints": {"max_retries": 5, "nested": {"a": [1, None]}},
        "tags": ["a", "b"], "batch_id": "b1", "channel": "ch", "correlation_id": "corr",
        "input_payload": {"big": 2**62, "s": "é\\x \u2028", "f": 1.5},
    }
    task = app.submit(**fields)
    plain = app.submit(task_type="X", priority=0, input_payload=None)
    claimed = app.store.task_claim("w\"1", ["X"], 10, app.clock.now(), 60)
    assert [c.task_id for c in claimed] == [task.task_id, plain.task_id]
    for c in claimed:
        stored = app.get_task(c.task_id)
        got = c.task
        for f in dataclasses.fields(stored):
            if f.name != "replayed":
                assert getattr(got, f.name) == getattr(stored, f.name), f.name
        assert c.deadline_at > app.clock.now()
        started = [e for e in app.task_events(c.task_id) if e.event_type == "started"]
        assert [(e.from_status, e.to_status, e.attempt, e.payload, e.tenant_id)
                for e in started] == [("QUEUED", "RUNNING", 1, {"worker_id": "w\"1"},
                                       stored.tenant_id)]
    order = claimed[0].task
    assert order.max_total_cost == Decimal("12.3400") and order.env == "prød"
    assert order.input_payload == fields["input_payload"]
    assert order.constraints["nested"] == {"a": [1, None]}
    app.close()


def test_events_of_a_task_survive_a_priority_change(db_url: str) -> None:
    """SQLite files a claim's and a completion's events under the task's priority (migration
    0009); reading one task's events finds them all, whatever its priority was."""
    app = Creep(db_url)
    task = app.submit(task_type="X", priority=10)
    app.update_task(task.task_id, task.task_version, priority=90)
    (claimed,) = app.store.task_claim("w1", ["X"], 1, app.clock.now(), 60)
    app.store.task_complete_many([_success(app, task.task_id, claimed.claim_token)],
                                 app.clock.now())
    events = app.task_events(task.task_id)
    assert [e.event_type for e in events] == [
        "created", "queued", "updated", "started", "succeeded"]
    assert [e.event_id for e in events] == sorted(e.event_id for e in events)
    if db_url.startswith("sqlite"):  # the by-task read with an event-id cursor
        after = app.store.task_events_after(None, task_id=task.task_id)
        assert [e.event_id for e in after] == [e.event_id for e in events]
        after = app.store.task_events_after(events[1].cursor, task_id=task.task_id)
        assert [e.event_type for e in after] == ["updated", "started", "succeeded"]
    app.close()


def test_handlers_read_the_claimed_order(db_url: str) -> None:
    """ctx.task is the claimed order for async and sync (threaded) handlers alike, decoded
    once however many threads read it."""
    app = Creep(db_url)

    @app.handler("ASYNC")
    async def read_async(ctx: TaskContext) -> object:
        assert ctx.task is ctx.task
        return {"i": ctx.task.input_payload["i"], "attempt": ctx.attempt, "id": ctx.task_id}

    @app.handler("SYNC")
    def read_sync(ctx: Any) -> object:
        assert ctx.task is ctx.task
        return {"i": ctx.task.input_payload["i"], "attempt": ctx.attempt, "id": ctx.task_id}

    tasks = app.submit_many([{"task_type": t, "input_payload": {"i": i}}
                             for i, t in enumerate(["ASYNC", "SYNC"] * 10)])
    stats = app.run_worker(burst=True, concurrency=8, install_signals=False)
    assert stats["completed"] == len(tasks)
    for i, t in enumerate(tasks):
        done = app.get_task(t.task_id)
        assert done.status is TaskStatus.SUCCESS
        assert done.result_payload == {"i": i, "attempt": 1, "id": t.task_id}
    app.close()


def test_results_ride_with_the_next_claim_while_the_claimed_batch_runs(db_url: str) -> None:
    """A busy worker claims its next batch while the current one runs. On SQLite (one writer
    at a time) the finished batch's results are committed in that claim's transaction: no
    separate completion commits but at the very end. PostgreSQL writes them beside the claim,
    on the worker's second connection, at the same time."""
    app = Creep(db_url)
    ran: list[str] = []

    @app.handler("NOOP")
    async def noop(ctx: TaskContext) -> object:
        ran.append(ctx.task_id)
        return None

    tasks = app.submit_many([{"task_type": "NOOP", "input_payload": {"i": i}}
                             for i in range(600)])
    store: Any = app.store
    rode: list[int] = []
    alone: list[int] = []
    limits: list[int] = []
    combined, complete_many = store.task_complete_and_claim, store.task_complete_many

    def spy_combined(completions: Any, *args: Any) -> Any:
        rode.append(len(completions))
        limits.append(args[2])
        return combined(completions, *args)

    def spy_alone(completions: Any, *args: Any) -> Any:
        alone.append(len(completions))
        return complete_many(completions, *args)

    claim = store.task_claim

    def spy_claim(*args: Any) -> Any:
        limits.append(args[2])
        return claim(*args)

    store.task_complete_and_claim, store.task_complete_many = spy_combined, spy_alone
    store.task_claim = spy_claim
    # Batches of 50 at concurrency 100: one runs while the next is claimed.
    stats = app.run_worker(burst=True, concurrency=100, batch_size=50, install_signals=False)
    assert stats["completed"] == 600 and sorted(ran) == sorted(t.task_id for t in tasks)
    assert max(limits) == 50
    if db_url.startswith("sqlite"):
        assert sum(rode) >= 600 - 100, (rode, alone)  # only the last batches have no claim
        assert len(alone) <= 2, (rode, alone)
    else:
        # Plain results never ride: the claim commits on its own without a WAL flush wait.
        assert sum(rode) == 0 and sum(alone) == 600, (rode, alone)
    assert all(app.get_task(t.task_id).status is TaskStatus.SUCCESS for t in tasks)
    app.close()


def test_default_claim_batch_is_the_whole_concurrency_on_both_databases(
    db_url: str,
) -> None:
    """A database worker claims up to its concurrency per statement: on PostgreSQL fewer,
    larger claims cost the server less per task than half-size ones (bench_queue's drain);
    on SQLite a worker claiming back to back would leave other processes' workers no window
    to write."""
    app = Creep(db_url)

    @app.handler("NOOP")
    async def noop(ctx: TaskContext) -> object:
        return None

    app.submit_many([{"task_type": "NOOP"} for _ in range(300)])
    store: Any = app.store
    limits: list[int] = []
    claim, combined = store.task_claim, store.task_complete_and_claim

    def spy_claim(*args: Any) -> Any:
        limits.append(args[2])
        return claim(*args)

    def spy_combined(completions: Any, *args: Any) -> Any:
        limits.append(args[2])
        return combined(completions, *args)

    store.task_claim, store.task_complete_and_claim = spy_claim, spy_combined
    assert app.run_worker(burst=True, concurrency=100, install_signals=False)["completed"] == 300
    assert max(limits) == 100
    app.close()


@pytest.mark.timeout(60)
def test_a_row_that_does_not_decode_fails_its_run_and_frees_the_slot(tmp_path: Path) -> None:
    """The worker reads the decoded order itself only where it must (tracing, lease
    revocation, timeouts); a stored row that does not decode fails the run that reads it
    instead of killing the job outside it, which would keep the slot and the claim forever."""
    # SQLite only: PostgreSQL's jsonb columns cannot hold a row that fails to decode.
    db_url = f"sqlite:///{tmp_path}/creep.db"
    from opentelemetry.sdk.trace import TracerProvider

    from creep import tracing

    app = Creep(db_url)
    reads = app.submit(task_type="READS", constraints={"max_retries": 0})
    skips = app.submit(task_type="SKIPS")
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    with conn:
        conn.execute("UPDATE tasks SET constraints = '{broken' WHERE task_id IN (?, ?)",
                     (reads.task_id, skips.task_id))
    conn.close()

    @app.handler("READS")
    async def read_order(ctx: TaskContext) -> object:
        return ctx.task.task_type

    @app.handler("SKIPS")
    async def skip_order(ctx: TaskContext) -> object:
        return "fine"

    tracing.use_tracer_provider(TracerProvider())
    try:
        stats = app.run_worker(burst=True, install_signals=False)
    finally:
        tracing.use_tracer_provider(None)
    assert stats["completed"] == 2
    app.close()
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))  # the rows still do not decode
    rows = dict((r[0], r[1:]) for r in conn.execute(
        "SELECT task_id, status, last_error FROM tasks"))
    conn.close()
    assert rows[skips.task_id][0] == "SUCCESS"
    assert rows[reads.task_id][0] == "DEAD_LETTER" and "JSONDecodeError" in rows[reads.task_id][1]
