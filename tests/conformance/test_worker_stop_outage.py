"""A worker asked to stop while the database is unreachable: the outage is waited out for
the shutdown grace (no longer once asked a second time), then the worker exits with the
storage error, logging the tasks whose results it could not write; those are rescued once
their claims expire."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from creep import Creep, FrozenClock, StorageError, TaskContext, TaskStatus
from creep.engine.worker import Worker


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)
    yield creep_app
    creep_app.close()


def _outage(app: Creep, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, writing results fails as with the database down."""
    def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("connection refused")

    for name in ("task_complete_many", "task_complete_and_claim"):
        monkeypatch.setattr(app.store, name, down)


def _start(app: Creep, release: threading.Event, started: threading.Event,
           **options: Any) -> tuple[Worker, threading.Thread, dict[str, BaseException]]:
    @app.handler("T")
    async def t(ctx: TaskContext) -> str:
        started.set()
        await asyncio.to_thread(release.wait, 30)
        return "done"

    worker = app.worker(claim_ttl=30, **options)
    ended: dict[str, BaseException] = {}

    def run() -> None:
        try:
            asyncio.run(worker.run())
        except BaseException as exc:
            ended["error"] = exc

    # A thread: without the fix run() never returned, nor a cancellation of it.
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return worker, thread, ended


@pytest.mark.parametrize("asked_twice", [False, True])
def test_a_worker_stopped_during_an_outage_exits_with_the_error(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, asked_twice: bool,
) -> None:
    task = app.submit(task_type="T")
    release, started = threading.Event(), threading.Event()
    grace = 60.0 if asked_twice else 1.0
    with caplog.at_level(logging.WARNING, logger="creep.worker"):
        worker, thread, ended = _start(app, release, started, shutdown_grace=grace)
        assert started.wait(15)
        _outage(app, monkeypatch)
        release.set()  # the handler is done; its result cannot be written
        time.sleep(0.3)
        began = time.monotonic()
        worker.request_stop()  # SIGTERM
        if asked_twice:
            time.sleep(0.3)
            worker.request_stop()  # SIGTERM or Ctrl-C again
        thread.join(20)
        took = time.monotonic() - began
    assert not thread.is_alive(), "the worker never exited"
    assert isinstance(ended.get("error"), StorageError)
    assert took < grace + 10 if not asked_twice else took < 10
    assert "could not be written" in caplog.text and task.task_id in caplog.text
    # Not lost: still RUNNING, rescued once its claim expires.
    monkeypatch.undo()
    assert app.get_task(task.task_id).status is TaskStatus.RUNNING
    clock.advance(60)
    app.maintain()
    assert app.get_task(task.task_id).status is TaskStatus.QUEUED


def test_a_short_outage_during_the_stop_is_still_waited_out(
    app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = app.submit(task_type="T")
    release, started = threading.Event(), threading.Event()
    worker, thread, ended = _start(app, release, started, shutdown_grace=30)
    assert started.wait(15)
    _outage(app, monkeypatch)
    release.set()
    worker.request_stop()
    time.sleep(1.0)
    monkeypatch.undo()  # the database is back within the grace
    thread.join(20)
    assert not thread.is_alive() and not ended
    assert app.get_task(task.task_id).status is TaskStatus.SUCCESS


def test_a_task_given_back_at_shutdown_is_written_once(
    app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler deaf to cancellation is given back (requeued) by the shutdown, and returns
    while that write fails: its own late result must not ride in the next batch beside the
    give-back (two entries for one claim: SQLite applied the first, PostgreSQL either)."""
    release, started = threading.Event(), threading.Event()

    @app.handler("DEAF")
    async def deaf(ctx: TaskContext) -> str:
        started.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # deaf: keeps going
                await asyncio.sleep(0.02)
        return "late"

    task = app.submit(task_type="DEAF")
    batches: list[list[tuple[str, str, str]]] = []
    real = app.store.task_complete_many

    def complete(completions: Any, now: Any) -> Any:
        batches.append([(c.outcome.task_id, c.outcome.claim_token, c.outcome.kind.value)
                        for c in completions])
        if len(batches) == 1:  # the give-back's write: fails while the handler returns
            release.set()
            time.sleep(0.5)
            raise StorageError("connection reset")
        return real(completions, now)

    monkeypatch.setattr(app.store, "task_complete_many", complete)
    monkeypatch.setattr(app.store, "task_complete_and_claim", None, raising=False)
    worker = app.worker(shutdown_grace=0)

    async def run() -> dict[str, int]:
        job = asyncio.create_task(worker.run())
        assert await asyncio.to_thread(started.wait, 15)
        worker.request_stop()
        return await asyncio.wait_for(job, 30)

    stats = asyncio.run(run())
    claims = [(tid, tok) for batch in batches for tid, tok, _ in batch]
    assert all(len(set(b)) == len(b) for b in ([(t, k) for t, k, _ in x] for x in batches))
    assert [kind for batch in batches[1:] for _, _, kind in batch] == ["requeue"], batches
    assert len(set(claims)) == 1
    after = app.get_task(task.task_id)
    assert after.status is TaskStatus.QUEUED and after.attempt == 0
    assert [e.event_type for e in app.task_events(task.task_id)].count("requeued") == 1
    assert stats["completed"] == 1
