"""Property tests for the pure domain: the transition table, backoff, resolve, task ids."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creep import IllegalTransition, TaskStatus
from creep.domain.ids import uuid7, uuid7_many
from creep.domain.outcomes import Backoff, Outcome, OutcomeKind, resolve
from creep.domain.task import (
    RETRYABLE_FROM,
    TASK_TRANSITIONS,
    TERMINAL_STATUSES,
    check_transition,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# The machine is shared: no per-example deadline, no "too slow" health check.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
statuses = st.sampled_from(list(TaskStatus))


@relaxed
@given(statuses, statuses)
def test_check_transition_is_the_table(old: TaskStatus, new: TaskStatus) -> None:
    if new in TASK_TRANSITIONS[old]:
        check_transition(old.value, new.value)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


@relaxed
@given(st.lists(statuses, min_size=1, max_size=30))
def test_legal_walks_never_repeat_a_state_and_leave_terminals_only_by_retry(
    path: list[TaskStatus],
) -> None:
    """Follow any legal walk: no self-step, and a terminal state is left only for QUEUED
    (an operator retry), never from SUCCESS."""
    state = TaskStatus.PENDING
    for nxt in path:
        if nxt not in TASK_TRANSITIONS[state]:
            with pytest.raises(IllegalTransition):
                check_transition(state, nxt)
            continue
        check_transition(state, nxt)
        assert nxt != state
        if state in TERMINAL_STATUSES:
            assert state in RETRYABLE_FROM and nxt is TaskStatus.QUEUED
        state = nxt


@relaxed
@given(
    base=st.floats(min_value=0.001, max_value=60),
    cap=st.floats(min_value=0.001, max_value=7200),
    attempt=st.integers(min_value=0, max_value=200),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_is_half_fixed_half_jitter_and_capped(
    base: float, cap: float, attempt: int, seed: int
) -> None:
    b = Backoff(base_seconds=base, cap_seconds=cap)
    step = min(cap, base * 2 ** max(0, attempt - 1))
    delay = b.delay(attempt, random.Random(seed))
    assert step / 2 - 1e-9 <= delay <= step + 1e-9
    assert delay <= cap + 1e-9


@given(
    kind=st.sampled_from(list(OutcomeKind)),
    max_attempts=st.integers(min_value=1, max_value=20),
    data=st.data(),
    retry_delay=st.none() | st.floats(min_value=0, max_value=3600),
    seed=st.integers(min_value=0, max_value=2**32),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_resolve_always_leads_to_a_legal_state(
    kind: OutcomeKind, max_attempts: int, data: st.DataObject, retry_delay: float | None,
    seed: int,
) -> None:
    attempt = data.draw(st.integers(min_value=1, max_value=max_attempts))
    outcome = Outcome("t", "tok", kind, retry_delay=retry_delay, message="m")
    backoff = Backoff()
    res = resolve(outcome, attempt=attempt, max_attempts=max_attempts, now=NOW,
                  backoff=backoff, rng=random.Random(seed))
    check_transition(TaskStatus.RUNNING, res.status)  # every resolution is legal from RUNNING
    assert res.charge_attempt is (kind is not OutcomeKind.REQUEUE)
    if kind is OutcomeKind.RETRY:
        if attempt >= max_attempts:
            assert res.status is TaskStatus.DEAD_LETTER
            assert res.result_code == "MAX_RETRIES_EXCEEDED"
        else:
            assert res.status is TaskStatus.QUEUED and res.run_after is not None
            wait = (res.run_after - NOW).total_seconds()
            if retry_delay is not None:
                assert wait == pytest.approx(retry_delay, abs=1e-5)
            else:
                step = min(backoff.cap_seconds, backoff.base_seconds * 2 ** (attempt - 1))
                assert step / 2 - 1e-5 <= wait <= step + 1e-5
    elif kind is OutcomeKind.REQUEUE:
        assert res.status is TaskStatus.QUEUED and res.run_after == NOW
    else:
        expected = {
            OutcomeKind.SUCCEEDED: TaskStatus.SUCCESS, OutcomeKind.FAILED: TaskStatus.FAILED,
            OutcomeKind.TIMED_OUT: TaskStatus.TIMEOUT, OutcomeKind.CANCELLED: TaskStatus.CANCELLED,
        }[kind]
        assert res.status is expected


def test_uuid7_ids_are_valid_unique_and_increasing() -> None:
    before = datetime.now(UTC)
    ids = [uuid7() for _ in range(20_000)]
    after = datetime.now(UTC)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for value in (ids[0], ids[-1]):
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
        stamp = datetime.fromtimestamp((parsed.int >> 80) / 1000, UTC)
        assert before - timedelta(seconds=2) <= stamp <= after + timedelta(seconds=2)



def test_uuid7_batches_interleave_with_single_ids_in_order() -> None:
    assert uuid7_many(0) == []
    ids = [uuid7(), *uuid7_many(5000), uuid7(), *uuid7_many(1), *uuid7_many(3), uuid7()]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 5007
    for value in ids[1:3] + ids[-4:]:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value

def test_generated_task_ids_are_uuid7() -> None:
    from creep.domain.task_spec import validate_task_spec

    first = validate_task_spec({"task_type": "X"}, now=NOW).task_id
    second = validate_task_spec({"task_type": "X"}, now=NOW).task_id
    assert uuid.UUID(first).version == 7 and first < second
