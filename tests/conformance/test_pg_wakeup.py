"""PostgreSQL wake-ups: the worker's loop watches the LISTEN socket itself. A submit from
another process (no in-process hint) wakes an idle worker long before its polling interval;
so does one after the LISTEN connection was killed (it reconnects); a cancel reaches a
running handler before its next heartbeat; the worker stops promptly."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg

from creep import Creep, TaskContext
from creep.storage import postgres_store as ps
from tests.conftest import wait_until


def test_idle_worker_is_woken_through_the_loop_watched_listen(
    pg_schema_url: str, monkeypatch: Any
) -> None:
    listens: list[int] = []  # backend pids of the LISTEN connections the loop watched
    watch = ps._PgListener._watch

    def spy(self: Any, loop: Any, conn: psycopg.Connection[Any], on_wake: Any) -> None:
        listens.append(conn.info.backend_pid)
        watch(self, loop, conn, on_wake)

    monkeypatch.setattr(ps._PgListener, "_watch", spy)
    worker_app, submitter = Creep(pg_schema_url), Creep(pg_schema_url)
    started: dict[int, float] = {}

    @worker_app.handler("PING")
    async def ping(ctx: TaskContext) -> None:
        started[ctx.task.input_payload["i"]] = time.monotonic()

    @worker_app.handler("SLEEP")
    async def sleep(ctx: TaskContext) -> None:
        started[0] = time.monotonic()
        await asyncio.sleep(30)

    # Polling every 60 s, heartbeats every 24 s: only a NOTIFY can start these tasks, or
    # stop a running one, within the test's time.
    worker = worker_app.worker(poll_interval=60.0, claim_ttl=120.0, maintenance=False)
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: len(listens) == 1, 5.0)
        time.sleep(0.2)  # idle, past the listener's catch-up claim
        submitter.submit(task_type="PING", input_payload={"i": 1})
        assert wait_until(lambda: 1 in started, 5.0)

        # The LISTEN connection dies: the listener reconnects, and NOTIFYs wake the worker
        # through the new connection.
        with psycopg.connect(pg_schema_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (listens[0],))
        assert wait_until(lambda: len(listens) == 2, 5.0)
        time.sleep(0.2)
        submitter.submit(task_type="PING", input_payload={"i": 2})
        assert wait_until(lambda: 2 in started, 5.0)

        # A cancel from another process reaches the running handler the same way.
        slow = submitter.submit(task_type="SLEEP", input_payload={})
        assert wait_until(lambda: 0 in started, 5.0)
        submitter.cancel(slow.task_id)
        assert wait_until(lambda: submitter.get_task(slow.task_id).status.value == "CANCELLED", 5.0)
    finally:
        stopping = time.monotonic()
        worker.request_stop()
        runner.join(15)
        assert not runner.is_alive()
        assert time.monotonic() - stopping < 2.0  # the loop unwatches; no waiting on itself
        worker_app.close()
        submitter.close()


def test_an_asset_made_leasable_by_an_update_wakes_an_idle_worker(
    pg_schema_url: str, monkeypatch: Any
) -> None:
    """A hinted task waits for an asset that is not leasable (NEW, or at its concurrency).
    update_asset making one leasable (NEW -> READY, a higher max_concurrency) woke no worker,
    unlike an unban or a lease release: the task waited for the worker's next poll."""
    listens: list[int] = []
    watch = ps._PgListener._watch

    def spy(self: Any, loop: Any, conn: psycopg.Connection[Any], on_wake: Any) -> None:
        listens.append(conn.info.backend_pid)
        watch(self, loop, conn, on_wake)

    monkeypatch.setattr(ps._PgListener, "_watch", spy)
    worker_app, admin = Creep(pg_schema_url), Creep(pg_schema_url)
    started: list[str] = []

    @worker_app.handler("NET")
    async def net(ctx: TaskContext) -> None:
        started.append(ctx.task.task_id)
        await asyncio.sleep(30 if ctx.task.input_payload.get("hold") else 0)

    hint = [{"sku_category": "RAW_NET", "sku_code": "ip.wake", "min_count": 1}]
    new = admin.create_asset(sku_category="RAW_NET", sku_code="ip.wake", status="NEW",
                             max_concurrency=1)
    first = admin.submit(task_type="NET", resource_hints=hint, input_payload={"hold": True})
    # Polling every 60 s: only a NOTIFY can start these tasks within the test's time.
    worker = worker_app.worker(poll_interval=60.0, claim_ttl=120.0, maintenance=False,
                               shutdown_grace=0.5)
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: len(listens) == 1, 5.0)
        time.sleep(0.5)  # idle, past the listener's catch-up claim: the task waits
        assert started == []
        ready = admin.update_asset(new.asset_id, new.version, status="READY")
        assert wait_until(lambda: started == [first.task_id], 5.0)

        # The asset is at its concurrency (1): a second task waits until it is raised.
        second = admin.submit(task_type="NET", resource_hints=hint, input_payload={})
        time.sleep(0.5)
        assert started == [first.task_id]
        current = admin.get_asset(ready.asset_id)
        admin.update_asset(current.asset_id, current.version, max_concurrency=2)
        assert wait_until(lambda: second.task_id in started, 5.0)
    finally:
        worker.request_stop()
        runner.join(15)
        worker_app.close()
        admin.close()
