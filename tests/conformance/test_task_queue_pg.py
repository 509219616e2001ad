"""PostgreSQL's task_queue (migration 0010): claims and completions update tasks HOT (no index
of tasks names a column they change), task_queue follows tasks on every path that changes a
task's status, and concurrent claims and cancels neither double-claim nor deadlock."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from creep import Backoff, Creep, Fail, FrozenClock, Retry, TaskContext, TaskStatus
from creep.domain.outcomes import Outcome, OutcomeKind, resolve
from creep.ports import Completion
from tests.conftest import assert_task_queue_in_step

NET = {"sku_category": "RAW_NET", "sku_code": "ip.residential.uk.*"}


@pytest.fixture
def app(pg_schema_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(pg_schema_url, clock=clock, backoff=Backoff(base_seconds=10, cap_seconds=100))
    yield creep_app
    creep_app.close()


def _schema(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
    assert row is not None
    return str(row[0])


def _in_step(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert_task_queue_in_step(conn, _schema(url))


def _queue(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {str(r[0]): r[1] for r in conn.execute("SELECT task_id, status FROM task_queue")}


def test_no_index_of_tasks_names_a_column_the_claim_or_completion_changes(
    pg_schema_url: str,
) -> None:
    app = Creep(pg_schema_url)
    app.store.migrate()
    app.close()
    # What a claim, a heartbeat and a completion write (postgres_store: _claim_rows, _apply).
    changed = {
        "status", "attempt", "started_at", "updated_at", "claimed_by", "claim_token",
        "claim_expires_at", "deadline_at", "task_version", "cancel_requested",
        "progress_message", "result_code", "result_message", "result_payload", "last_error",
        "finished_at", "run_after", "queued_at", "progress",
    }
    with psycopg.connect(pg_schema_url) as conn:
        rows = conn.execute(
            "SELECT i.indexrelid::regclass::text, a.attname FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0 AND ("
            "  a.attnum = ANY(i.indkey) OR pg_get_expr(i.indpred, i.indrelid) ~ a.attname) "
            "WHERE i.indrelid = 'tasks'::regclass"
        ).fetchall()
    assert rows and not [r for r in rows if r[1] in changed], rows


def test_a_drain_updates_tasks_hot(app: Creep, pg_schema_url: str) -> None:
    @app.handler("A")
    async def ok(ctx: TaskContext) -> object:
        return None

    app.submit_many([{"task_type": "A", "priority": i % 7} for i in range(300)])
    app.run_worker(burst=True, install_signals=False, concurrency=50)
    app.close()  # backends flush their statistics as they exit
    assert _queue(pg_schema_url) == {}
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(pg_schema_url) as conn:
            row = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relid = 'tasks'::regclass"
            ).fetchone()
        assert row is not None
        if row[0] >= 600 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    updated, hot = row
    assert updated >= 600
    # Before migration 0010 none was HOT. Alone on the server nearly all are (fillfactor 50
    # leaves room for each row's claim version; the completion's goes where the pruned QUEUED
    # version was). Pruning waits for the oldest snapshot open in the whole database, so under
    # other sessions' load some completions find no room: 68% was seen then.
    assert hot >= 0.5 * updated, row


def test_task_queue_follows_every_status_path(
    app: Creep, clock: FrozenClock, pg_schema_url: str
) -> None:
    url = pg_schema_url
    outcomes: dict[str, Any] = {}

    @app.handler("A")
    async def handle(ctx: TaskContext) -> object:
        kind = outcomes.get(ctx.task.task_id, "ok")
        if kind == "retry":
            raise Retry(delay=30)
        if kind == "fail":
            raise Fail(code="HARD_FAIL", message="no")
        return None

    ok = app.submit(task_type="A", priority=90)
    later = app.submit(task_type="A", run_after=clock.now() + timedelta(seconds=60))
    child = app.submit(task_type="A", depends_on=[ok.task_id])
    doomed_parent = app.submit(task_type="A")
    doomed_child = app.submit(task_type="A", depends_on=[doomed_parent.task_id])
    retried = app.submit(task_type="A")
    to_cancel = app.submit(task_type="A")
    hinted = app.submit(task_type="A", resource_hints=[NET])
    outcomes.update({doomed_parent.task_id: "fail", retried.task_id: "retry"})
    _in_step(url)
    queue = _queue(url)
    assert queue[later.task_id] == "PENDING" and queue[child.task_id] == "PENDING"
    assert queue[ok.task_id] == "QUEUED" and queue[hinted.task_id] == "QUEUED"

    patched = app.update_task(to_cancel.task_id, to_cancel.task_version, priority=99)
    assert patched.priority == 99
    with psycopg.connect(url) as conn:
        prio = conn.execute(
            "SELECT priority FROM task_queue WHERE task_id = %s", (to_cancel.task_id,)
        ).fetchone()
    assert prio == (99,)
    app.cancel(to_cancel.task_id)
    _in_step(url)
    assert to_cancel.task_id not in _queue(url)

    app.run_worker(burst=True, install_signals=False)
    _in_step(url)
    assert app.get_task(ok.task_id).status is TaskStatus.SUCCESS
    assert app.get_task(child.task_id).status is TaskStatus.SUCCESS  # promoted, then run
    assert app.get_task(doomed_child.task_id).result_code == "DEPENDENCY_FAILED"
    assert _queue(url)[retried.task_id] == "QUEUED"  # backing off
    assert _queue(url)[later.task_id] == "PENDING"

    app.retry(doomed_parent.task_id)
    _in_step(url)
    assert _queue(url)[doomed_parent.task_id] == "QUEUED"

    # A claim that expires is rescued; one that outlives its deadline times out.
    clock.advance(120)
    assert app.maintain().promoted == 1  # `later` is due
    _in_step(url)
    claims = app.store.task_claim("dead", ["A"], 10, clock.now(), 30)
    assert {c.task.task_id for c in claims} >= {later.task_id, retried.task_id}
    queue = _queue(url)
    assert all(queue[c.task.task_id] == "RUNNING" for c in claims)
    hb = app.store.task_heartbeat("dead", [(c.task.task_id, c.claim_token) for c in claims],
                                  clock.now(), 30)
    assert not hb.lost
    _in_step(url)
    app.cancel(later.task_id)  # RUNNING: asked to stop, still in the queue
    assert _queue(url)[later.task_id] == "RUNNING"
    clock.advance(31)
    assert app.maintain().rescued >= 1
    _in_step(url)
    assert _queue(url)[retried.task_id] == "QUEUED"

    # A completion takes the task out of the queue.
    c = app.store.task_claim("w", ["A"], 1, clock.now() + timedelta(hours=1), 30)
    _in_step(url)
    if c:
        o = Outcome(c[0].task.task_id, c[0].claim_token, OutcomeKind.SUCCEEDED, result=None)
        res = resolve(o, attempt=1, max_attempts=4, now=clock.now(), backoff=Backoff())
        assert app.store.task_complete_many([Completion(o, res)], clock.now()) == [o.task_id]
        assert o.task_id not in _queue(url)
    _in_step(url)

    # Raw SQL goes through the same triggers: a delete and a bulk status change.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM task_dependencies")
        conn.execute("DELETE FROM task_events")
        conn.execute("DELETE FROM tasks WHERE task_id = %s", (hinted.task_id,))
        conn.execute("UPDATE tasks SET status = 'CANCELLED' WHERE status IN ('PENDING', 'QUEUED')")
    _in_step(url)
    assert set(_queue(url).values()) <= {"RUNNING"}


def test_concurrent_claims_and_cancels_never_double_claim_or_deadlock(
    pg_schema_url: str,
) -> None:
    app = Creep(pg_schema_url)
    tasks = app.submit_many([{"task_type": "A", "priority": i % 5} for i in range(1_500)])
    ids = [t.task_id for t in tasks]
    claimed: list[list[str]] = [[], [], []]
    cancelled: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def claimer(slot: int) -> None:
        try:
            while not stop.is_set():
                got = app.store.task_claim(f"w{slot}", ["A"], 40, app.clock.now(), 60)
                if not got:
                    return
                claimed[slot].extend(c.task.task_id for c in got)
        except BaseException as exc:
            errors.append(exc)

    def canceller() -> None:
        rng = random.Random(7)
        try:
            for task_id in rng.sample(ids, 300):
                t = app.cancel(task_id)
                if t.status is TaskStatus.CANCELLED:
                    cancelled.append(task_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=canceller))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    app.close()
    assert errors == []
    every = [x for slot in claimed for x in slot]
    assert len(every) == len(set(every)), "a task was claimed twice"
    assert not set(every) & set(cancelled)
    assert len(every) + len(cancelled) == len(ids)
    _in_step(pg_schema_url)
    assert set(_queue(pg_schema_url).values()) == {"RUNNING"}


def test_task_queue_triggers_ignore_the_sessions_search_path(
    pg_schemas: Any, clock: FrozenClock
) -> None:
    """Two creep schemas on one database; a session whose search_path is the second one
    changes tasks of the first by qualified name (as an operator would): the first schema's
    task_queue follows, the second's is untouched (migration 0011 pins the functions)."""
    first_url, second_url = pg_schemas(), pg_schemas()
    first, second = Creep(first_url, clock=clock), Creep(second_url, clock=clock)
    try:
        mine = first.submit(task_type="A")
        theirs = second.submit(task_type="A")
        with psycopg.connect(second_url, autocommit=True) as conn:
            schema = _schema(first_url)
            conn.execute(
                f"UPDATE \"{schema}\".tasks SET status = 'CANCELLED', "
                "result_code = 'CANCELLED', finished_at = now() WHERE task_id = %s",
                (mine.task_id,))
            conn.execute(f"UPDATE \"{schema}\".tasks SET priority = 7 WHERE false")
        assert _queue(first_url) == {}
        assert _queue(second_url) == {theirs.task_id: "QUEUED"}
        _in_step(first_url)
        _in_step(second_url)
    finally:
        first.close()
        second.close()


def test_any_client_encoding_in_the_url_stores_text_as_given(pg_schema_url: str) -> None:
    """creep talks UTF-8 to the server whatever client_encoding the URL asks for: its binary
    COPY (a bulk submission) writes text as UTF-8 bytes, which the server would otherwise
    read in the URL's encoding."""
    url = f"{pg_schema_url}&client_encoding=LATIN1"
    app = Creep(url)
    try:
        text = "Zürich 東京 ✓"
        orders = [{"tenant_id": "t", "env": "e", "task_type": "X", "idempotency_key": f"k{i}",
                   "description": None, "input_payload": {"city": text, "i": i}}
                  for i in range(200)]
        made = app.submit_many(orders)  # COPY: 200 plain orders
        one = app.submit(tenant_id="t", env="e", task_type="X", idempotency_key="single",
                         input_payload={"city": text})
        for task in (made[0], made[199], one):
            assert app.get_task(task.task_id).input_payload["city"] == text
    finally:
        app.close()
    with psycopg.connect(pg_schema_url) as conn:
        row = conn.execute("SELECT input_payload->>'city' FROM tasks WHERE idempotency_key = 'k7'"
                           ).fetchone()
    assert row is not None and row[0] == text


def test_task_queue_update_trigger_restores_a_missing_row_in_a_mixed_statement(
    app: Creep, pg_schema_url: str
) -> None:
    """The update trigger skips the statements a change does not need (migration 0013), yet
    one statement that changes one task's queue row, leaves another's as it is, removes a
    third and meets a fourth whose queue row went missing still leaves task_queue exactly
    the active part of tasks."""
    url = pg_schema_url
    a, b, c, d = (app.submit(task_type="A", priority=10) for _ in range(4))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM task_queue WHERE task_id = %s", (a.task_id,))
        conn.execute(
            "UPDATE tasks SET priority = CASE WHEN task_id = %(b)s THEN 50 ELSE priority END, "
            "status = CASE WHEN task_id = %(d)s THEN 'CANCELLED' ELSE status END "
            "WHERE task_id = ANY(%(ids)s::uuid[])",
            {"b": b.task_id, "d": d.task_id,
             "ids": [a.task_id, b.task_id, c.task_id, d.task_id]},
        )
    _in_step(url)
    queue = _queue(url)
    assert queue == {a.task_id: "QUEUED", b.task_id: "QUEUED", c.task_id: "QUEUED"}
    # Nothing changes in any queue row: the one gone missing still comes back.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM task_queue WHERE task_id = %s", (c.task_id,))
        conn.execute("UPDATE tasks SET description = 'x' WHERE task_id = ANY(%s::uuid[])",
                     ([a.task_id, b.task_id, c.task_id],))
    _in_step(url)
    assert set(_queue(url)) == {a.task_id, b.task_id, c.task_id}
