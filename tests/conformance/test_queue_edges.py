"""Edges of the queue: a submission whose dependencies are replays, a cancellation requested
while an attempt ends in a retry (or its worker is lost), and manual retries."""

from __future__ import annotations

import uuid
from datetime import timedelta

from creep import Creep, Fail, FrozenClock, Retry, TaskContext, TaskStatus
from creep.domain.outcomes import Backoff, Outcome, OutcomeKind, resolve
from creep.ports import Completion


def test_a_dependant_of_a_replayed_dependency_that_ended_badly_is_cancelled(app: Creep) -> None:
    a_id = str(uuid.uuid4())
    app.submit(task_id=a_id, idempotency_key="kA", task_type="T")
    app.cancel(a_id)
    out = app.submit_many([
        {"task_id": a_id, "idempotency_key": "kA", "task_type": "T"},  # a replay of A
        {"idempotency_key": "kB", "task_type": "T", "depends_on": [a_id]},
    ])
    assert out[0].replayed and out[0].task_id == a_id
    assert not out[1].replayed
    b = app.get_task(out[1].task_id)
    assert (b.status, b.result_code) == (TaskStatus.CANCELLED, "DEPENDENCY_FAILED")


def test_a_dependant_of_a_replayed_queued_dependency_follows_it(app: Creep) -> None:
    @app.handler("T")
    def fail(ctx: TaskContext) -> None:
        raise Fail(message="no")

    a_id = str(uuid.uuid4())
    app.submit(task_id=a_id, idempotency_key="kA", task_type="T")
    out = app.submit_many([
        {"task_id": a_id, "idempotency_key": "kA", "task_type": "T"},
        {"idempotency_key": "kB", "task_type": "T", "depends_on": [a_id]},
    ])
    b_id = out[1].task_id
    assert app.get_task(b_id).status is TaskStatus.PENDING
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(a_id).status is TaskStatus.FAILED
    b = app.get_task(b_id)
    assert (b.status, b.result_code) == (TaskStatus.CANCELLED, "DEPENDENCY_FAILED")


def test_a_submission_sent_again_with_new_ids_replays_and_keeps_its_dependencies(
    app: Creep,
) -> None:
    first = app.submit(idempotency_key="kA", task_type="T")  # only A got through before
    again = str(uuid.uuid4())
    out = app.submit_many([
        {"task_id": again, "idempotency_key": "kA", "task_type": "T"},
        {"idempotency_key": "kB", "task_type": "T", "depends_on": [again]},
        {"idempotency_key": "kA", "task_type": "T"},  # the same key twice: one task
    ])
    assert [t.replayed for t in out] == [True, False, True]
    assert out[0].task_id == out[2].task_id == first.task_id
    b = app.get_task(out[1].task_id)
    assert b.depends_on == [first.task_id] and b.status is TaskStatus.PENDING
    app.cancel(first.task_id)
    assert app.get_task(b.task_id).status is TaskStatus.CANCELLED


def test_a_cancel_requested_before_the_worker_was_lost_holds(
    app: Creep, clock: FrozenClock
) -> None:
    ran: list[str] = []

    @app.handler("T")
    def handler(ctx: TaskContext) -> str:
        ran.append(ctx.task_id)
        return "done"

    t = app.submit(task_type="T", idempotency_key="k")
    [claimed] = app.store.task_claim("lost-worker", ["T"], 1, clock.now(), 30.0)
    assert claimed.task_id == t.task_id
    assert app.cancel(t.task_id, reason="not needed").cancel_requested
    clock.advance(60)  # the claim expires: the rescuer takes the task back
    app.maintain()
    after = app.get_task(t.task_id)
    assert (after.status, after.result_code) == (TaskStatus.CANCELLED, "CANCELLED")
    clock.advance(3600)
    app.run_worker(burst=True, install_signals=False)
    assert ran == [] and app.get_task(t.task_id).status is TaskStatus.CANCELLED
    events = [(e.event_type, e.from_status, e.to_status) for e in app.task_events(t.task_id)]
    assert events[-2:] == [("retrying", "RUNNING", "QUEUED"), ("cancelled", "QUEUED", "CANCELLED")]


def test_a_cancel_requested_while_an_attempt_ends_in_a_retry_holds(
    app: Creep, clock: FrozenClock
) -> None:
    parent = app.submit(task_type="T", idempotency_key="p")
    child = app.submit(task_type="T", idempotency_key="c", depends_on=[parent.task_id])
    [c] = app.store.task_claim("w", ["T"], 1, clock.now(), 30.0)
    app.cancel(parent.task_id)
    # The handler raised just before its worker saw the request: a retry comes back.
    outcome = Outcome(c.task_id, c.claim_token, OutcomeKind.RETRY, error="boom")
    res = resolve(outcome, attempt=c.attempt, max_attempts=c.max_attempts, now=clock.now(),
                  backoff=Backoff())
    app.store.task_complete_many([Completion(outcome, res)], clock.now())
    after = app.get_task(parent.task_id)
    assert (after.status, after.cancel_requested) == (TaskStatus.CANCELLED, False)
    assert (app.get_task(child.task_id).status, app.get_task(child.task_id).result_code) == (
        TaskStatus.CANCELLED, "DEPENDENCY_FAILED")


def test_a_retry_without_a_cancel_request_is_queued_as_before(
    app: Creep, clock: FrozenClock
) -> None:
    t = app.submit(task_type="T", idempotency_key="k")
    [c] = app.store.task_claim("w", ["T"], 1, clock.now(), 30.0)
    outcome = Outcome(c.task_id, c.claim_token, OutcomeKind.RETRY, error="boom")
    res = resolve(outcome, attempt=c.attempt, max_attempts=c.max_attempts, now=clock.now(),
                  backoff=Backoff())
    app.store.task_complete_many([Completion(outcome, res)], clock.now())
    assert app.get_task(t.task_id).status is TaskStatus.QUEUED


def test_each_manual_retry_grants_the_same_retries(app: Creep) -> None:
    runs: list[int] = []

    @app.handler("T")
    def always_retry(ctx: TaskContext) -> None:
        runs.append(ctx.attempt)
        raise Retry(delay=0)

    t = app.submit(task_type="T", idempotency_key="k")  # max_retries 3: four attempts
    per_round = []
    for _ in range(3):
        before = len(runs)
        app.run_worker(burst=True, install_signals=False)
        assert app.get_task(t.task_id).status is TaskStatus.DEAD_LETTER
        per_round.append(len(runs) - before)
        app.retry(t.task_id)
    assert per_round == [4, 4, 4]


def test_a_task_cancelled_by_its_dependency_names_it_and_how_it_ended(app: Creep) -> None:
    @app.handler("T")
    def fail(ctx: TaskContext) -> None:
        raise Fail(message="no")

    ok = app.submit(task_type="OK", run_after=timedelta(days=1))  # stays open
    a = app.submit(task_type="T", constraints={"max_retries": 0})
    b = app.submit(task_type="T", depends_on=[ok.task_id, a.task_id])
    c = app.submit(task_type="T", depends_on=[b.task_id])
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(a.task_id).status is TaskStatus.FAILED
    expected = {  # C names B, the task whose cancel cancelled it, not A
        b.task_id: f"dependency {a.task_id} ended FAILED",
        c.task_id: f"dependency {b.task_id} ended CANCELLED",
    }
    late = app.submit(task_type="T", depends_on=[ok.task_id, c.task_id])  # cancelled at birth
    expected[late.task_id] = f"dependency {c.task_id} ended CANCELLED"
    for task_id, message in expected.items():
        task = app.get_task(task_id)
        assert (task.status, task.result_code, task.result_message) == (
            TaskStatus.CANCELLED, "DEPENDENCY_FAILED", message)
        cancelled = [e for e in app.task_events(task_id) if e.event_type == "cancelled"]
        assert [e.payload for e in cancelled] == [
            {"result_code": "DEPENDENCY_FAILED", "message": message}]
