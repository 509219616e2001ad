"""The task graph under concurrency on PostgreSQL: a user's cancel of a dependant racing the
completion of its dependency; each must finish, neither may be a deadlock's victim."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from creep import Creep, TaskStatus
from creep.domain.errors import IllegalTransition
from creep.domain.outcomes import Outcome, OutcomeKind, resolve
from creep.ports import Completion
from tests.conftest import wait_until


def waiting_on(conn: Any, holder_pid: int) -> int:
    """How many PostgreSQL backends wait, directly or through another waiter, on `holder_pid`."""
    row = conn.execute(
        """WITH RECURSIVE w(pid) AS (
            SELECT %s::int
            UNION
            SELECT a.pid FROM pg_stat_activity a JOIN w ON w.pid = ANY(pg_blocking_pids(a.pid))
        ) SELECT count(*) - 1 FROM w""",
        (holder_pid,),
    ).fetchone()
    return int(row[0]) if row else 0


def finish(app: Creep, task_id: str, task_type: str, kind: OutcomeKind) -> None:
    """Claim `task_id` and end its run as `kind`, as a worker does."""
    [claimed] = app.store.task_claim("w", [task_type], 10, app.clock.now(), 300.0)
    assert claimed.task_id == task_id
    failed = kind is OutcomeKind.FAILED
    outcome = Outcome(task_id, claimed.claim_token, kind, code="HARD" if failed else None,
                      message="broken" if failed else None)
    app.store.task_complete_many(
        [Completion(outcome, resolve(outcome, attempt=1, max_attempts=1, now=app.clock.now(),
                                     backoff=app.backoff))],
        app.clock.now(),
    )


def run(fn: Callable[[], object], errors: list[BaseException]) -> threading.Thread:
    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread


@pytest.fixture
def apps(pg_schema_url: str) -> Iterator[tuple[Creep, Creep, psycopg.Connection[Any]]]:
    app, other = Creep(pg_schema_url), Creep(pg_schema_url)
    watcher = psycopg.connect(pg_schema_url, autocommit=True)
    yield app, other, watcher
    watcher.close()
    other.close()
    app.close()


def _graph(app: Creep, task_type: str) -> tuple[str, str, str]:
    """a; b depends on a; c on a and b, with c's id below b's and c's row stored before b's
    (b updated last), so both a task_id order and a table scan meet c first."""
    a = app.submit(task_type=task_type)
    c_id, b_id = sorted(str(uuid.uuid4()) for _ in range(2))
    app.submit_many([
        {"task_id": b_id, "task_type": "NEXT", "depends_on": [a.task_id]},
        {"task_id": c_id, "task_type": "NEXT", "depends_on": [a.task_id, b_id]},
    ])
    b = app.get_task(b_id)
    app.update_task(b_id, b.task_version, priority=51)
    return a.task_id, b_id, c_id


@pytest.mark.parametrize("kind", [OutcomeKind.SUCCEEDED, OutcomeKind.FAILED])
def test_cancelling_a_dependant_while_its_dependency_ends_never_deadlocks(
    apps: tuple[Creep, Creep, psycopg.Connection[Any]], pg_schema_url: str, kind: OutcomeKind,
) -> None:
    """The user cancels b while a's run ends (b's other dependant c waits on both): the
    cancel cascades from b to c while the completion promotes or cancels a's dependants, b
    and c. Both used to lock them in different orders and PostgreSQL aborted one of them
    ("deadlock detected"): the cancel answered a StorageError, or the worker's result was
    lost until its claim expired."""
    app, other, watcher = apps
    a, b, c = _graph(app, "ROOT")
    holder = psycopg.connect(pg_schema_url)
    try:
        # Held, b makes the cancel wait first and the completion queue up behind it.
        holder.execute("SELECT 1 FROM tasks WHERE task_id = %s FOR UPDATE", (b,))
        pid = holder.info.backend_pid
        errors: list[BaseException] = []
        cancel = run(lambda: other.cancel(b), errors)
        assert wait_until(lambda: waiting_on(watcher, pid) >= 1, 10.0)
        complete = run(lambda: finish(app, a, "ROOT", kind), errors)
        assert wait_until(lambda: waiting_on(watcher, pid) >= 2, 10.0)
        holder.rollback()
        cancel.join(30.0)
        complete.join(30.0)
    finally:
        holder.close()
    assert [e for e in errors if not isinstance(e, IllegalTransition)] == []
    expected = TaskStatus.SUCCESS if kind is OutcomeKind.SUCCEEDED else TaskStatus.FAILED
    assert app.get_task(a).status is expected
    assert app.get_task(b).status is TaskStatus.CANCELLED
    assert app.get_task(c).status is TaskStatus.CANCELLED
    for task_id in (b, c):
        events = [e.event_type for e in app.task_events(task_id)]
        assert events.count("cancelled") == 1 and "queued" not in events[1:], events
