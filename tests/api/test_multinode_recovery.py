"""Many processes on one PostgreSQL, with their database connections
killed under them (pg_terminate_backend from a separate connection, finding each process's
backends by the `application_name` put in its database URL)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from creep import Creep, TaskContext
from creep.client import ApiProblem, Client
from tests.api.conftest import start_server, stop_server
from tests.conftest import PG_URL, blocked_by, require_postgres, wait_until


def _named(url: str) -> tuple[str, str]:
    """The URL with an application_name of its own, and that name."""
    name = f"rv_{uuid.uuid4().hex[:12]}"
    return f"{url}&application_name={name}", name


def _terminate(name: str, *, keep_listener: bool = False) -> int:
    """pg_terminate_backend every backend of `name` (but its LISTEN connection, if asked);
    returns how many were terminated."""
    listener = "AND query NOT LIKE 'LISTEN%%'" if keep_listener else ""
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = %s AND pid <> pg_backend_pid() {listener}) x",
            (name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _backends(name: str) -> list[str]:
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        return [str(r[0]) for r in admin.execute(
            "SELECT query FROM pg_stat_activity WHERE application_name = %s", (name,))]


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of its own (URL with a search_path, as the schema fixtures give): NOTIFYs
    are per database, and other tests' `creep_tasks` NOTIFYs would wake this test's worker
    (each such wake makes the worker claim again, hiding a lost wake-up)."""
    require_postgres()
    name = f"rv_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}?options={quote('-csearch_path=public')}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_worker_picks_up_a_notified_task_promptly_after_its_pool_connections_died(
    own_database: str,
) -> None:
    """After its pooled connections were terminated, a worker woken by a NOTIFY failed its
    claim on a dead connection and then slept a whole poll_interval (the wake-up was spent).
    Dead pooled connections are now replaced before use, and a failed claim is tried again
    shortly (test_worker_lifecycle_edges covers that on its own)."""
    url, name = _named(own_database)
    # Four pooled connections, opened up front: all of them are reset below.
    worker_app, submitter = Creep(f"{url}&pool_min=4&pool_max=4"), Creep(own_database)
    started: dict[str, float] = {}

    @worker_app.handler("PING")
    async def ping(ctx: TaskContext) -> None:
        started[ctx.task_id] = time.monotonic()

    # Polling every 8 s: within the test's time only a NOTIFY (or a prompt retry) starts it.
    worker = worker_app.worker(poll_interval=8.0, maintenance=False)
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: any(q.startswith("LISTEN") for q in _backends(name)), 5.0)
        first = submitter.submit(task_type="PING")
        assert wait_until(lambda: first.task_id in started, 5.0)  # NOTIFY works
        assert wait_until(lambda: len(_backends(name)) == 5, 5.0)  # the pool and LISTEN
        time.sleep(0.2)
        # The database is fine; only this worker's pooled connections are reset (a
        # PostgreSQL restart or a proxy failover does the same). Its LISTEN stays up.
        assert _terminate(name, keep_listener=True) == 4
        time.sleep(0.2)
        submitted = time.monotonic()
        second = submitter.submit(task_type="PING")
        picked = wait_until(lambda: second.task_id in started, 4.0)
        waited = (started.get(second.task_id, time.monotonic()) - submitted)
        assert picked, f"the notified task was not started within 4 s ({waited:.1f} s)"
    finally:
        worker.request_stop()
        runner.join(15)
        worker_app.close()
        submitter.close()


def test_server_answers_after_its_database_connections_were_reset(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """Once a `creep server`'s PostgreSQL connections were terminated (a database restart,
    a failover), each following request takes a dead pooled connection and answers 503
    while the database is up: one 503 per pooled connection (up to pool_max), more than
    the SDK's four retries cover, so even `Client.get_task` fails."""
    url, name = _named(pg_schema_url)
    # A pool kept at 20 connections (as a busy server's grows to its pool_max anyway).
    server = start_server(f"{url}&pool_min=20&pool_max=20", tmp_path / "server.log")
    try:
        _, key = server.tenant()
        with server.client(key) as c:
            task_id = c.post("/v1/tasks", json={"task_type": "NOOP"}).json()["task_id"]

            def read(_: int) -> int:
                return c.get(f"/v1/tasks/{task_id}").status_code

            assert read(0) == 200
            assert _terminate(name) >= 20
            time.sleep(0.2)
            with Client(server.url, key) as client:  # default RetryPolicy: 4 retries
                try:
                    sdk = client.get_task(task_id).task_id == task_id
                except ApiProblem as exc:
                    sdk = exc.status
            codes = [read(i) for i in range(6)]
        assert (sdk, codes) == (True, [200] * 6)
    finally:
        stop_server(server)


def _maintenance_holder(url: str) -> str | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT holder_id FROM task_locks WHERE lock_key = 'creep.maintenance' "
            "AND state = 'active'").fetchone()
    return None if row is None else str(row[0])


def test_asset_sweeps_run_while_an_api_server_leads_maintenance(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """A `creep server` takes the shared `creep.maintenance` lock, but its Maintainer runs
    only task_maintain, never asset_maintain: while a server leads, no process cools assets
    (COOLING stays COOLING, hinted tasks wait forever) or fails hinted tasks NO_RESOURCE."""
    server = start_server(pg_schema_url, tmp_path / "server.log")
    app = Creep(pg_schema_url)
    done: list[str] = []

    @app.handler("LEASED")
    async def leased(ctx: TaskContext) -> None:
        done.append(ctx.task_id)

    worker = app.worker(poll_interval=0.1, maintenance_interval=0.2)
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    try:
        # The server (started first, as in most deployments) leads the maintenance.
        assert wait_until(lambda: ":api:" in (_maintenance_holder(pg_schema_url) or ""), 10.0)
        [asset] = app.import_assets([{
            "sku_category": "RAW_NET", "sku_code": "ip.1", "max_concurrency": 1,
            "cooldown_seconds": 1}])
        hint = [{"sku_category": "RAW_NET", "sku_code": "ip.1", "min_count": 1}]
        first = app.submit(task_type="LEASED", resource_hints=hint)
        # A hinted task no asset can ever serve, to be failed NO_RESOURCE after 1 s.
        orphan = app.submit(task_type="LEASED", timeout_ms=1000, resource_hints=[
            {"sku_category": "RAW_NET", "sku_code": "nowhere", "min_count": 1}])
        runner.start()
        assert wait_until(lambda: first.task_id in done, 10.0)
        second = app.submit(task_type="LEASED", resource_hints=hint)
        # Cooldown 1 s, sweeps every second: the asset serves again within a few seconds,
        # and the orphan is failed NO_RESOURCE.
        wait_until(lambda: app.get_task(second.task_id).status.value == "SUCCESS"
                   and app.get_task(orphan.task_id).status.value == "FAILED", 6.0)
        states = (app.get_task(second.task_id).status.value,
                  app.get_task(orphan.task_id).status.value,
                  app.get_asset(asset.asset_id).status.value,
                  _maintenance_holder(pg_schema_url))
        assert states[:2] == ("SUCCESS", "FAILED"), states
    finally:
        worker.request_stop()
        if runner.is_alive():
            runner.join(15)
        app.close()
        stop_server(server)


def test_handler_heartbeat_waits_out_a_connection_reset(own_database: str) -> None:
    """README: "A storage outage is waited out (claims, heartbeats and completions retry)".
    A handler's ctx.heartbeat() on a dead pooled connection instead raises creep's
    StorageError into the handler: the task is failed and retried, charging an attempt
    (DEAD_LETTER on its last), for a connection reset the worker's own loops shrug off."""
    url, name = _named(own_database)
    # Four pooled connections, all reset: a stray claim cannot use up the only dead one.
    app, reader = Creep(f"{url}&pool_min=4&pool_max=4"), Creep(own_database)
    gate, started = threading.Event(), threading.Event()

    @app.handler("REPORTING")
    async def reporting(ctx: TaskContext) -> str:
        started.set()
        await asyncio.to_thread(gate.wait, 10)
        await ctx.heartbeat()
        await ctx.progress(50, "half way")
        return "done"

    worker = app.worker(poll_interval=30.0, maintenance=False)
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: any(q.startswith("LISTEN") for q in _backends(name)), 5.0)
        time.sleep(0.2)  # past the listener's catch-up claim
        task = reader.submit(task_type="REPORTING")
        assert started.wait(10)
        time.sleep(0.5)  # the worker idle, its claim round over
        assert len(_backends(name)) == 5  # the pool and LISTEN
        assert _terminate(name, keep_listener=True) == 4
        time.sleep(0.2)
        gate.set()
        assert wait_until(lambda: reader.get_task(task.task_id).status.value != "RUNNING", 5.0)
        done = reader.get_task(task.task_id)
        kinds = [e.event_type for e in reader.task_events(task.task_id)]
        assert (done.status.value, done.attempt, done.last_error) == ("SUCCESS", 1, None), kinds
    finally:
        worker.request_stop()
        runner.join(15)
        app.close()
        reader.close()


def test_start_up_migration_is_tried_again_when_its_connection_is_reset(
    pg_schema_url: str,
) -> None:
    """Opening a database migrates it (auto_migrate, as `creep worker` and `creep server` do
    on start) in one transaction, tried again whole only when it lost a deadlock: a
    connection reset in the middle (a failover, pg_terminate_backend; found by the chaos test,
    tests/integration/test_chaos_drain.py) raised StorageError, and `creep worker` exited 2
    on start, although nothing of the migration was written and the database was up."""
    url, name = _named(pg_schema_url)
    outcome: dict[str, object] = {}

    def first_call() -> None:
        app = Creep(url)
        try:
            outcome["tasks"] = app.list_tasks()
        except Exception as exc:
            outcome["error"] = exc
        finally:
            app.close()

    with psycopg.connect(PG_URL, autocommit=True) as holder:
        # Another process migrating: this one's migration waits inside its transaction.
        holder.execute("SELECT pg_advisory_lock(%s)", (0x63726565,))
        opener = threading.Thread(target=first_call, daemon=True)
        opener.start()
        try:
            assert wait_until(lambda: blocked_by(holder, holder.info.backend_pid), 10.0)
            assert _terminate(name) >= 1
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (0x63726565,))
        opener.join(30)
    assert outcome == {"tasks": []}
