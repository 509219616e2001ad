"""The task graph at its edges: replays of submissions with dependencies, a dependency's key
taken concurrently, field names of refused dependencies, retries after retention."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest

from creep import Creep, Fail, FrozenClock, TaskContext, TaskStatus
from creep.domain.errors import ConflictError, NotFound, ValidationError
from creep.domain.task import TaskOrder
from tests.conftest import blocked_by, wait_until


def _pair(a_id: str) -> list[dict[str, Any]]:
    return [
        {"task_id": a_id, "idempotency_key": "kA", "task_type": "T"},
        {"idempotency_key": "kB", "task_type": "T", "depends_on": [a_id]},
    ]


def test_a_committed_submission_sent_again_with_new_ids_replays_every_order(
    app: Creep,
) -> None:
    """A submission whose dependant names an in-submission dependency by a freshly drawn id
    replays whole when sent again: the dependant's fingerprint is taken of the task its
    dependency replays, so a client can resend a submission whose outcome it doesn't know."""
    first = app.submit_many(_pair(str(uuid.uuid4())))
    again = app.submit_many(_pair(str(uuid.uuid4())))  # the same orders, ids drawn anew
    assert [t.replayed for t in again] == [True, True]
    assert [t.task_id for t in again] == [t.task_id for t in first]
    third = app.submit_many(_pair(str(uuid.uuid4())))
    assert [t.task_id for t in third] == [t.task_id for t in first]


def test_a_half_written_submission_sent_twice_more_replays_every_order(app: Creep) -> None:
    """The dependant created by a resend (its dependency replayed) is fingerprinted with the
    id it was re-bound to: a further resend with yet another id replays it too."""
    a = app.submit(task_id=str(uuid.uuid4()), idempotency_key="kA", task_type="T")
    second = app.submit_many(_pair(str(uuid.uuid4())))
    assert [t.replayed for t in second] == [True, False]
    assert app.get_task(second[1].task_id).depends_on == [a.task_id]
    third = app.submit_many(_pair(str(uuid.uuid4())))
    assert [t.replayed for t in third] == [True, True]
    assert [t.task_id for t in third] == [t.task_id for t in second]


def test_a_dependency_key_taken_concurrently_replays_and_binds_its_dependant(
    pg_schema_url: str,
) -> None:
    """PostgreSQL: when another submission commits an in-submission dependency's idempotency
    key while this one waits, the dependency replays the task that took the key, and its
    dependant depends on that task, starting from that task's status."""
    app = Creep(pg_schema_url)
    other = Creep(pg_schema_url)
    holder = psycopg.connect(pg_schema_url)
    watcher = psycopg.connect(pg_schema_url, autocommit=True)
    try:
        x = app.submit(task_type="T")
        holder.execute("SELECT 1 FROM tasks WHERE task_id = %s FOR UPDATE", (x.task_id,))
        a_id = str(uuid.uuid4())
        orders: list[dict[str, Any]] = [
            {"task_id": a_id, "idempotency_key": "kA", "task_type": "T"},
            {"idempotency_key": "kB", "task_type": "T", "depends_on": [a_id, x.task_id]},
        ]
        result: list[list[TaskOrder] | BaseException] = []

        def submit() -> None:
            try:
                result.append(app.submit_many(orders))
            except BaseException as exc:  # reported below
                result.append(exc)

        t = threading.Thread(target=submit)
        t.start()
        # The submission looked kA up (absent) and now waits to lock its dependency x.
        assert wait_until(lambda: blocked_by(watcher, holder.info.backend_pid), 10.0)
        won = other.submit(idempotency_key="kA", task_type="T")  # commits kA first
        holder.rollback()
        t.join(10.0)
        assert not t.is_alive()
        [out] = result
        assert not isinstance(out, BaseException), repr(out)
        assert out[0].replayed and out[0].task_id == won.task_id
        b = app.get_task(out[1].task_id)
        assert sorted(b.depends_on) == sorted([won.task_id, x.task_id])
        assert b.status is TaskStatus.PENDING
    finally:
        holder.close()
        watcher.close()
        other.close()
        app.close()


def test_an_unknown_dependency_is_named_by_the_order_as_submitted(app: Creep) -> None:
    """A ValidationError for an unknown dependency names the order's position in the
    submission as sent, replays counted (README: naming every field and rule)."""
    a_id = str(uuid.uuid4())
    app.submit(task_id=a_id, idempotency_key="kA", task_type="T")
    b_id = str(uuid.uuid4())
    with pytest.raises(ValidationError) as caught:
        app.submit_many([
            {"task_id": a_id, "idempotency_key": "kA", "task_type": "T"},  # a replay
            {"task_id": b_id, "idempotency_key": "kB", "task_type": "T"},
            {"idempotency_key": "kC", "task_type": "T",
             "depends_on": [b_id, str(uuid.uuid4())]},  # the second id is unknown
        ])
    assert [field for field, _ in caught.value.errors] == ["tasks[2].depends_on[1]"]


def test_a_dependant_of_a_failed_dependency_stays_unretryable_after_retention(
    app: Creep, clock: FrozenClock
) -> None:
    """A dependant cancelled because its dependency FAILED cannot be retried, and still
    cannot once creep.retention.tasks deleted that dependency: a dependency that no longer
    exists has no known outcome, so the retry is refused and the task never runs."""
    ran: list[str] = []

    @app.handler("A")
    def fail(ctx: TaskContext) -> None:
        raise Fail(message="no")

    @app.handler("B")
    def run(ctx: TaskContext) -> None:
        ran.append(ctx.task_id)

    a = app.submit(task_type="A")
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(a.task_id).status is TaskStatus.FAILED
    sch = app.scheduler(holder_id="A")  # the default retention jobs
    sch.run_once()
    clock.advance(days=29)
    b = app.submit(task_type="B", depends_on=[a.task_id])
    assert (b.status, b.result_code) == (TaskStatus.CANCELLED, "DEPENDENCY_FAILED")
    with pytest.raises(ConflictError):
        app.retry(b.task_id)
    clock.advance(days=2)
    sch.run_once()  # creep.retention.tasks deletes A (finished 31 days ago), keeps B
    with pytest.raises(NotFound):
        app.get_task(a.task_id)
    assert app.get_task(b.task_id).depends_on == [a.task_id]
    with pytest.raises(ConflictError, match=a.task_id):
        app.retry(b.task_id)
    assert app.get_task(b.task_id).status is TaskStatus.CANCELLED
    app.run_worker(burst=True, install_signals=False)
    assert ran == []


def test_a_dependant_that_ran_stays_retryable_after_retention(
    app: Creep, clock: FrozenClock
) -> None:
    """A dependant that ran (so its dependency had succeeded, and a success is final) can be
    retried after creep.retention.tasks deleted that dependency."""
    ran: list[str] = []

    @app.handler("A")
    def succeed(ctx: TaskContext) -> None:
        return None

    @app.handler("B")
    def run(ctx: TaskContext) -> None:
        ran.append(ctx.task_id)
        if len(ran) == 1:
            raise Fail(message="first time")

    a = app.submit(task_type="A")
    app.run_worker(burst=True, install_signals=False)
    sch = app.scheduler(holder_id="A")  # the default retention jobs
    sch.run_once()
    clock.advance(days=29)
    b = app.submit(task_type="B", depends_on=[a.task_id])
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(b.task_id).status is TaskStatus.FAILED
    clock.advance(days=2)
    sch.run_once()  # deletes A (finished 31 days ago), keeps B (2 days)
    with pytest.raises(NotFound):
        app.get_task(a.task_id)
    assert app.retry(b.task_id).status is TaskStatus.QUEUED
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(b.task_id).status is TaskStatus.SUCCESS and ran == [b.task_id] * 2
