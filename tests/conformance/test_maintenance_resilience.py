"""Leader maintenance (rescuing expired claims, timeouts, cooling...) outlives an unexpected
error, in the API server's Maintainer and in a worker, and a server shutting down keeps the
leadership lock while its sweep still runs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from creep import Creep, FrozenClock, TaskContext, TaskStatus
from creep.api.app import create_app
from creep.api.settings import Settings
from creep.engine.worker import MAINTENANCE_LOCK
from tests.conftest import wait_until


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)
    yield creep_app
    creep_app.close()


class _Faulty:
    """The app's store, but its sweep raises a bug's error (not a CreepError) the first
    `failures` times, or waits on `hold` while it is set up to."""

    def __init__(self, store: Any, failures: int = 0, hold: threading.Event | None = None):
        self._store = store
        self._maintain = store.task_maintain  # the store's own, even once patched over
        self.failures = failures
        self.hold = hold
        self.sweeping = threading.Event()
        self.sweeps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def task_maintain(self, *args: Any) -> Any:
        self.sweeps += 1
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a bug in the sweep")
        if self.hold is not None:
            self.sweeping.set()
            self.hold.wait(30)
        return self._maintain(*args)


def _abandoned_task(app: Creep, clock: FrozenClock) -> str:
    """A task whose worker died: claimed, its claim since expired."""
    t = app.submit(task_type="T")
    assert app.store.task_claim("dead-worker", ["T"], 1, clock.now(), 5.0)
    clock.advance(30)
    return t.task_id


def _server(app: Creep, store: Any, clock: FrozenClock) -> AbstractAsyncContextManager[None]:
    """The API server's lifespan (what `creep server` runs at start and at shutdown)."""
    settings = Settings(database_url=app.database_url, maintenance_interval_seconds=0.05,
                        log_json=False)
    api = create_app(settings, store=store, clock=clock)
    return api.router.lifespan_context(api)


def test_the_servers_maintenance_outlives_an_unexpected_error(
    app: Creep, clock: FrozenClock
) -> None:
    task_id = _abandoned_task(app, clock)
    faulty = _Faulty(app.store, failures=1)

    async def serve() -> bool:
        async with _server(app, faulty, clock):
            return await asyncio.to_thread(
                wait_until, lambda: app.get_task(task_id).status is TaskStatus.QUEUED, 15)

    rescued = asyncio.run(serve())
    assert faulty.sweeps >= 2
    assert rescued, "maintenance stopped for good after the sweep's first error"


def test_a_workers_maintenance_outlives_an_unexpected_error(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.handler("T")
    async def t(ctx: TaskContext) -> str:
        return "done"

    task_id = _abandoned_task(app, clock)
    faulty = _Faulty(app.store, failures=1)
    monkeypatch.setattr(app.store, "task_maintain", faulty.task_maintain)

    async def run() -> bool:
        worker = app.worker(maintenance_interval=0.05)
        job = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 15
        while app.get_task(task_id).status is TaskStatus.RUNNING:
            if job.done() or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        alive = not job.done()
        worker.request_stop()
        await asyncio.wait_for(job, 30)  # raised the sweep's RuntimeError before
        return alive

    assert asyncio.run(run()), "the worker stopped on the sweep's error"
    # Rescued by the next sweep: queued again, its attempt charged (WORKER_LOST).
    assert app.get_task(task_id).status is TaskStatus.QUEUED
    assert faulty.sweeps >= 2


def test_a_server_stopping_mid_sweep_keeps_the_lock_until_the_sweep_ends(
    app: Creep, clock: FrozenClock
) -> None:
    hold = threading.Event()
    faulty = _Faulty(app.store, hold=hold)

    async def serve_then_stop() -> None:
        async with _server(app, faulty, clock):
            assert await asyncio.to_thread(faulty.sweeping.wait, 15)
        # Shut down while the sweep still runs: stop() gives up waiting for it (10 s).

    try:
        asyncio.run(serve_then_stop())
        # The sweep still runs: no other process may lead (and sweep) beside it.
        assert app.store.lock_acquire(MAINTENANCE_LOCK, "another", 5.0, clock.now(),
                                      "test") is None
    finally:
        hold.set()
    # Once that sweep is over, the lock is given up for the next leader.
    assert wait_until(lambda: app.store.lock_acquire(
        MAINTENANCE_LOCK, "another", 5.0, clock.now(), "test") is not None, timeout=10)


def test_a_worker_stopping_mid_sweep_keeps_the_lock_until_the_sweep_ends(
    app: Creep, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.handler("T")
    async def t(ctx: TaskContext) -> str:
        return "done"

    hold = threading.Event()
    faulty = _Faulty(app.store, hold=hold)
    monkeypatch.setattr(app.store, "task_maintain", faulty.task_maintain)
    worker = app.worker(maintenance_interval=0.05)
    thread = threading.Thread(target=asyncio.run, args=(worker.run(),))
    thread.start()
    try:
        assert faulty.sweeping.wait(15)
        worker.request_stop()
        time.sleep(0.5)  # the stop is under way, the sweep still runs
        taken = app.store.lock_acquire(MAINTENANCE_LOCK, "another", 5.0, clock.now(), "test")
    finally:
        hold.set()
        thread.join(30)
    assert taken is None, "the lock was given up while the sweep still ran"
    assert app.store.lock_acquire(MAINTENANCE_LOCK, "another", 5.0, clock.now(), "t") is not None
