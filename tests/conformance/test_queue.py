"""The queue's contract, through the public Python API, on every backend."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest

from creep import (
    Backoff,
    ConflictError,
    Creep,
    Fail,
    FrozenClock,
    IdempotencyConflict,
    IllegalTransition,
    NotFound,
    Retry,
    TaskContext,
    TaskStatus,
    ValidationError,
    VersionConflict,
)
from creep import app as app_module


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock, backoff=Backoff(base_seconds=10, cap_seconds=100))
    yield creep_app
    creep_app.close()


def test_quick_start_shape(db_url: str) -> None:
    app = Creep(db_url)

    @app.handler("ECHO")
    async def echo(ctx: TaskContext) -> object:
        return {"echo": ctx.task.input_payload}

    t = app.submit(tenant_id="t1", env="dev", idempotency_key="k1", task_type="ECHO",
                   priority=80, input_payload={"x": 1})
    assert t.status is TaskStatus.QUEUED and t.task_version == 1 and not t.replayed
    app.run_worker(burst=True)
    done = app.get_task(t.task_id)
    assert done.status == "SUCCESS"
    assert done.result_code == "OK" and done.result_payload == {"echo": {"x": 1}}
    assert done.attempt == 1 and done.progress == 100
    assert [e.event_type for e in app.task_events(t.task_id)] == [
        "created", "queued", "started", "succeeded"]
    app.close()


def test_idempotent_replay_and_conflict(app: Creep) -> None:
    first = app.submit(tenant_id="t1", env="prod", idempotency_key="req-1", task_type="A",
                       input_payload={"n": 1}, max_total_cost="5.0")
    again = app.submit(tenant_id="t1", env="prod", idempotency_key="req-1", task_type="A",
                       input_payload={"n": 1}, max_total_cost=5.0)
    assert again.task_id == first.task_id and again.replayed and not first.replayed
    with pytest.raises(IdempotencyConflict) as info:
        app.submit(tenant_id="t1", env="prod", idempotency_key="req-1", task_type="A",
                   input_payload={"n": 2})
    assert info.value.task_id == first.task_id
    # The key is scoped by env and tenant.
    other_env = app.submit(tenant_id="t1", env="staging", idempotency_key="req-1",
                           task_type="A", input_payload={"n": 2})
    other_tenant = app.submit(tenant_id="t2", env="prod", idempotency_key="req-1",
                              task_type="A", input_payload={"n": 2})
    assert len({first.task_id, other_env.task_id, other_tenant.task_id}) == 3
    # A bulk submission mixing a replay and new tasks.
    mixed = app.submit_many([
        {"tenant_id": "t1", "env": "prod", "idempotency_key": "req-1", "task_type": "A",
         "input_payload": {"n": 1}, "max_total_cost": "5.00"},
        {"tenant_id": "t1", "env": "prod", "idempotency_key": "req-2", "task_type": "A"},
        {"tenant_id": "t1", "env": "prod", "idempotency_key": "req-2", "task_type": "A"},
    ])
    assert mixed[0].task_id == first.task_id and mixed[0].replayed
    assert mixed[1].task_id == mixed[2].task_id and mixed[2].replayed and not mixed[1].replayed
    assert len(app.list_tasks(tenant_id="t1", env="prod")) == 2


def test_plain_bulk_replay_conflict_and_awkward_text(app: Creep) -> None:
    """Plain orders take the stores' bulk path (lean SQLite rows, PostgreSQL COPY): keys
    that exist already still replay or conflict, and text round-trips exactly."""
    awkward = ['a,b', 'quote " and ""', "back\\slash \\N", "", " ", "tab\t", "ünï©ødé ✓",
               "\\.", "line\nbreak", "cr\rlf"]
    orders = [
        {"tenant_id": "t1", "env": "prod", "idempotency_key": f"k{i}-{text}",
         "task_type": f"T{text}", "description": None, "correlation_id": text or None,
         "priority": i, "input_payload": {"text": text, "i": i}}
        for i, text in enumerate(awkward)
    ]
    first = app.submit_many(orders[:-2]) + app.submit_many(orders[-2:])  # line breaks apart
    assert [t.replayed for t in first] == [False] * len(orders)
    for order, task in zip(orders, first, strict=True):
        got = app.get_task(task.task_id)
        assert got.idempotency_key == order["idempotency_key"]
        assert got.task_type == order["task_type"] and got.priority == order["priority"]
        assert got.input_payload == order["input_payload"]
        assert got.correlation_id == (order["correlation_id"] or task.task_id)
        assert got.status is TaskStatus.QUEUED and got.tags == [] and got.constraints == {}
        events = app.task_events(task.task_id)
        assert [(e.event_type, e.from_status, e.to_status) for e in events] == [
            ("created", None, "PENDING"), ("queued", "PENDING", "QUEUED")]
        assert events[0].payload == {"task_type": order["task_type"],
                                     "priority": order["priority"]}
        assert events[1].payload == {}
    # The same plain bulk again, plus one new order: replays and one creation.
    again = app.submit_many([*orders, {**orders[0], "idempotency_key": "new"}])
    assert [t.task_id for t in again[:-1]] == [t.task_id for t in first]
    assert all(t.replayed for t in again[:-1]) and not again[-1].replayed
    with pytest.raises(IdempotencyConflict):
        app.submit_many([{**orders[1], "input_payload": {"other": True}}])
    assert len(app.list_tasks(tenant_id="t1", limit=100)) == len(orders) + 1
    delayed = app.submit(task_type="LATER", run_after=timedelta(hours=1))
    assert delayed.status is TaskStatus.PENDING
    assert [e.event_type for e in app.task_events(delayed.task_id)] == ["created"]


def test_large_plain_bulk_round_trips_awkward_text_and_delays(app: Creep) -> None:
    """Enough plain orders for PostgreSQL's COPY path (binary rows, streamed in blocks): text,
    payloads, delays and defaults read back exactly, with their creation events."""
    awkward = ['a,b', 'quote " and ""', "back\\slash \\N", "", " ", "tab\t", "ünï©ødé ✓",
               "\\.", "line\nbreak", "cr\rlf", "😀 astral"]
    orders: list[dict[str, object]] = []
    for i in range(2100):
        text = awkward[i % len(awkward)]
        order: dict[str, object] = {
            "tenant_id": f"t{i % 2}", "env": "prod", "idempotency_key": f"k{i}-{text}",
            "task_type": f"T{text}", "correlation_id": text or None, "priority": i % 101,
            "timeout_ms": 1 + i, "input_payload": {"text": text, "i": i, "n": None},
        }
        if i % 97 == 5:
            order["run_after"] = timedelta(hours=1)
        orders.append(order)
    created = app.submit_many(orders)
    for task in created[:40] + created[-40:] + [created[i] for i in range(5, 2100, 97)]:
        assert app.get_task(task.task_id).to_dict() == task.to_dict()
        types = [e.event_type for e in app.task_events(task.task_id)]
        assert types == (["created"] if task.status is TaskStatus.PENDING
                         else ["created", "queued"])
    assert sum(t.status is TaskStatus.PENDING for t in created) == len(range(5, 2100, 97))
    again = app.submit_many(orders)
    assert [t.task_id for t in again] == [t.task_id for t in created]
    assert all(t.replayed for t in again)


def test_stored_task_equals_returned_task_for_mixed_optional_fields(app: Creep) -> None:
    """Stores insert only the columns a batch sets; the others must read back as defaults."""
    orders: list[dict[str, object]] = [
        {"task_type": "A"},
        {"task_type": "A", "tags": ["x", "y"], "description": "d", "channel": "c"},
        {"task_type": "A", "project_id": "p", "max_total_cost": "1.50", "currency": "EUR",
         "constraints": {"max_retries": 0}, "batch_id": "b1"},
        {"task_type": "A", "resource_hints": [{"sku_category": "gpu"}],
         "business_value_hint": 2, "external_ref": "ext", "task_category": "cat",
         "tenant_policies_version": "v1", "run_after": timedelta(minutes=5)},
    ]
    for batch in ([orders[0]], orders, orders[1:], [orders[0], orders[1]]):
        created = app.submit_many([dict(o) for o in batch])
        for task in created:
            stored = app.get_task(task.task_id)
            assert stored.to_dict() == task.to_dict()


def test_64_concurrent_creates_with_one_key(app: Creep) -> None:
    barrier = threading.Barrier(64)

    def create(i: int) -> tuple[str, bool]:
        barrier.wait()
        t = app.submit(tenant_id="t1", env="prod", idempotency_key="race", task_type="A",
                       input_payload={"same": True})
        return t.task_id, t.replayed

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(create, range(64)))
    assert len({task_id for task_id, _ in results}) == 1
    assert sum(1 for _, replayed in results if not replayed) == 1
    assert len(app.list_tasks(tenant_id="t1")) == 1

    def conflicting(i: int) -> str:
        try:
            app.submit(tenant_id="t1", env="prod", idempotency_key="race", task_type="A",
                       input_payload={"same": False, "i": i})
        except IdempotencyConflict:
            return "conflict"
        return "created"

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(conflicting, range(16))) == {"conflict"}


def test_validation_error_leaves_nothing_behind(app: Creep) -> None:
    with pytest.raises(ValidationError) as info:
        app.submit_many([{"task_type": "A"}, {"task_type": "A", "priority": 500}])
    assert info.value.errors == [("tasks[1].priority", "must be from 0 to 100 (got 500)")]
    assert app.list_tasks() == []


def test_chunked_submission_builds_ahead_and_answers_in_order(
    app: Creep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submission bigger than one chunk is written chunk by chunk while the next chunk's
    specs are built in another thread: the answer keeps submission order, replays and
    full-path orders included, and a bad order anywhere still leaves nothing behind."""
    monkeypatch.setattr(app_module, "SUBMIT_CHUNK", 40)
    orders: list[dict[str, object]] = [
        {"tenant_id": "t1", "env": "prod", "idempotency_key": f"c{i}", "task_type": "A",
         "priority": i % 7, "input_payload": {"i": i}}
        for i in range(150)
    ]
    orders[45] = {**orders[45], "max_total_cost": "2.50", "tags": ["full-path"]}
    with pytest.raises(ValidationError) as info:
        app.submit_many([*orders, {"task_type": "A", "priority": -1}])
    assert [name for name, _ in info.value.errors] == ["tasks[150].priority"]
    assert app.list_tasks(limit=500) == []
    first = app.submit_many(orders)
    assert [t.idempotency_key for t in first] == [o["idempotency_key"] for o in orders]
    assert not any(t.replayed for t in first) and len({t.task_id for t in first}) == 150
    assert first[45].max_total_cost == Decimal("2.50") and first[45].tags == ["full-path"]
    for task in (first[0], first[45], first[149]):
        assert app.get_task(task.task_id).to_dict() == task.to_dict()
        assert [e.event_type for e in app.task_events(task.task_id)] == ["created", "queued"]
    again = app.submit_many([*orders[100:], {**orders[0], "idempotency_key": "fresh"}])
    assert [t.task_id for t in again[:-1]] == [t.task_id for t in first[100:]]
    assert all(t.replayed for t in again[:-1]) and not again[-1].replayed
    assert len(app.list_tasks(limit=500)) == 151
    # One key in two chunks: the later order replays the earlier one.
    twice = [{**o, "idempotency_key": f"d{i}"} for i, o in enumerate(orders)]
    twice[130] = twice[3]
    made = app.submit_many(twice)
    assert made[130].task_id == made[3].task_id and made[130].replayed
    assert not any(t.replayed for i, t in enumerate(made) if i != 130)
    with pytest.raises(IdempotencyConflict):
        app.submit_many([{**o, "idempotency_key": f"e{i}"} for i, o in enumerate(orders)]
                        + [{**twice[0], "input_payload": {"other": 1}}])


def test_optimistic_versioning(app: Creep) -> None:
    t = app.submit(task_type="A", priority=10)
    updated = app.update_task(t.task_id, t.task_version, priority=90, tags=["vip"])
    assert updated.priority == 90 and updated.tags == ["vip"]
    assert updated.task_version == t.task_version + 1
    with pytest.raises(VersionConflict) as info:
        app.update_task(t.task_id, t.task_version, priority=5)
    assert info.value.actual == updated.task_version
    with pytest.raises(ValidationError, match="status: cannot be changed"):
        app.update_task(t.task_id, updated.task_version, status="SUCCESS")
    with pytest.raises(ValidationError, match="priority"):
        app.update_task(t.task_id, updated.task_version, priority=101)
    # None is no value for these (it read as "the default": priority 50), as over REST.
    for name in ("priority", "timeout_ms", "tags"):
        with pytest.raises(ValidationError, match=f"{name}: must not be null"):
            app.update_task(t.task_id, updated.task_version, **{name: None})
    assert app.get_task(t.task_id).priority == 90
    assert app.get_task(t.task_id).task_version == updated.task_version
    assert app.task_events(t.task_id)[-1].event_type == "updated"


def test_illegal_transitions_raise(app: Creep) -> None:
    @app.handler("A")
    async def ok(ctx: TaskContext) -> object:
        return 1

    t = app.submit(task_type="A")
    app.run_worker(burst=True, install_signals=False)
    with pytest.raises(IllegalTransition, match="SUCCESS -> CANCELLED"):
        app.cancel(t.task_id)
    with pytest.raises(IllegalTransition, match="SUCCESS -> QUEUED"):
        app.retry(t.task_id)
    q = app.submit(task_type="A", run_after=timedelta(hours=1))
    app.cancel(q.task_id)
    with pytest.raises(IllegalTransition, match="CANCELLED -> CANCELLED"):
        app.cancel(q.task_id)
    with pytest.raises(NotFound):
        app.cancel(str(uuid.uuid4()))


def test_tenant_scoping_hides_other_tenants(app: Creep) -> None:
    t = app.submit(tenant_id="a", task_type="A")
    with pytest.raises(NotFound):
        app.get_task(t.task_id, tenant_id="b")
    with pytest.raises(NotFound):
        app.cancel(t.task_id, tenant_id="b")
    with pytest.raises(ValidationError, match="unknown task id"):
        app.submit(tenant_id="b", task_type="A", depends_on=[t.task_id])


def test_claims_by_priority_then_age_and_only_known_types(app: Creep, clock: FrozenClock) -> None:
    order: list[int] = []

    @app.handler("A")
    async def record(ctx: TaskContext) -> object:
        order.append(ctx.task.input_payload["p"])
        return None

    for p in (10, 90, 50, 90, 0):
        app.submit(task_type="A", priority=p, input_payload={"p": p})
        clock.advance(1)
    other = app.submit(task_type="NOBODY", priority=100)
    app.run_worker(burst=True, concurrency=1, install_signals=False)
    assert order == [90, 90, 50, 10, 0]
    assert app.get_task(other.task_id).status is TaskStatus.QUEUED


def test_started_event_names_the_worker(app: Creep) -> None:
    task = app.submit(task_type="A")
    claimed = app.store.task_claim("worker-7", ["A"], 5, app.clock.now(), 60)
    assert [c.task.task_id for c in claimed] == [task.task_id]
    started = [e for e in app.task_events(task.task_id) if e.event_type == "started"]
    assert [(e.from_status, e.to_status, e.payload) for e in started] == [
        ("QUEUED", "RUNNING", {"worker_id": "worker-7"})]


def test_handler_outcomes(app: Creep, clock: FrozenClock) -> None:
    @app.handler("OK")
    def sync_ok(ctx: object) -> object:
        return {"sync": True}

    @app.handler("FAIL")
    async def fail(ctx: TaskContext) -> object:
        raise Fail(code="HARD_FAIL", message="card declined")

    @app.handler("BAD_RESULT")
    async def bad_result(ctx: TaskContext) -> object:
        return object()

    ok = app.submit(task_type="OK")
    failed = app.submit(task_type="FAIL")
    bad = app.submit(task_type="BAD_RESULT")
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(ok.task_id).result_payload == {"sync": True}
    f = app.get_task(failed.task_id)
    assert (f.status, f.result_code, f.result_message) == ("FAILED", "HARD_FAIL", "card declined")
    b = app.get_task(bad.task_id)
    assert b.status is TaskStatus.QUEUED and b.result_code == "RETRYABLE"
    assert b.last_error is not None and "not JSON-serialisable" in b.last_error


def test_retry_with_backoff_then_dead_letter(app: Creep, clock: FrozenClock) -> None:
    @app.handler("FLAKY")
    async def flaky(ctx: TaskContext) -> object:
        raise RuntimeError(f"boom {ctx.attempt}")

    t = app.submit(task_type="FLAKY", constraints={"max_retries": 2})
    delays = []
    for attempt in (1, 2):
        app.run_worker(burst=True, install_signals=False)
        current = app.get_task(t.task_id)
        assert current.status is TaskStatus.QUEUED and current.attempt == attempt
        assert current.result_code == "RETRYABLE"
        assert current.result_message == f"RuntimeError: boom {attempt}"
        delay = (current.run_after - clock.now()).total_seconds()
        step = 10 * 2 ** (attempt - 1)
        assert step / 2 <= delay <= step
        delays.append(delay)
        # Not runnable before its backoff ends.
        app.run_worker(burst=True, install_signals=False)
        assert app.get_task(t.task_id).attempt == attempt
        clock.advance(delay + 0.001)
    app.run_worker(burst=True, install_signals=False)
    dead = app.get_task(t.task_id)
    assert dead.status is TaskStatus.DEAD_LETTER and dead.attempt == 3
    assert dead.result_code == "MAX_RETRIES_EXCEEDED"
    kinds = [e.event_type for e in app.task_events(t.task_id)]
    assert kinds.count("retrying") == 2 and kinds[-1] == "dead_lettered"
    # An operator retry grants a fresh set of retries.
    again = app.retry(t.task_id)
    assert again.status is TaskStatus.QUEUED and again.max_attempts == 6


def test_explicit_retry_delay(app: Creep, clock: FrozenClock) -> None:
    @app.handler("LATER")
    async def later(ctx: TaskContext) -> object:
        if ctx.attempt == 1:
            raise Retry(delay=30, message="rate limited")
        return "done"

    t = app.submit(task_type="LATER")
    app.run_worker(burst=True, install_signals=False)
    current = app.get_task(t.task_id)
    assert current.run_after == clock.now() + timedelta(seconds=30)
    assert current.result_message == "rate limited"
    clock.advance(30)
    app.run_worker(burst=True, install_signals=False)
    assert app.get_task(t.task_id).status is TaskStatus.SUCCESS


def test_timeout_cancels_handler(db_url: str) -> None:
    app = Creep(db_url)
    stopped = threading.Event()

    @app.handler("SLOW")
    async def slow(ctx: TaskContext) -> object:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return "never"

    t = app.submit(task_type="SLOW", timeout_ms=200)
    started = time.monotonic()
    app.run_worker(burst=True, install_signals=False)
    assert time.monotonic() - started < 10
    done = app.get_task(t.task_id)
    assert done.status is TaskStatus.TIMEOUT and done.result_code == "TIMEOUT"
    assert stopped.is_set()
    assert app.task_events(t.task_id)[-1].event_type == "timed_out"
    app.close()


def test_cancel_queued_and_running(db_url: str) -> None:
    app = Creep(db_url)
    started = threading.Event()
    saw_flag: list[bool] = []

    @app.handler("LOOP")
    async def loop(ctx: TaskContext) -> object:
        started.set()
        try:
            await asyncio.Event().wait()  # runs until cancelled
        finally:
            saw_flag.append(ctx.cancelled)

    queued = app.submit(task_type="NOBODY")
    cancelled = app.cancel(queued.task_id, reason="not needed")
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.result_message == "not needed"

    running = app.submit(task_type="LOOP")
    worker = app.worker(concurrency=2)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    try:
        assert started.wait(10)
        asked = app.cancel(running.task_id)
        assert asked.status is TaskStatus.RUNNING and asked.cancel_requested
        with pytest.raises(ConflictError):
            app.cancel(running.task_id)
        deadline = time.monotonic() + 10
        while app.get_task(running.task_id).status is TaskStatus.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        worker.request_stop()
        thread.join(10)
    final = app.get_task(running.task_id)
    assert final.status is TaskStatus.CANCELLED and saw_flag == [True]
    kinds = [e.event_type for e in app.task_events(running.task_id)]
    assert kinds[-2:] == ["cancel_requested", "cancelled"]
    app.close()


def test_sync_handler_sees_cancellation_at_heartbeat(db_url: str) -> None:
    app = Creep(db_url)
    started = threading.Event()

    @app.handler("SYNC_LOOP")
    def sync_loop(ctx: object) -> object:
        from creep import SyncTaskContext

        assert isinstance(ctx, SyncTaskContext)
        started.set()
        while True:
            time.sleep(0.01)
            ctx.heartbeat()

    t = app.submit(task_type="SYNC_LOOP")
    worker = app.worker()
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    try:
        assert started.wait(10)
        app.cancel(t.task_id)
        deadline = time.monotonic() + 10
        while app.get_task(t.task_id).status is TaskStatus.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        worker.request_stop()
        thread.join(10)
    assert app.get_task(t.task_id).status is TaskStatus.CANCELLED
    app.close()


def test_progress_is_recorded(app: Creep) -> None:
    @app.handler("STEPS")
    async def steps(ctx: TaskContext) -> object:
        await ctx.progress(40, "fetched")
        await ctx.progress(80, "parsed")
        with pytest.raises(ValidationError):
            await ctx.progress(101)
        return "ok"

    t = app.submit(task_type="STEPS")
    app.run_worker(burst=True, install_signals=False)
    progress = [e.payload for e in app.task_events(t.task_id) if e.event_type == "progress"]
    assert progress == [{"progress": 40, "message": "fetched"},
                        {"progress": 80, "message": "parsed"}]
    assert app.get_task(t.task_id).status is TaskStatus.SUCCESS


def test_delayed_task_waits_pending(app: Creep, clock: FrozenClock) -> None:
    ran: list[str] = []

    @app.handler("LATER")
    async def later(ctx: TaskContext) -> object:
        ran.append(ctx.task_id)
        return None

    t = app.submit(task_type="LATER", run_after=clock.now() + timedelta(minutes=5))
    assert t.status is TaskStatus.PENDING
    app.run_worker(burst=True, install_signals=False)
    assert ran == []
    clock.advance(minutes=5)
    app.run_worker(burst=True, install_signals=False)
    assert ran == [t.task_id]
    assert [e.event_type for e in app.task_events(t.task_id)] == [
        "created", "queued", "started", "succeeded"]


def test_depends_on(app: Creep) -> None:
    ran: list[str] = []

    @app.handler("STEP")
    async def step(ctx: TaskContext) -> object:
        ran.append(ctx.task.input_payload["name"])
        if ctx.task.input_payload.get("fail"):
            raise Fail(message="broken")
        return None

    a = app.submit(task_type="STEP", input_payload={"name": "a"})
    b = app.submit(task_type="STEP", input_payload={"name": "b"}, depends_on=[a.task_id])
    c_id, d_id = str(uuid.uuid4()), str(uuid.uuid4())
    c, _d = app.submit_many([
        {"task_id": c_id, "task_type": "STEP", "input_payload": {"name": "c"},
         "depends_on": [a.task_id, b.task_id], "priority": 100},
        {"task_id": d_id, "task_type": "STEP", "input_payload": {"name": "d", "fail": True},
         "depends_on": [c_id]},
    ])
    e = app.submit(task_type="STEP", input_payload={"name": "e"}, depends_on=[d_id])
    assert b.status is TaskStatus.PENDING and c.status is TaskStatus.PENDING
    app.run_worker(burst=True, install_signals=False)
    assert ran == ["a", "b", "c", "d"]
    dependant = app.get_task(e.task_id)
    assert dependant.status is TaskStatus.CANCELLED
    assert dependant.result_code == "DEPENDENCY_FAILED"
    # A task whose dependency already failed is cancelled at birth.
    late = app.submit(task_type="STEP", depends_on=[d_id])
    assert late.status is TaskStatus.CANCELLED and late.result_code == "DEPENDENCY_FAILED"
    # A dependency that already succeeded does not hold anything up.
    ready = app.submit(task_type="STEP", depends_on=[a.task_id], input_payload={"name": "f"})
    assert ready.status is TaskStatus.QUEUED


def test_dependency_cycles_and_unknown_ids_rejected(app: Creep) -> None:
    x, y, z = (str(uuid.uuid4()) for _ in range(3))
    with pytest.raises(ValidationError, match="cycle"):
        app.submit_many([
            {"task_id": x, "task_type": "A", "depends_on": [y]},
            {"task_id": y, "task_type": "A", "depends_on": [z]},
            {"task_id": z, "task_type": "A", "depends_on": [x]},
        ])
    with pytest.raises(ValidationError, match="itself"):
        app.submit(task_id=x, task_type="A", depends_on=[x])
    with pytest.raises(ValidationError, match="unknown task id"):
        app.submit(task_type="A", depends_on=[str(uuid.uuid4())])
    assert app.list_tasks() == []


def test_expired_claim_is_rescued_counting_the_attempt(app: Creep, clock: FrozenClock) -> None:
    @app.handler("A")
    async def ok(ctx: TaskContext) -> object:
        return ctx.attempt

    t = app.submit(task_type="A", timeout_ms=600_000)
    # A worker claims the task and dies without a word.
    claimed = app.store.task_claim("dead-worker", ["A"], 10, clock.now(), 30)
    assert [c.task.task_id for c in claimed] == [t.task_id]
    assert app.maintain().rescued == 0
    clock.advance(31)
    report = app.maintain()
    assert report.rescued == 1
    rescued = app.get_task(t.task_id)
    assert rescued.status is TaskStatus.QUEUED and rescued.attempt == 1
    assert "claim expired" in (rescued.last_error or "")
    clock.advance(3600)
    app.run_worker(burst=True, install_signals=False)
    done = app.get_task(t.task_id)
    assert done.status is TaskStatus.SUCCESS and done.attempt == 2
    assert done.result_payload == 2


def test_control_plane_times_out_vanished_worker(app: Creep, clock: FrozenClock) -> None:
    t = app.submit(task_type="A", timeout_ms=10_000)
    app.store.task_claim("vanished", ["A"], 10, clock.now(), 300)
    clock.advance(10 + 5 + 1)  # timeout plus the grace period
    report = app.maintain(timeout_grace=5)
    assert report.timed_out == 1
    assert app.get_task(t.task_id).status is TaskStatus.TIMEOUT


def test_stale_claim_cannot_complete(app: Creep, clock: FrozenClock) -> None:
    from creep.domain.outcomes import Outcome, OutcomeKind, resolve
    from creep.ports import Completion

    t = app.submit(task_type="A")
    old = app.store.task_claim("w1", ["A"], 1, clock.now(), 10)[0]
    clock.advance(11)
    app.maintain()
    clock.advance(3600)
    new = app.store.task_claim("w2", ["A"], 1, clock.now(), 10)[0]
    outcome = Outcome(t.task_id, old.claim_token, OutcomeKind.SUCCEEDED, result="late")
    res = resolve(outcome, attempt=1, max_attempts=4, now=clock.now(), backoff=Backoff())
    assert app.store.task_complete_many([Completion(outcome, res)], clock.now()) == []
    hb = app.store.task_heartbeat("w1", [(t.task_id, old.claim_token)], clock.now(), 10)
    assert hb.lost == [t.task_id]
    assert app.get_task(t.task_id).claimed_by == "w2" and new.task.attempt == 2


def test_event_cursor_streams_every_event_once(app: Creep) -> None:
    @app.handler("A")
    async def ok(ctx: TaskContext) -> object:
        return None

    tasks = app.submit_many([{"task_type": "A"} for _ in range(30)])
    app.run_worker(burst=True, install_signals=False)
    seen = []
    cursor = None
    # On PostgreSQL the cursor stops before any transaction still open anywhere in the cluster
    # (so it never skips a late commit); such a transaction can delay, never drop, an event.
    deadline = time.monotonic() + 20
    while len(seen) < 30 * 4 and time.monotonic() < deadline:
        page = app.events_after(cursor, limit=7)
        if not page:
            time.sleep(0.05)
            continue
        seen.extend(page)
        cursor = page[-1].cursor
    assert len(seen) == 30 * 4
    assert len({e.event_id for e in seen}) == len(seen)
    per_task = [e.event_type for e in seen if e.task_id == tasks[0].task_id]
    assert per_task == ["created", "queued", "started", "succeeded"]
    assert app.events_after(cursor) == []
    one = app.events_after(None, task_id=tasks[3].task_id)
    assert [e.task_id for e in one] == [tasks[3].task_id] * 4


def test_list_by_status_finds_each_status_exactly(app: Creep, clock: FrozenClock) -> None:
    """Listing by an active status goes through task_queue on PostgreSQL: it must still list
    exactly the tasks in that status, whatever else is stored."""
    running = app.submit(task_type="L", input_payload={}, priority=90)
    queued = app.submit(task_type="L", input_payload={})
    pending = app.submit(task_type="L", input_payload={},
                         run_after=(clock.now() + timedelta(hours=1)).isoformat())
    cancelled = app.submit(task_type="L", input_payload={}, priority=10)
    app.cancel(cancelled.task_id)  # QUEUED -> CANCELLED at once
    [claimed] = app.store.task_claim("w", ["L"], 1, clock.now(), 60)
    assert claimed.task_id == running.task_id

    def ids(status: str) -> list[str]:
        return [t.task_id for t in app.list_tasks(status=status, task_type="L")]

    assert ids("RUNNING") == [running.task_id]
    assert ids("QUEUED") == [queued.task_id]
    assert ids("PENDING") == [pending.task_id]
    assert ids("CANCELLED") == [cancelled.task_id]
    assert ids("SUCCESS") == []


@pytest.mark.parametrize(("fields", "field", "rule"), [
    ({"description": "a\x00b"}, "description", "NUL"),
    ({"external_ref": "x\ud800"}, "external_ref", "Unicode"),
    ({"tags": ["ok", "b\x00"]}, "tags[1]", "NUL"),
    ({"input_payload": {"k": ["x", "a\x00"]}}, "input_payload.k[1]", "NUL"),
    ({"constraints": {"note": "a\x00"}}, "constraints.note", "NUL"),
])
def test_unstorable_text_is_a_validation_error_naming_the_field(
    app: Creep, fields: dict[str, object], field: str, rule: str,
) -> None:
    """NUL (PostgreSQL stores none) and lone surrogates (no database does) are refused the
    same way on every backend, one task or many, and nothing is written."""
    for submit in (lambda f: app.submit(**f), lambda f: app.submit_many([f])):
        with pytest.raises(ValidationError) as caught:
            submit({"tenant_id": "t", "env": "e", "task_type": "X", **fields})
        assert any(e[0].endswith(field) and rule in e[1] for e in caught.value.errors), \
            caught.value.errors
    assert app.list_tasks() == []
    # A backslash before "u0000" is ordinary text, not a NUL.
    ok = app.submit(tenant_id="t", env="e", task_type="X",
                    input_payload={"k": "\\u0000"}, description="\\u0000")
    got = app.get_task(ok.task_id)
    assert got.input_payload == {"k": "\\u0000"} and got.description == "\\u0000"


def test_sets_and_second_offsets_are_stored_as_given(app: Creep) -> None:
    """Sets in constraints are stored as lists and a time zone whose offset has seconds (a
    historical zone's, e.g. Amsterdam's +00:19:32) keeps them, one task or many."""
    from datetime import datetime, timezone

    odd = timezone(timedelta(hours=1, minutes=19, seconds=32))
    when = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=odd)
    for submit in (lambda f: app.submit(**f), lambda f: app.submit_many([f, {**f, "idempotency_key": "other"}])[0]):
        task = submit({"tenant_id": "t", "env": "e", "task_type": "X", "idempotency_key": str(uuid.uuid4()),
                       "constraints": {"s": {"a"}, "f": frozenset({"b"})}, "run_after": when})
        stored = app.get_task(task.task_id)
        assert stored.constraints == {"s": ["a"], "f": ["b"]}
        assert stored.run_after == when


def test_unstorable_text_inside_a_set_is_refused(app: Creep) -> None:
    with pytest.raises(ValidationError) as caught:
        app.submit(tenant_id="t", env="e", task_type="X", input_payload={"s": {"a\x00"}})
    assert "NUL" in str(caught.value)


def test_a_failed_chunk_stops_the_chunks_after_it(app: Creep) -> None:
    """A bulk submission whose first chunk holds a conflicting key: the error is raised and at
    most the one chunk written beside it (PostgreSQL) stays; no later chunk is written."""
    from creep.app import SUBMIT_CHUNK
    from creep.domain.errors import IdempotencyConflict

    app.submit(tenant_id="t", env="e", task_type="X", idempotency_key="taken", priority=1)
    orders = [{"tenant_id": "t", "env": "e", "task_type": "X", "idempotency_key": f"k{i}"}
              for i in range(SUBMIT_CHUNK * 5)]
    orders[10] = {"tenant_id": "t", "env": "e", "task_type": "X", "idempotency_key": "taken",
                  "priority": 2}
    with pytest.raises(IdempotencyConflict):
        app.submit_many(orders)
    assert len(app.list_tasks(limit=SUBMIT_CHUNK * 5)) <= 1 + SUBMIT_CHUNK
