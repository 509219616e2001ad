"""A worker whose background loop fails with an unexpected error (a bug, not a storage
outage) stops loudly instead of running on with results it can no longer write, and loses
no task: what it could not write is rescued once its claims expire."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from creep import Creep, Fail, FrozenClock, TaskContext, TaskStatus


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)

    @creep_app.handler("NOOP")
    async def noop(ctx: TaskContext) -> object:
        return {"ok": True}

    @creep_app.handler("SLOW")
    async def slow(ctx: TaskContext) -> object:
        await asyncio.sleep(30)
        return None

    yield creep_app
    creep_app.close()


def _run(app: Creep, **options: Any) -> dict[str, int]:
    worker = app.worker(claim_ttl=30, **options)
    # Without the fix the worker ran on forever; the timeout turns that into a failure.
    return asyncio.run(asyncio.wait_for(worker.run(), timeout=30))


def _break(app: Creep, monkeypatch: pytest.MonkeyPatch, *names: str, times: int | None = None,
           ) -> list[str]:
    """Make store methods raise a non-storage error (`times` times, or always)."""
    calls: list[str] = []
    for name in names:
        real = getattr(app.store, name)

        def broken(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            if times is None or len(calls) <= times:
                raise RuntimeError(f"bug in {_name}")
            return _real(*args)

        monkeypatch.setattr(app.store, name, broken)
    return calls


def test_completer_bug_stops_the_worker_and_loses_no_task(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = [t.task_id for t in app.submit_many(
        [{"tenant_id": "t", "env": "e", "task_type": "NOOP"} for _ in range(20)])]
    _break(app, monkeypatch, "task_complete_many", "task_complete_and_claim")
    with caplog.at_level(logging.ERROR, logger="creep.worker"), \
            pytest.raises(RuntimeError, match="bug in task_complete"):
        _run(app, concurrency=5)
    assert "could not be written" in caplog.text
    # Nothing was completed: the claimed tasks are still RUNNING, the rest still QUEUED.
    statuses = {app.get_task(i).status for i in ids}
    assert TaskStatus.SUCCESS not in statuses and TaskStatus.RUNNING in statuses
    # Once their claims expire they are rescued (a retry, after its backoff), and a healthy
    # worker finishes them all.
    monkeypatch.undo()
    clock.advance(60)  # past the claim TTL, not past the tasks' deadline (timeout_ms)
    app.run_worker(burst=True, install_signals=False)
    clock.advance(3600)
    app.run_worker(burst=True, install_signals=False)
    assert {app.get_task(i).status for i in ids} == {TaskStatus.SUCCESS}


def test_transient_completer_bug_still_stops_the_worker_but_writes_the_results(
    app: Creep, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [t.task_id for t in app.submit_many(
        [{"tenant_id": "t", "env": "e", "task_type": "NOOP"} for _ in range(20)])]
    calls = _break(app, monkeypatch, "task_complete_many", "task_complete_and_claim", times=1)
    with pytest.raises(RuntimeError, match="bug in task_complete"):
        _run(app, concurrency=5)
    assert len(calls) >= 2  # the last flush at shutdown tried again, and wrote them
    done = [app.get_task(i) for i in ids]
    assert all(t.status in (TaskStatus.SUCCESS, TaskStatus.QUEUED) for t in done)
    assert any(t.status is TaskStatus.SUCCESS for t in done)


def test_lifeline_bug_stops_the_worker_and_requeues_the_running_task(
    app: Creep, monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = app.submit(tenant_id="t", env="e", task_type="SLOW")
    _break(app, monkeypatch, "task_heartbeat")
    with pytest.raises(RuntimeError, match="bug in task_heartbeat"):
        _run(app, heartbeat_interval=0.05, shutdown_grace=0.1)
    # Given back at shutdown, as for SIGTERM: queued again, without charging the attempt.
    after = app.get_task(task.task_id)
    assert after.status is TaskStatus.QUEUED
    assert [e.event_type for e in app.task_events(task.task_id)][-1] == "requeued"


def test_unstorable_results_and_errors_do_not_block_the_worker(app: Creep) -> None:
    """A handler's NUL or lone surrogate (in a result, an error or a message) never reaches
    the database as such: PostgreSQL would refuse it and the whole completion batch with it."""

    @app.handler("NUL_RESULT")
    async def nul_result(ctx: TaskContext) -> object:
        return {"x": "a\x00b"}

    @app.handler("NUL_ERROR")
    async def nul_error(ctx: TaskContext) -> object:
        raise RuntimeError("bad\x00msg \ud800")

    @app.handler("NUL_FAIL")
    async def nul_fail(ctx: TaskContext) -> object:
        raise Fail(code="HARD_FAIL", message="no\x00pe")

    one = {"tenant_id": "t", "env": "e", "constraints": {"max_retries": 0}}
    ids = {name: app.submit(task_type=name, **one).task_id
           for name in ("NUL_RESULT", "NUL_ERROR", "NUL_FAIL", "NOOP")}
    stats = asyncio.run(asyncio.wait_for(
        app.worker().run(burst=True), timeout=30))
    assert stats["completed"] == 4
    result = app.get_task(ids["NUL_RESULT"])
    assert result.status is TaskStatus.DEAD_LETTER and "NUL" in (result.result_message or "")
    error = app.get_task(ids["NUL_ERROR"])
    assert error.status is TaskStatus.DEAD_LETTER
    assert (error.result_message or "").endswith("RuntimeError: bad\\x00msg \\ud800")
    failed = app.get_task(ids["NUL_FAIL"])
    assert failed.status is TaskStatus.FAILED and failed.result_message == "no\\x00pe"
    assert app.get_task(ids["NOOP"]).status is TaskStatus.SUCCESS


def test_a_locked_sqlite_database_is_a_storage_error(tmp_path: Any) -> None:
    """SQLite's "database is locked" (another process holding the write lock past the busy
    timeout) is a StorageError, the failure a worker waits out, not a crash."""
    import sqlite3

    from creep.domain.errors import StorageError

    url = f"sqlite:///{tmp_path}/locked.db"
    app = Creep(url)
    app.submit(tenant_id="t", env="e", task_type="NOOP")
    holder = sqlite3.connect(f"{tmp_path}/locked.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        conn = app.store._conn()  # type: ignore[attr-defined]
        conn.execute("PRAGMA busy_timeout=50")
        with pytest.raises(StorageError, match="locked"):
            app.submit(tenant_id="t", env="e", task_type="NOOP")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        app.close()
    assert len(Creep(url).list_tasks()) == 1
