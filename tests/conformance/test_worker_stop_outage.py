"""A worker asked to stop while the database is unreachable: the outage is waited out for
the shutdown grace (no longer once asked a second time), then the worker exits with the
storage error, logging the tasks whose results it could not write; those are rescued once
their claims expire."""

from __future__ import annotations

import asyncio
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
