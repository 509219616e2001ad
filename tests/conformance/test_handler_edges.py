"""How a worker ends a handler's run in the awkward cases: a CancelledError the handler raises
itself, a handler that raises while being stopped, a sync handler that outlives its timeout,
a handler calling sys.exit() or raising another BaseException, a Retry or Fail the worker
cannot read as is, and progress text no database could store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from creep import Backoff, Creep, Fail, FrozenClock, Retry, TaskContext, TaskStatus


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)
    yield creep_app
    creep_app.close()


def _burst(app: Creep, **options: Any) -> dict[str, int]:
    worker = app.worker(**options)
    return asyncio.run(asyncio.wait_for(worker.run(burst=True), timeout=60))


def test_a_cancelled_error_raised_by_the_handler_itself_is_its_error(app: Creep) -> None:
    @app.handler("T")
    async def awaits_a_cancelled_subtask(ctx: TaskContext) -> object:
        sub = asyncio.create_task(asyncio.sleep(10))
        sub.cancel()
        await sub  # the sub-task's CancelledError, not the run's
        return "unreachable"

    t = app.submit(task_type="T", constraints={"max_retries": 0})
    stats = _burst(app)
    after = app.get_task(t.task_id)
    assert (after.status, after.result_code) == (TaskStatus.DEAD_LETTER, "MAX_RETRIES_EXCEEDED")
    assert "CancelledError" in (after.result_message or "")
    assert stats["completed"] == 1 and stats["lost"] == 0


def test_a_sync_handler_past_its_timeout_keeps_its_slot_until_it_returns(app: Creep) -> None:
    ran: list[str] = []
    release = threading.Event()
    active, peak, lock = [0], [0], threading.Lock()

    @app.handler("HANG")
    def hang(ctx: object) -> object:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            release.wait(3)  # deaf to cancellation, as a blocking call is
        finally:
            with lock:
                active[0] -= 1
        return "late"

    @app.handler("QUICK")
    def quick(ctx: object) -> object:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            active[0] -= 1
        ran.append("quick")
        return "ok"

    slow = app.submit(task_type="HANG", priority=90, timeout_ms=200)
    fast = app.submit(task_type="QUICK", priority=10, timeout_ms=1000)
    try:
        _burst(app, concurrency=1)
    finally:
        release.set()
    assert app.get_task(slow.task_id).status is TaskStatus.TIMEOUT
    # Claimed only once the timed-out handler's thread returned: it ran, within its time.
    assert (app.get_task(fast.task_id).status, ran) == (TaskStatus.SUCCESS, ["quick"])
    assert peak[0] == 1


def test_a_handler_raising_while_it_times_out_ends_timed_out(app: Creep) -> None:
    @app.handler("T")
    async def cleanup_raises(ctx: TaskContext) -> object:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise RuntimeError("connection closed while cancelling") from None
        return None

    t = app.submit(task_type="T", timeout_ms=200, constraints={"max_retries": 0})
    _burst(app)
    assert app.get_task(t.task_id).status is TaskStatus.TIMEOUT


def test_a_handler_raising_while_the_worker_shuts_down_is_requeued_uncharged(
    app: Creep,
) -> None:
    started = threading.Event()

    @app.handler("T")
    async def cleanup_raises(ctx: TaskContext) -> object:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise RuntimeError("connection closed while cancelling") from None
        return None

    t = app.submit(task_type="T")
    worker = app.worker(shutdown_grace=0.1)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    try:
        assert started.wait(20)
    finally:
        worker.request_stop()
        thread.join(20)
    after = app.get_task(t.task_id)
    kinds = [e.event_type for e in app.task_events(t.task_id)]
    assert (after.status, after.attempt, kinds[-1]) == (TaskStatus.QUEUED, 0, "requeued")


def test_a_handler_calling_sys_exit_fails_its_task_and_the_worker_goes_on(app: Creep) -> None:
    @app.handler("EXITS")
    def exits(ctx: object) -> object:
        raise SystemExit("handler called sys.exit()")

    @app.handler("OK")
    async def ok(ctx: TaskContext) -> object:
        await asyncio.sleep(0.2)
        return "ok"

    bad = app.submit(task_type="EXITS", priority=90, constraints={"max_retries": 0})
    others = [app.submit(task_type="OK").task_id for _ in range(3)]
    _burst(app, concurrency=4)
    assert [app.get_task(i).status for i in others] == [TaskStatus.SUCCESS] * 3
    after = app.get_task(bad.task_id)
    assert after.status is TaskStatus.DEAD_LETTER and "SystemExit" in (after.result_message or "")


class _Abort(BaseException):
    """A BaseException of a library's own (pytest's fail(), gevent's GreenletExit, ...)."""


def test_a_handler_raising_another_base_exception_fails_its_task(app: Creep) -> None:
    @app.handler("ASYNC")
    async def closes(ctx: TaskContext) -> object:
        raise GeneratorExit("closed")

    @app.handler("SYNC")
    def aborts(ctx: object) -> object:
        raise _Abort("aborted")

    tasks = [app.submit(task_type=kind, constraints={"max_retries": 0})
             for kind in ("ASYNC", "SYNC")]
    stats = _burst(app, concurrency=2)
    after = [app.get_task(t.task_id) for t in tasks]
    assert [t.status for t in after] == [TaskStatus.DEAD_LETTER] * 2
    assert "GeneratorExit: closed" in (after[0].result_message or "")
    assert "_Abort: aborted" in (after[1].result_message or "")
    assert stats["completed"] == 2


def test_a_sync_handler_raising_keyboard_interrupt_fails_its_task_alone(app: Creep) -> None:
    """Raised in a pool thread it cannot be a Ctrl-C (signals reach the main thread only): it
    was re-raised into the event loop, which stopped the worker at once and left every task
    it ran RUNNING, to be charged an attempt once its claim expired."""
    @app.handler("INTERRUPTS")
    def interrupts(ctx: object) -> object:
        raise KeyboardInterrupt

    @app.handler("OK")
    async def ok(ctx: TaskContext) -> object:
        await asyncio.sleep(0.2)
        return "ok"

    bad = app.submit(task_type="INTERRUPTS", priority=90, constraints={"max_retries": 0})
    good = app.submit(task_type="OK")
    try:
        _burst(app, concurrency=2)
    except KeyboardInterrupt:
        pytest.fail("the handler's KeyboardInterrupt stopped the worker")
    assert app.get_task(good.task_id).status is TaskStatus.SUCCESS
    after = app.get_task(bad.task_id)
    assert after.status is TaskStatus.DEAD_LETTER
    assert "KeyboardInterrupt" in (after.result_message or "")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text for this one")


def test_a_retry_or_fail_the_worker_cannot_read_is_the_tasks_error(db_url: str) -> None:
    """Asked for on the first attempt; the second succeeds. Each first attempt ends as its
    task's error (or, for a delay given as a Decimal, as asked), none left RUNNING."""
    app = Creep(db_url, clock=FrozenClock(), backoff=Backoff(base_seconds=0))
    first: dict[str, object] = {
        "DELAY_TIMEDELTA": Retry(delay=timedelta(seconds=5)),  # type: ignore[arg-type]
        "DELAY_TEXT": Retry(delay="5"),  # type: ignore[arg-type]
        "DELAY_DECIMAL": Retry(delay=Decimal("0")),  # type: ignore[arg-type]
        "MESSAGE_NUMBER": Retry(message=123),  # type: ignore[arg-type]
        "FAIL_MESSAGE_NUMBER": Fail(message=123),  # type: ignore[arg-type]
        "UNPRINTABLE": _Unprintable(),
    }

    async def handler(ctx: TaskContext) -> object:
        if ctx.attempt == 1:
            raise first[ctx.task.task_type]  # type: ignore[misc]
        return "ok"

    for kind in first:
        app.handler(kind)(handler)
    try:
        tasks = {kind: app.submit(task_type=kind, constraints={"max_retries": 1})
                 for kind in first}
        _burst(app, concurrency=len(first))
        after = {kind: app.get_task(t.task_id) for kind, t in tasks.items()}
        assert {kind: (t.status, t.attempt) for kind, t in after.items()} == {
            **{kind: (TaskStatus.SUCCESS, 2) for kind in first},
            "FAIL_MESSAGE_NUMBER": (TaskStatus.FAILED, 1),
        }
        assert after["FAIL_MESSAGE_NUMBER"].result_message == "123"
        assert "TypeError" in (after["DELAY_TIMEDELTA"].last_error or "")
        assert "TypeError" in (after["DELAY_TEXT"].last_error or "")
    finally:
        app.close()


def test_progress_text_with_nul_and_lone_surrogates_is_stored_escaped(app: Creep) -> None:
    @app.handler("T")
    async def progress(ctx: TaskContext) -> object:
        await ctx.progress(10, "a\x00b")
        await ctx.progress(20, "c\ud800d")
        return "ok"

    t = app.submit(task_type="T", constraints={"max_retries": 0})
    _burst(app)
    after = app.get_task(t.task_id)
    assert after.status is TaskStatus.SUCCESS, after.result_message
    messages = [e.payload.get("message") for e in app.task_events(t.task_id)
                if e.event_type == "progress"]
    assert messages == ["a\\x00b", "c\\ud800d"]


# -- async handlers the worker must recognise ----------------------------------------------------

class _AsyncCallable:
    """An object whose __call__ is async: a coroutine function in all but name."""

    async def __call__(self, ctx: TaskContext) -> object:
        await ctx.progress(50)
        await asyncio.sleep(0)
        return {"via": "object"}


def _sync_wrapper(fn: Any) -> Any:
    """A decorator that returns the coroutine its async function makes (no functools.wraps,
    so nothing tells it is async but what it returns)."""
    def wrapper(ctx: Any) -> Any:
        return fn(ctx)
    return wrapper


def test_async_handlers_in_disguise_are_awaited(app: Creep) -> None:
    import functools

    app.handler("OBJECT")(_AsyncCallable())

    async def inner(ctx: Any) -> object:
        await ctx.heartbeat()
        await ctx.progress(20, "half")  # the context works from the coroutine
        await asyncio.sleep(0)
        return {"via": "wrapped"}

    app.handler("WRAPPED")(_sync_wrapper(inner))

    @functools.wraps(inner)
    def wraps(ctx: Any) -> Any:
        return inner(ctx)

    app.handler("WRAPS")(wraps)
    app.handler("PARTIAL")(functools.partial(_AsyncCallable()))
    tasks = {name: app.submit(task_type=name, constraints={"max_retries": 0})
             for name in ("OBJECT", "WRAPPED", "WRAPS", "PARTIAL")}
    stats = _burst(app)
    for name, t in tasks.items():
        after = app.get_task(t.task_id)
        assert after.status is TaskStatus.SUCCESS, (name, after.result_message)
    assert app.get_task(tasks["OBJECT"].task_id).result_payload == {"via": "object"}
    assert app.get_task(tasks["WRAPPED"].task_id).result_payload == {"via": "wrapped"}
    progress = [e.payload for e in app.task_events(tasks["WRAPPED"].task_id)
                if e.event_type == "progress"]
    assert progress and progress[0].get("progress", progress[0].get("percent")) == 20, progress
    assert stats["completed"] == 4
