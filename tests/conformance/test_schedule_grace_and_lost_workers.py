"""A schedule's timeout_grace_period reaches the control plane, and a lost worker is recorded
structurally (result_code WORKER_LOST), on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from creep import Creep, FrozenClock, TaskContext, ValidationError
from creep.domain.execution import ExecutionState, TaskExecution
from creep.engine.scheduler import Scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def _sched(app: Creep) -> Scheduler:
    return app.scheduler(holder_id="A", retention_jobs=[], lock_ttl=600)


def _execution(app: Creep, uid: str) -> TaskExecution:
    [e] = app.list_executions(schedule=uid)
    return e


def test_the_control_plane_times_out_only_after_max_duration_plus_grace(
    app: Creep, clock: FrozenClock
) -> None:
    s = app.create_schedule(name="slow", type="SLOW", interval=60, max_duration_seconds=30,
                            timeout_grace_period=20)
    sch = _sched(app)
    clock.advance(60)
    sch.run_once()
    task = app.get_task(str(_execution(app, s.uid).task_id))
    assert task.timeout_ms == 30_000 and task.constraints["timeout_grace_ms"] == 20_000
    plain = app.submit(task_type="SLOW", timeout_ms=30_000)  # same limit, no grace of its own
    # A hung worker: it keeps its claims (long TTL) but never finishes.
    claimed = app.store.task_claim("hung", ["SLOW"], 2, clock.now(), 3600.0)
    assert {c.task.task_id for c in claimed} == {task.task_id, plain.task_id}
    clock.advance(30 + 6)  # past the deadline and the engine's own 5 s grace
    assert app.maintain().timed_out == 1
    assert app.get_task(plain.task_id).status == "TIMEOUT"
    assert app.get_task(task.task_id).status == "RUNNING"
    clock.advance(13)  # deadline + 19 s
    assert app.maintain().timed_out == 0
    clock.advance(2)  # deadline + 21 s
    assert app.maintain().timed_out == 1
    assert app.get_task(task.task_id).status == "TIMEOUT"
    sch.run_once()
    assert _execution(app, s.uid).state is ExecutionState.TIMEOUT


def test_a_worker_lost_within_the_grace_is_retried_not_timed_out(
    app: Creep, clock: FrozenClock
) -> None:
    s = app.create_schedule(name="g", type="G", interval=60, max_duration_seconds=10,
                            timeout_grace_period=9, max_retries=1)
    clock.advance(60)
    _sched(app).run_once()
    task_id = str(_execution(app, s.uid).task_id)
    app.store.task_claim("doomed", ["G"], 1, clock.now(), 15.0)
    clock.advance(16)  # claim expired at 15 s: deadline (10 s) passed, deadline + grace (19 s) not
    app.maintain()
    got = app.get_task(task_id)
    assert (got.status, got.result_code) == ("QUEUED", "WORKER_LOST")


def test_grace_is_validated_on_task_orders() -> None:
    from creep.domain.task_spec import validate_task_spec

    with pytest.raises(ValidationError) as info:
        validate_task_spec({"task_type": "T", "constraints": {"timeout_grace_ms": -1}},
                           now=T0)
    assert info.value.errors[0][0] == "constraints.timeout_grace_ms"


def test_interrupted_comes_from_the_result_code_not_the_error_text(
    app: Creep, clock: FrozenClock
) -> None:
    lost = app.create_schedule(name="lost", type="LOST", interval=60, max_retries=1,
                               max_duration_seconds=600, timeout_grace_period=0)
    liar = app.create_schedule(name="liar", type="LIAR", interval=60, max_retries=0)

    @app.handler("LIAR")
    def liar_handler(ctx: TaskContext) -> object:
        raise RuntimeError("claim expired at noon (worker lost)")  # only text, no lost worker

    sch = _sched(app)
    clock.advance(60)
    sch.run_once()
    task_id = str(_execution(app, lost.uid).task_id)
    for attempt, worker in enumerate(("doomed-1", "doomed-2"), start=1):
        [claimed] = app.store.task_claim(worker, ["LOST"], 1, clock.now(), 5.0)
        assert claimed.task.attempt == attempt
        clock.advance(1)
        sch.run_once()
        assert _execution(app, lost.uid).state is ExecutionState.RUNNING
        clock.advance(10)  # the worker never heartbeats again; its claim expires
        app.maintain()
        got = app.get_task(task_id)
        assert got.result_code == "WORKER_LOST"
        if attempt == 1:  # retried: still the same execution, still running
            assert got.status == "QUEUED"
            sch.run_once()
            assert _execution(app, lost.uid).state is ExecutionState.RUNNING
            assert got.run_after is not None
            clock.set(got.run_after + timedelta(seconds=1))
    assert app.get_task(task_id).status == "DEAD_LETTER"
    app.run_worker(burst=True, install_signals=False)  # the liar dead-letters by itself
    sch.run_once()
    e = _execution(app, lost.uid)
    assert e.state is ExecutionState.INTERRUPTED and e.retry_count == 1
    fake = _execution(app, liar.uid)
    assert fake.state is ExecutionState.FAILURE
    assert fake.error_message is not None and "(worker lost)" in fake.error_message
