"""Concurrency edges: event cursors under interleaved transactions, a worker claiming a task again while its stale run goes on, racing lease ends and racing idempotent bulk submits."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from creep import Creep
from tests.conftest import blocked_by, wait_until


def _interleave_events_of_one_task(url: str) -> tuple[Creep, str, list[Any], threading.Thread]:
    """Two transactions write events of task X; the one with the LOWER transaction id
    commits LAST:

    T1 = app.cancel(A): locks and cancels A (takes its xid), then its dependant cascade
         waits on Y (held by another transaction, here a plain row lock, as any creep
         transaction touching Y holds it for a moment), then cancels X after Y.
    T2 = app.update_task(X, priority=...): starts after T1, commits first ("updated").

    Returns the app, X, X's events read while T1 is still in flight (what a client sees at
    that moment), and T1's thread (finished on return)."""
    app = Creep(url)
    a = app.submit(task_type="T", run_after=None)
    y = app.submit(task_type="T", depends_on=[a.task_id])
    x = app.submit(task_type="T", depends_on=[y.task_id])
    holder = psycopg.connect(url)
    watcher = psycopg.connect(url, autocommit=True)
    holder.execute("SELECT 1 FROM tasks WHERE task_id = %s FOR UPDATE", (y.task_id,))
    t1 = threading.Thread(target=app.cancel, args=(a.task_id,))
    t1.start()
    assert wait_until(lambda: blocked_by(watcher, holder.info.backend_pid), 10.0)
    app.update_task(x.task_id, x.task_version, priority=90)       # T2 commits
    seen = app.task_events(x.task_id)                             # a client reads now
    holder.rollback()                                              # T1 goes on and commits
    t1.join(10.0)
    holder.close()
    watcher.close()
    assert app.get_task(x.task_id).status == "CANCELLED"
    return app, x.task_id, seen, t1


def test_task_events_cursor_skips_event_committed_later_by_older_transaction(
    pg_schema_url: str,
) -> None:
    """README: task_events(id)/events_after(cursor) carry "the cursor to continue from, so a
    client can stream without missing or repeating one". Continuing from the last event
    task_events returned loses X's `cancelled` event for good."""
    app, x, seen, _ = _interleave_events_of_one_task(pg_schema_url)
    try:
        # Read while the older transaction was open, the history holds what had committed
        # (one task's events commit in event_id order); continuing from it misses nothing
        # and repeats nothing.
        assert [e.event_type for e in seen] == ["created", "updated"]
        rest = app.events_after(seen[-1].cursor, task_id=x)
        streamed = [e.event_type for e in seen] + [e.event_type for e in rest]
        every = [e.event_type for e in app.task_events(x)]
        assert streamed == every, (streamed, every)
        assert sorted(every) == ["cancelled", "created", "updated"]
    finally:
        app.close()


def test_task_events_last_cursor_repeats_an_event(pg_schema_url: str) -> None:
    """Once everything committed, continuing after the last event of task_events(id)
    returns an event task_events already returned (the list is in event_id order, the
    cursor in (txid, event_id) order)."""
    app, x, _, _ = _interleave_events_of_one_task(pg_schema_url)
    try:
        every = app.task_events(x)
        again = app.events_after(every[-1].cursor, task_id=x)
        assert again == [], [(e.event_type, e.cursor) for e in again]
    finally:
        app.close()


def test_rest_event_pages_and_sse_stream_lose_event_of_older_transaction(
    pg_schema_url: str, tmp_path: Any
) -> None:
    """REST API on the same interleaving (everything committed before any read):
    GET /v1/tasks/{id}/events?limit=2 then ?after=next_cursor never returns `cancelled`;
    GET /v1/tasks/{id}/events/stream of the finished task never sends `end`."""
    import httpx

    from tests.api.conftest import ADMIN_KEY, read_sse, start_server, stop_server

    app, x, _, _ = _interleave_events_of_one_task(pg_schema_url)
    app.close()
    server = start_server(pg_schema_url, tmp_path / "server.log")
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=5) as c:
            types: list[str] = []
            r = c.get(f"/v1/tasks/{x}/events", params={"limit": 2}).json()
            types += [e["event_type"] for e in r["items"]]
            for _ in range(5):
                r = c.get(f"/v1/tasks/{x}/events",
                          params={"limit": 2, "after": r["next_cursor"]}).json()
                types += [e["event_type"] for e in r["items"]]
            page_problem = sorted(types) != ["cancelled", "created", "updated"]
            streamed: list[dict[str, str]] = []
            try:
                with c.stream("GET", f"/v1/tasks/{x}/events/stream") as resp:
                    streamed = read_sse(resp)
            except httpx.ReadTimeout:  # no `end` (nor keep-alive) within 5 s
                pass
            stream_problem = not streamed or streamed[-1]["event"] != "end"
        assert not page_problem and not stream_problem, (
            f"paged events: {types}; SSE stream of the finished task (no `end` = hung): "
            f"{[e['event'] for e in streamed]}")
    finally:
        stop_server(server)


def test_lost_run_stops_the_live_rerun_of_the_same_task_in_one_worker(db_url: str) -> None:
    """A worker's claim on X expires (its heartbeats were late: an outage, a pause) and the
    rescuer requeues X; the same worker claims X again (attempt 2, a new live claim) while
    attempt 1's handler is still running. The worker keys its runs by task_id only: when
    attempt 1 learns it lost its claim (ctx.heartbeat() / ctx.progress()), the worker
    stops attempt 2 — the run that holds the live claim — as "lost". Its result is never
    written; X stays RUNNING until claim 2 expires and runs a third time."""
    import asyncio

    from creep import FrozenClock, TaskContext
    from creep.domain.outcomes import Backoff

    clock = FrozenClock()
    app = Creep(db_url, clock=clock, backoff=Backoff(base_seconds=1.0))
    events: list[tuple[str, int]] = []
    second_started = threading.Event()
    release_second = threading.Event()

    async def until(flag: threading.Event) -> None:
        # A thread's flag (the test thread sets it): polled, as an asyncio.Event cannot be.
        while not flag.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    @app.handler("H")
    async def handler(ctx: TaskContext) -> str:
        n = ctx.attempt
        events.append(("start", n))
        try:
            if n == 1:
                await until(second_started)
                await ctx.heartbeat()      # attempt 1 finds out its claim is gone
                return "stale"
            second_started.set()
            await until(release_second)
            return "fresh"
        except asyncio.CancelledError:
            events.append(("cancelled", n))
            raise
        except Exception as exc:
            events.append((type(exc).__name__, n))
            raise

    # Heartbeats every 9.5 s of real time: none falls inside the test's few seconds.
    worker = app.worker(claim_ttl=10.0, heartbeat_interval=9.5, maintenance=False,
                        poll_interval=0.05)
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    runner.start()
    try:
        task = app.submit(task_type="H")
        assert wait_until(lambda: ("start", 1) in events, 10.0)
        clock.advance(11)                       # claim 1 expired
        assert app.maintain().rescued == 1      # the leader requeues X (attempt 1 charged)
        clock.advance(5)                        # past the retry backoff
        assert wait_until(lambda: ("start", 2) in events, 10.0), events
        assert wait_until(lambda: any(e[1] == 1 and e[0] != "start" for e in events), 5.0)
        time.sleep(0.3)
        release_second.set()
        done = wait_until(lambda: app.get_task(task.task_id).status == "SUCCESS", 5.0)
        final = app.get_task(task.task_id)
        assert ("cancelled", 2) not in events and done, (
            f"events {events}; task {final.status} attempt {final.attempt}")
    finally:
        release_second.set()
        worker.request_stop()
        runner.join(20.0)
        app.close()


def test_concurrent_lease_end_double_decrements_current_concurrency(
    pg_schema_url: str,
) -> None:
    """Two transactions ending the same ACTIVE lease (here two release_lease calls, e.g. a
    client retrying POST /v1/leases/{id}/release; the completion's settle and the rescuer's
    expiry read leases the same way) both read it ACTIVE before either locks the asset row.
    The second, once it gets the asset lock, gives the capacity back a second time: the
    asset's current_concurrency drops below its count of ACTIVE leases (here 0 with one
    lease ACTIVE, asset READY instead of IN_USE), and the asset is then leased beyond
    max_concurrency. The second release should be refused (IllegalTransition / 409)."""
    from creep import TaskContext
    from creep.domain.lease import LeaseStatus

    url = pg_schema_url
    app = Creep(url)
    hint = {"sku_category": "RAW_NET", "sku_code": "ip.uk.*"}
    asset = app.create_asset(sku_category="RAW_NET", sku_code="ip.uk.1", max_concurrency=2)

    @app.handler("HOLD")
    async def hold(ctx: TaskContext) -> None:
        return None

    def submit_and_run(n: int) -> list[str]:
        ids = [app.submit(task_type="HOLD", resource_hints=[hint],
                          constraints={"keep_leases": True}).task_id for _ in range(n)]
        app.run_worker(burst=True, install_signals=False, concurrency=4)
        return ids

    try:
        a, _ = submit_and_run(2)
        [lease_a] = app.list_leases(task_id=a)
        assert app.get_asset(asset.asset_id).current_concurrency == 2

        holder = psycopg.connect(url)     # a transaction holding the asset row a moment
        watcher = psycopg.connect(url, autocommit=True)
        holder.execute("SELECT 1 FROM assets WHERE asset_id = %s FOR UPDATE",
                       (asset.asset_id,))
        outcomes: list[str] = []

        def release() -> None:
            try:
                app.release_lease(lease_a.lease_id)
                outcomes.append("released")
            except Exception as exc:
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=release) for _ in range(2)]
        for t in threads:
            t.start()
        assert wait_until(lambda: watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (holder.info.backend_pid,)).fetchone()[0] >= 1, 10.0)
        time.sleep(0.3)                    # both read the lease, both wait for the asset
        holder.rollback()
        for t in threads:
            t.join(10.0)
        holder.close()
        watcher.close()

        active = [x for x in app.list_leases(asset_id=asset.asset_id)
                  if x.status is LeaseStatus.ACTIVE]
        now = app.get_asset(asset.asset_id)
        drift = (now.current_concurrency, len(active), str(now.status), sorted(outcomes))
        more = submit_and_run(2)           # capacity 2, one lease still held: one fits
        held = [x for x in app.list_leases(asset_id=asset.asset_id)
                if x.status is LeaseStatus.ACTIVE]
        assert drift[0] == drift[1] and len(held) <= 2, (
            f"(current_concurrency, ACTIVE leases, status, releases) after the race: {drift}; "
            f"ACTIVE leases on an asset of max_concurrency 2 afterwards: {len(held)} "
            f"(tasks {[app.get_task(t).status for t in more]})")
    finally:
        app.close()


def test_concurrent_identical_submit_many_deadlocks_instead_of_replaying(
    pg_schema_url: str,
) -> None:
    """README: the same (tenant, env, idempotency_key) and body replays; "Race-safe: the
    unique constraint decides". Two processes submitting the same idempotent orders with
    submit_many (in another order: e.g. a client retry that rebuilt its list) deadlock on
    the unique index; one call fails with StorageError("deadlock detected") instead of
    replaying."""
    apps = [Creep(pg_schema_url), Creep(pg_schema_url)]
    errors: list[str] = []
    try:
        for rnd in range(30):
            orders = [{"task_type": "T", "idempotency_key": f"r{rnd}-{i}",
                       "input_payload": {"i": i}} for i in range(50)]
            barrier = threading.Barrier(2)

            def go(app: Creep, batch: list[dict[str, Any]],
                   barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                try:
                    app.submit_many(batch)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

            threads = [threading.Thread(target=go, args=(apps[0], orders)),
                       threading.Thread(target=go, args=(apps[1], orders[::-1]))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30.0)
            if errors:
                break
        assert errors == [], errors
    finally:
        for app in apps:
            app.close()


def test_a_tasks_events_are_read_whole_while_another_transaction_is_open(
    pg_schema_url: str,
) -> None:
    """Any transaction open anywhere on the PostgreSQL server (another application's, a
    migration's) held back every newer event: task_events(id) of a task created after it
    waited 0.5 s and came back empty, and the task's stream read nothing. One task's events
    are read whole (they commit in event_id order), whatever else is open."""
    app = Creep(pg_schema_url)
    other = psycopg.connect(pg_schema_url)
    try:
        other.execute("SELECT pg_current_xact_id()")  # an xid, held open below
        task = app.submit(task_type="T")
        app.cancel(task.task_id)
        events = [e.event_type for e in app.task_events(task.task_id)]
        streamed = [e.event_type for e in app.events_after(None, task_id=task.task_id)]
        assert events == streamed == ["created", "queued", "cancelled"]
    finally:
        other.rollback()
        other.close()
        app.close()
