"""Edges of a worker's life: stopping with every slot busy, exiting past a sync handler that
outlives the grace, being cancelled (while running tasks, while claiming), burst mode after
promotions, a claim lost before its deadline, a retry delay past the last storable instant,
a bad log level."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from creep import Creep, FrozenClock, TaskContext, TaskStatus
from creep.domain.outcomes import Outcome, OutcomeKind, resolve
from creep.ports import Completion


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)
    yield creep_app
    creep_app.close()


# -- graceful shutdown ---------------------------------------------------------------------------

_WORKER_APP = textwrap.dedent('''
    import asyncio, os, time
    from creep import Creep

    app = Creep()

    def _started(ctx):
        with open(os.environ["LIFECYCLE_MARK"], "a") as f:
            f.write(ctx.task_id + "\\n")

    @app.handler("ASYNC_SLEEP")
    async def async_sleep(ctx):
        _started(ctx)
        await asyncio.sleep(float(ctx.task.input_payload["seconds"]))
        return "done"

    @app.handler("SYNC_SLEEP")
    def sync_sleep(ctx):
        _started(ctx)
        time.sleep(float(ctx.task.input_payload["seconds"]))
        return "done"

    @app.handler("STUBBORN")
    async def stubborn(ctx):
        # Ignores its cancellation until `seconds` have passed, then returns.
        _started(ctx)
        with open(os.environ["LIFECYCLE_MARK"] + ".token", "w") as f:
            f.write(ctx.claim_token)
        end = time.monotonic() + float(ctx.task.input_payload["seconds"])
        while (left := end - time.monotonic()) > 0:
            try:
                await asyncio.sleep(left)
            except asyncio.CancelledError:
                pass
        return "done late"
''')


def _start_cli_worker(tmp_path: Path, db_url: str, *args: str) -> tuple[subprocess.Popen[str], Path]:
    (tmp_path / "lifecycle_app.py").write_text(_WORKER_APP)
    mark = tmp_path / "started.txt"
    env = dict(os.environ, CREEP_DATABASE_URL=db_url, LIFECYCLE_MARK=str(mark))
    with open(tmp_path / "worker.log", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "creep.cli", "worker", "--app", "lifecycle_app:app",
             *args], cwd=tmp_path, env=env, text=True, stdout=out, stderr=subprocess.STDOUT,
        )
    return proc, mark


def _wait_started(proc: subprocess.Popen[str], mark: Path, count: int = 1) -> None:
    deadline = time.monotonic() + 20
    while not (mark.exists() and len(mark.read_text().split()) >= count):
        assert proc.poll() is None, (mark.parent / "worker.log").read_text()
        assert time.monotonic() < deadline, "the worker never started the handler"
        time.sleep(0.05)


def _sigterm_and_wait(proc: subprocess.Popen[str], within: float) -> int | None:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(within)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_is_ignored_while_every_slot_is_busy(app: Creep, db_url: str, tmp_path: Path) -> None:
    """README "Workers": SIGTERM -> let running tasks finish for --shutdown-grace seconds, give
    the rest back to the queue uncharged, exit 0. A worker whose slots are all taken waits
    for a slot to free before it even looks at the stop request, so the grace never applies."""
    t = app.submit(task_type="ASYNC_SLEEP", input_payload={"seconds": 40})
    proc, mark = _start_cli_worker(tmp_path, db_url, "--concurrency", "1", "--shutdown-grace", "1")
    _wait_started(proc, mark)
    rc = _sigterm_and_wait(proc, within=12)
    assert rc == 0, "creep worker did not stop within grace + 11 s of SIGTERM"
    after = app.get_task(t.task_id)
    assert (after.status, after.attempt) == (TaskStatus.QUEUED, 0)
    assert [e.event_type for e in app.task_events(t.task_id)][-1] == "requeued"


def test_request_stop_waits_for_a_slot_instead_of_the_grace(app: Creep) -> None:
    """The same through the Python API: Worker.request_stop() on a full worker."""
    started = threading.Event()

    @app.handler("LONG")
    async def long(ctx: TaskContext) -> object:
        started.set()
        await asyncio.sleep(20)
        return "done"

    t = app.submit(task_type="LONG")
    worker = app.worker(concurrency=1, shutdown_grace=0.2)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    assert started.wait(20)
    t0 = time.monotonic()
    worker.request_stop()
    thread.join(30)
    took = time.monotonic() - t0
    assert took < 8, f"stop took {took:.1f} s with shutdown_grace=0.2"
    after = app.get_task(t.task_id)
    assert (after.status, after.attempt) == (TaskStatus.QUEUED, 0)


def test_sigterm_with_a_sync_handler_never_exits_after_the_grace(
    app: Creep, db_url: str, tmp_path: Path
) -> None:
    """A sync handler that does not return: the worker requeues its task after the grace and
    logs 'worker stopped', but the process stays alive until the handler's thread returns
    (ThreadPoolExecutor threads are joined at interpreter exit), so `creep worker` does not
    exit 0 after --shutdown-grace as documented."""
    t = app.submit(task_type="SYNC_SLEEP", input_payload={"seconds": 40})
    proc, mark = _start_cli_worker(tmp_path, db_url, "--concurrency", "4", "--shutdown-grace", "1")
    _wait_started(proc, mark)
    rc = _sigterm_and_wait(proc, within=12)
    after = app.get_task(t.task_id)
    assert (after.status, after.attempt) == (TaskStatus.QUEUED, 0)  # given back: that part works
    assert rc == 0, "creep worker still running 12 s after SIGTERM with --shutdown-grace 1"


def test_sigterm_requeues_a_task_whose_handler_ignores_cancellation_within_a_second_of_the_grace(
    app: Creep, db_url: str, tmp_path: Path
) -> None:
    """After its grace a stopping worker waited up to 5 s for the handlers it cancelled before
    writing their requeue, but `creep up` kills a worker 2 s after its grace: an async handler
    ignoring its cancellation left its task RUNNING, charged an attempt once the claim expired.
    The requeue is now written about 1 s after the grace, whatever the handler does, and what
    the handler does later cannot overwrite it (its claim token is no longer the task's)."""
    t = app.submit(task_type="STUBBORN", input_payload={"seconds": 10})
    proc, mark = _start_cli_worker(tmp_path, db_url, "--concurrency", "4", "--shutdown-grace", "1")
    try:
        _wait_started(proc, mark)
        token = Path(f"{mark}.token").read_text()
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        while app.get_task(t.task_id).status is not TaskStatus.QUEUED:
            # creep up kills a worker 2 s after its grace.
            assert time.monotonic() - sent < 1 + 1.75, (
                "the task was not given back within the grace + 1.75 s: "
                + (tmp_path / "worker.log").read_text())
            time.sleep(0.02)
        after = app.get_task(t.task_id)
        assert after.attempt == 0  # not charged
        assert [e.event_type for e in app.task_events(t.task_id)][-1] == "requeued"
        # The run's late completion is refused by its claim token.
        outcome = Outcome(t.task_id, token, OutcomeKind.SUCCEEDED, result="done late",
                          result_json=b'"done late"')
        late = Completion(outcome, resolve(outcome, attempt=1, max_attempts=4,
                                           now=app.clock.now(), backoff=app.backoff))
        assert app.store.task_complete_many([late], app.clock.now()) == []
        # The process exits (0) about a second later without waiting out the handler's 10 s
        # (asyncio.run would wait for it), and writes nothing more.
        assert proc.wait(8) == 0
        assert time.monotonic() - sent < 1 + 1 + 4
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = app.get_task(t.task_id)
    assert (after.status, after.attempt) == (TaskStatus.QUEUED, 0)
    assert [e.event_type for e in app.task_events(t.task_id)][-1] == "requeued"


# -- cancelled from outside ------------------------------------------------------------------------
# asyncio.run cancels its main task on Ctrl-C (run_worker(install_signals=False), creep demo),
# as do a TaskGroup whose other task failed and wait_for: worker.run() is cancelled.


def test_a_cancelled_worker_gives_its_running_tasks_back_uncharged(app: Creep) -> None:
    """The runs were abandoned RUNNING: once their claims expired each was charged an
    attempt (on its last one dead-lettered WORKER_LOST) though its handler never failed."""
    started = asyncio.Event()

    @app.handler("LONG")
    async def long(ctx: TaskContext) -> object:
        started.set()
        await asyncio.sleep(30)
        return "done"

    t = app.submit(task_type="LONG", constraints={"max_retries": 0})

    async def main() -> None:
        run = asyncio.create_task(app.worker(maintenance=False).run())
        await started.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(asyncio.wait_for(main(), 30))
    after = app.get_task(t.task_id)
    assert (after.status, after.attempt) == (TaskStatus.QUEUED, 0)
    assert [e.event_type for e in app.task_events(t.task_id)][-1] == "requeued"


def test_a_worker_cancelled_while_it_claims_gives_the_claimed_tasks_back(app: Creep) -> None:
    """The claim's database call runs on after its caller is cancelled and commits: its tasks
    were RUNNING under a worker that never ran them."""
    t = app.submit(task_type="LONG")
    in_claim, release = threading.Event(), threading.Event()
    claim = app.store.task_claim

    def slow_claim(*args: object) -> object:
        in_claim.set()
        release.wait(20)
        return claim(*args)  # type: ignore[arg-type]

    app.store.task_claim = slow_claim  # type: ignore[method-assign]

    @app.handler("LONG")
    async def long(ctx: TaskContext) -> object:
        await asyncio.sleep(30)
        return "done"

    async def main() -> None:
        run = asyncio.create_task(app.worker(maintenance=False).run())
        assert await asyncio.to_thread(in_claim.wait, 20)
        run.cancel()
        threading.Timer(0.3, release.set).start()  # the claim commits after the cancel
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(asyncio.wait_for(main(), 30))
    after = app.get_task(t.task_id)
    assert (after.status, after.attempt) == (TaskStatus.QUEUED, 0)


# -- burst -----------------------------------------------------------------------------------------


def test_burst_returns_with_a_due_task_it_promoted_itself(app: Creep, clock: FrozenClock) -> None:
    """run_worker(burst=True) is documented to run "until nothing is runnable now". Its idle
    counter is never reset by a maintenance round that promoted work, so after two rounds
    that each promoted a due task it returns, leaving the second one QUEUED and due."""
    ran: list[str] = []

    @app.handler("STEP")
    async def step(ctx: TaskContext) -> object:
        ran.append(ctx.task.input_payload["n"])
        clock.advance(10)  # time passes while it runs
        return None

    app.submit(task_type="STEP", input_payload={"n": "a"}, run_after=timedelta(seconds=10))
    b = app.submit(task_type="STEP", input_payload={"n": "b"}, run_after=timedelta(seconds=20))
    clock.advance(10)
    app.run_worker(burst=True, install_signals=False)
    left = app.get_task(b.task_id)
    assert left.run_after <= clock.now()
    assert (ran, left.status) == (["a", "b"], TaskStatus.SUCCESS), (ran, left.status)


# -- rescue: lost worker vs timeout ------------------------------------------------------------


def test_a_claim_lost_before_the_deadline_is_timed_out_when_maintenance_runs_late(
    app: Creep, clock: FrozenClock
) -> None:
    """README "Workers": "A claim that expires before the deadline (plus the task's own grace)
    is retried with result_code WORKER_LOST". The rescuer compares the deadline with the time
    the sweep runs, not with the time the claim expired: when no maintenance ran for a while
    (every worker was down, e.g. the one worker crashed and was restarted two minutes later)
    the task its crash orphaned ends TIMEOUT (terminal, dependants cancelled) instead of being
    retried, though its worker was lost 30 s before its deadline."""
    t = app.submit(task_type="LONG", timeout_ms=60_000, constraints={"max_retries": 3})
    dep = app.submit(task_type="LONG", depends_on=[t.task_id])
    [claimed] = app.store.task_claim("crashed-worker", ["LONG"], 1, clock.now(), 30.0)
    assert claimed.task_id == t.task_id
    clock.advance(120)  # claim expired at 30 s, deadline at 60 s; the next sweep runs at 120 s
    app.maintain()
    got = app.get_task(t.task_id)
    assert (got.status, got.result_code, got.attempt) == (TaskStatus.QUEUED, "WORKER_LOST", 1)
    assert app.get_task(dep.task_id).status is TaskStatus.PENDING


def test_a_task_past_its_1024th_attempt_is_still_retried(app: Creep, clock: FrozenClock) -> None:
    """Each manual retry grants max_retries (up to 1000) more attempts. The backoff of
    attempt 1025 (1.0 * 2**1024 s) overflowed a float: the sweep rescuing its lost worker
    raised OverflowError every round (a worker leading maintenance crashed on it, and the
    next leader too) and left the task RUNNING; a handler's retry there left it RUNNING too."""
    t = app.submit(task_type="X", constraints={"max_retries": 1000})

    def claimed_and_lost() -> None:
        clock.advance(3600)  # past the backoff (capped at an hour)
        [claimed] = app.store.task_claim("lost-worker", ["X"], 1, clock.now(), 1.0)
        assert claimed.task_id == t.task_id
        clock.advance(2)  # its claim expired
        app.maintain()

    for _ in range(1001):
        claimed_and_lost()
    assert app.get_task(t.task_id).status is TaskStatus.DEAD_LETTER
    app.retry(t.task_id)
    for _ in range(24):
        claimed_and_lost()
    got = app.get_task(t.task_id)
    assert (got.status, got.attempt, got.result_code) == (TaskStatus.QUEUED, 1025, "WORKER_LOST")

    @app.handler("X")
    async def fails(ctx: TaskContext) -> object:
        raise RuntimeError("still broken")

    clock.advance(3600)
    app.run_worker(burst=True, install_signals=False, maintenance=False)
    got = app.get_task(t.task_id)
    assert (got.status, got.attempt, got.result_code) == (TaskStatus.QUEUED, 1026, "RETRYABLE")


# -- handler signals the worker cannot resolve -------------------------------------------------


def test_retry_with_a_delay_past_year_9999_leaves_the_task_running(app: Creep) -> None:
    """Retry(delay=...) is resolved outside the run's try block: a delay whose run_after
    overflows the datetime range raises OverflowError in the task's asyncio job ("Task
    exception was never retrieved"); no completion is written, the task stays RUNNING (not
    heartbeated any more) and a burst worker returns as if done. It is only rescued once its
    claim expires, charged as a lost worker."""
    from creep import Retry

    @app.handler("LATER")
    async def later(ctx: TaskContext) -> object:
        raise Retry(delay=1e12, message="come back much later")

    t = app.submit(task_type="LATER")
    errors: list[str] = []

    async def burst() -> dict[str, int]:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: errors.append(repr(context.get("exception"))))
        return await app.worker().run(burst=True)

    stats = asyncio.run(burst())
    status = app.get_task(t.task_id).status.value
    assert status != "RUNNING", f"left {status} after a burst run, stats {stats}, {errors}"


# -- configuration -------------------------------------------------------------------------------


def test_an_invalid_creep_log_level_crashes_creep_worker_with_a_traceback(tmp_path: Path) -> None:
    """README "Configuration" lists CREEP_LOG_LEVEL / --log-level; PRODUCT.md asks for config
    "validated at start with clear errors", and `creep server` does validate it ("must be one
    of ..."). `creep worker` (and `creep scheduler`) hand it to logging.basicConfig unchecked:
    a typo ends in an uncaught ValueError traceback (exit 1) instead of the CLI's usage error
    (exit 2, "error: ...") it gives for every other bad option."""
    (tmp_path / "lifecycle_app.py").write_text(_WORKER_APP)
    env = dict(os.environ, CREEP_DATABASE_URL=f"sqlite:///{tmp_path}/creep.db",
               CREEP_LOG_LEVEL="verbose", COLUMNS="200")
    done = subprocess.run(
        [sys.executable, "-m", "creep.cli", "worker", "--app", "lifecycle_app:app",
         "--burst"], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=60,
    )
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out[-600:]
    assert done.returncode == 2, (done.returncode, out[-600:])


# -- a failed claim ------------------------------------------------------------------------------


def test_a_failed_claim_is_tried_again_shortly_not_at_the_next_poll(db_url: str) -> None:
    """A claim that failed on the database (a connection reset) spent the wake-up that
    started it: the worker then slept until its next poll (30 s here) with a task waiting.
    It tries again after a short pause instead."""
    from creep import StorageError

    app = Creep(db_url)
    started: list[str] = []

    @app.handler("PING")
    async def ping(ctx: TaskContext) -> None:
        started.append(ctx.task_id)

    task = app.submit(task_type="PING")  # before the worker: no wake-up after the failure
    claim = app.store.task_claim
    failures = [StorageError("connection reset")]

    def flaky(*args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return claim(*args, **kwargs)

    app.store.task_claim = flaky  # type: ignore[method-assign]
    worker = app.worker(poll_interval=30.0, maintenance=False)
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not started:
            time.sleep(0.02)
        assert not failures and started == [task.task_id]
    finally:
        worker.request_stop()
        runner.join(15)
        app.close()


def test_a_handlers_heartbeat_and_progress_wait_out_a_storage_failure(db_url: str) -> None:
    """ctx.heartbeat() and ctx.progress() on a database that failed for a moment raised
    creep's StorageError into the handler: its task was retried, charged an attempt (and on
    its last attempt dead-lettered). They are tried again instead, as the worker's own
    heartbeat is."""
    from creep import StorageError

    app = Creep(db_url)

    @app.handler("BEAT")
    async def beat(ctx: TaskContext) -> str:
        await ctx.heartbeat()
        await ctx.progress(50, "half")
        return "done"

    task = app.submit(task_type="BEAT")
    store = app.store
    failures = {"task_heartbeat": 2, "task_progress": 2}
    for name in failures:
        original = getattr(store, name)

        def flaky(*args: object, _name: str = name, _fn: object = original,
                  **kwargs: object) -> object:
            if failures[_name]:
                failures[_name] -= 1
                raise StorageError("terminating connection due to administrator command")
            return _fn(*args, **kwargs)  # type: ignore[operator]

        setattr(store, name, flaky)
    app.run_worker(burst=True, install_signals=False)
    done = app.get_task(task.task_id)
    assert failures == {"task_heartbeat": 0, "task_progress": 0}
    assert (done.status, done.attempt, done.progress) == (TaskStatus.SUCCESS, 1, 100)
    app.close()


def test_a_heartbeat_answered_after_the_run_ended_reports_no_lost_claim(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A heartbeat sent while a handler runs may be answered after the run ended and its
    result was written: the task is no longer RUNNING, so the claim is not renewed. The
    worker logged "claim lost; abandoning it" for such a task, which had succeeded (seen
    by the chaos test, tests/integration/test_chaos_drain.py): nothing was lost."""
    app = Creep(db_url)
    store = app.store
    original = store.task_heartbeat
    answered = threading.Event()

    @app.handler("SHORT")
    async def short(ctx: TaskContext) -> str:
        await asyncio.sleep(0.2)
        return "done"

    task = app.submit(task_type="SHORT")

    def slow_heartbeat(*args: object, **kwargs: object) -> object:
        # Answered only once the run's result is written (a slow network, a busy server).
        deadline = time.monotonic() + 5
        while (time.monotonic() < deadline
               and store.task_get(task.task_id).status is TaskStatus.RUNNING):
            time.sleep(0.01)
        try:
            return original(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            answered.set()

    store.task_heartbeat = slow_heartbeat  # type: ignore[method-assign]
    worker = app.worker(heartbeat_interval=0.05, poll_interval=0.05, maintenance=False)
    runner = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    with caplog.at_level("WARNING", logger="creep.worker"):
        runner.start()
        try:
            assert answered.wait(10)
            time.sleep(0.2)  # the answer handled
        finally:
            worker.request_stop()
            runner.join(15)
    assert app.get_task(task.task_id).status is TaskStatus.SUCCESS
    assert [r.getMessage() for r in caplog.records if "claim lost" in r.getMessage()] == []
    app.close()
