"""Pure schedule rules: cron across month ends, leap days and DST; the interval grid; misfire
policies; validation; truncation; the execution state machine."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from creep import FrozenClock, IllegalTransition, ValidationError
from creep.domain.cron import next_cron, validate_cron
from creep.domain.execution import (
    EXECUTION_TRANSITIONS,
    ExecutionState,
    check_execution_transition,
    execution_state_for,
    truncate_error_stack,
    truncate_result,
)
from creep.domain.schedule import MAX_DATA_BYTES, ScheduledTask, plan_firings, validate_schedule

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NY = ZoneInfo("America/New_York")


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def _sched(now: datetime = T0, **fields: object) -> ScheduledTask:
    return validate_schedule({"name": "s", "type": "T", **fields}, now=now)


# -- cron --------------------------------------------------------------------------------------


def test_cron_month_ends() -> None:
    # The 31st skips months that do not have one.
    assert next_cron("0 0 31 * *", _utc(2026, 1, 31)) == _utc(2026, 3, 31)
    assert next_cron("0 0 31 * *", _utc(2026, 3, 31)) == _utc(2026, 5, 31)
    # "L": the last day of every month, February included.
    assert next_cron("0 12 L * *", _utc(2026, 1, 31, 12)) == _utc(2026, 2, 28, 12)
    assert next_cron("59 23 * * *", _utc(2026, 12, 31, 23, 59)) == _utc(2027, 1, 1, 23, 59)


def test_cron_leap_days() -> None:
    assert next_cron("0 0 29 2 *", _utc(2025, 3, 1)) == _utc(2028, 2, 29)
    assert next_cron("0 0 29 2 *", _utc(2028, 2, 29)) == _utc(2032, 2, 29)
    assert next_cron("0 6 L 2 *", _utc(2027, 3, 1)) == _utc(2028, 2, 29, 6)


def test_cron_dst_spring_forward_and_fall_back() -> None:
    # 2026-03-08 02:30 does not exist in New York: it fires right after the gap, once.
    first = next_cron("30 2 * * *", datetime(2026, 3, 7, 3, 0, tzinfo=NY), "America/New_York")
    assert first == datetime(2026, 3, 8, 3, 0, tzinfo=NY).astimezone(UTC)
    after = next_cron("30 2 * * *", first, "America/New_York")
    assert after == datetime(2026, 3, 9, 2, 30, tzinfo=NY).astimezone(UTC)
    # 2026-11-01 01:30 happens twice: it fires once.
    at = next_cron("30 1 * * *", datetime(2026, 10, 31, 12, tzinfo=NY), "America/New_York")
    assert at == _utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    nxt = next_cron("30 1 * * *", at, "America/New_York")
    assert nxt == datetime(2026, 11, 2, 1, 30, tzinfo=NY).astimezone(UTC)
    # An hourly schedule fires every real hour across the change (01:00 EDT and 01:00 EST).
    t = datetime(2026, 11, 1, 0, 0, tzinfo=NY).astimezone(UTC)
    slots = []
    for _ in range(4):
        t = next_cron("0 * * * *", t, "America/New_York")
        slots.append(t)
    assert [b - a for a, b in itertools.pairwise(slots)] == [timedelta(hours=1)] * 3


def test_cron_seconds_field_and_errors() -> None:
    assert next_cron("*/15 * * * * *", _utc(2026, 1, 1, 0, 0, 1)) == _utc(2026, 1, 1, 0, 0, 15)
    with pytest.raises(ValidationError, match="cron_expr: must have 5 fields"):
        validate_cron("* * *")
    with pytest.raises(ValidationError, match="cron_expr: is not a valid cron expression"):
        validate_cron("61 * * * *")
    with pytest.raises(ValidationError, match="timezone: unknown IANA time zone"):
        _sched(cron_expr="* * * * *", timezone="Mars/Olympus")


def test_cron_schedule_next_run_in_its_time_zone() -> None:
    s = _sched(now=_utc(2026, 6, 1), cron_expr="0 9 * * 1-5", timezone="Europe/Berlin")
    assert s.next_run == _utc(2026, 6, 1, 7)  # 09:00 CEST, Monday


# -- intervals ---------------------------------------------------------------------------------


def test_interval_slots_do_not_drift_when_firing_is_late() -> None:
    clock = FrozenClock(T0)
    s = _sched(interval=10)
    assert s.next_run == T0 + timedelta(seconds=10)
    rng = random.Random(7)
    fired = []
    for _ in range(500):
        assert s.next_run is not None
        clock.set(s.next_run + timedelta(seconds=rng.uniform(0, 3)))  # always a bit late
        plan = plan_firings(s, clock.now())
        fired.extend(plan.fire)
        s.next_run = plan.next_run
    assert fired == [T0 + timedelta(seconds=10 * k) for k in range(1, 501)]


def test_interval_with_explicit_start() -> None:
    start = T0 + timedelta(hours=1)
    s = _sched(interval=60, next_run=start)
    assert s.next_run == start and s.anchor_at == start


# -- misfires ----------------------------------------------------------------------------------


def _down(policy: str, **extra: object) -> tuple[ScheduledTask, datetime]:
    s = _sched(interval=60, misfire_policy=policy, misfire_grace_seconds=30, **extra)
    assert s.next_run == T0 + timedelta(minutes=1)
    return s, T0 + timedelta(minutes=100, seconds=10)  # slots 1..100 are due; 1..99 missed


def test_misfire_skip_drops_missed_slots() -> None:
    s, now = _down("skip")
    plan = plan_firings(s, now)
    assert plan.fire == [T0 + timedelta(minutes=100)]  # 10 s late: within grace
    assert plan.missed == 99
    assert plan.next_run == T0 + timedelta(minutes=101)


def test_misfire_once_coalesces() -> None:
    s, now = _down("once")
    plan = plan_firings(s, now)
    assert plan.fire == [T0 + timedelta(minutes=99), T0 + timedelta(minutes=100)]
    assert plan.missed == 98


def test_misfire_all_is_bounded() -> None:
    s, now = _down("all", misfire_limit=5)
    plan = plan_firings(s, now)
    assert plan.fire == [T0 + timedelta(minutes=m) for m in (95, 96, 97, 98, 99, 100)]
    assert plan.missed == 94


def test_misfire_on_cron_schedule() -> None:
    s = _sched(cron_expr="0 * * * *", misfire_policy="all", misfire_limit=3,
               misfire_grace_seconds=0)
    plan = plan_firings(s, T0 + timedelta(hours=10, minutes=5))
    assert plan.fire == [T0 + timedelta(hours=h) for h in (8, 9, 10)]
    assert plan.missed == 7 and plan.next_run == T0 + timedelta(hours=11)


def test_misfires_past_the_cron_scan_bound_keep_the_latest_and_count_the_rest() -> None:
    # Every minute for 20 days: twice the slots one scan looks at.
    s = _sched(cron_expr="* * * * *", misfire_policy="all", misfire_limit=3,
               misfire_grace_seconds=120)
    now = T0 + timedelta(days=20, seconds=30)
    plan = plan_firings(s, now)
    minute = now - timedelta(seconds=30)
    assert plan.fire == [minute - timedelta(minutes=k) for k in range(4, -1, -1)]
    total_late = 20 * 24 * 60 + 1 - 2  # [T0, minute - 2 min]: earlier than the grace
    assert abs(plan.missed - (total_late - 3)) <= 3  # counted from the spacing past the bound
    assert plan.next_run == minute + timedelta(minutes=1)


def test_one_off_fires_once() -> None:
    s = _sched(next_run=T0 + timedelta(minutes=5))
    assert not s.is_recurring
    plan = plan_firings(s, T0 + timedelta(minutes=6))
    assert plan.fire == [T0 + timedelta(minutes=5)] and plan.next_run is None


# -- validation --------------------------------------------------------------------------------


def test_data_over_10_kb_is_rejected() -> None:
    big = {"blob": "x" * MAX_DATA_BYTES}
    with pytest.raises(ValidationError) as info:
        _sched(interval=5, data=big)
    assert info.value.errors[0][0] == "data"
    assert "at most 10240 bytes (10 KB)" in info.value.errors[0][1]
    ok = _sched(interval=5, data={"blob": "x" * 9000})
    assert ok.data is not None and len(ok.data) < MAX_DATA_BYTES


def test_validation_names_every_field_and_rule() -> None:
    with pytest.raises(ValidationError) as info:
        validate_schedule(
            {"name": "", "type": "T", "cron_expr": "* * * * *", "interval": 5,
             "max_duration_seconds": 10, "timeout_grace_period": 10, "priority": 101,
             "misfire_policy": "sometimes", "data": "{not json", "bogus": 1},
            now=T0,
        )
    fields = {f for f, _ in info.value.errors}
    assert fields >= {"name", "cron_expr", "timeout_grace_period", "priority", "misfire_policy",
                      "data", "bogus"}
    with pytest.raises(ValidationError, match="max_duration_seconds"):
        _sched(interval=5, max_duration_seconds=0)
    with pytest.raises(ValidationError, match="needs cron_expr, interval"):
        _sched()


# -- executions --------------------------------------------------------------------------------


def test_truncation_flags() -> None:
    assert truncate_result("ok") == ("ok", False)
    text, cut = truncate_result("é" * 40_000)  # 80,000 bytes
    assert cut and text is not None and len(text.encode()) <= 64 * 1024
    # A Python traceback lists the most recent call last: its end is the top of the stack.
    stack = "\n".join(f"frame {i}" for i in range(5000))
    top, cut = truncate_error_stack(stack)
    assert cut and top is not None and top.endswith("\nframe 4999")
    assert len(top.encode()) <= 10 * 1024 and stack.endswith(top)
    top, cut = truncate_error_stack("é" * 6000 + "!")  # a cut inside a character: its
    assert cut and top == "é" * 5119 + "!"  # other byte is dropped


def test_execution_transitions() -> None:
    check_execution_transition("pending", "running")
    check_execution_transition("running", "interrupted")
    for terminal in ("success", "failure", "timeout", "cancelled", "interrupted"):
        assert not EXECUTION_TRANSITIONS[ExecutionState(terminal)]
        with pytest.raises(IllegalTransition):
            check_execution_transition(terminal, "running")
    with pytest.raises(IllegalTransition):
        check_execution_transition("running", "running")
    with pytest.raises(IllegalTransition):
        check_execution_transition("running", "pending")


def test_execution_state_mirrors_task_status() -> None:
    assert execution_state_for("QUEUED", None) is ExecutionState.PENDING
    assert execution_state_for("RUNNING", None) is ExecutionState.RUNNING
    assert execution_state_for("SUCCESS", None) is ExecutionState.SUCCESS
    assert execution_state_for("FAILED", "x") is ExecutionState.FAILURE
    assert execution_state_for("TIMEOUT", None) is ExecutionState.TIMEOUT
    assert execution_state_for("CANCELLED", None) is ExecutionState.CANCELLED
    assert execution_state_for("DEAD_LETTER", "MAX_RETRIES_EXCEEDED") is ExecutionState.FAILURE
    # Structural: the result code, never the text of the error.
    assert execution_state_for("DEAD_LETTER", "(worker lost)") is ExecutionState.FAILURE
    assert execution_state_for("DEAD_LETTER", "WORKER_LOST") is ExecutionState.INTERRUPTED
    assert execution_state_for("FAILED", "WORKER_LOST") is ExecutionState.FAILURE


def test_lock_transitions() -> None:
    from creep.domain.lock import check_lock_transition

    check_lock_transition("active", "released", same_token=True, old_expired=False)
    check_lock_transition("expired", "active", same_token=False, old_expired=True)
    check_lock_transition("active", "active", same_token=True, old_expired=False)  # renewal
    check_lock_transition("active", "active", same_token=False, old_expired=True)  # takeover
    with pytest.raises(IllegalTransition):
        check_lock_transition("active", "active", same_token=False, old_expired=False)
    with pytest.raises(IllegalTransition):
        check_lock_transition("released", "expired", same_token=True, old_expired=True)


def test_priority_defaults_to_0_as_in_seed_003() -> None:
    from creep.domain.schedule import Firing, task_fields

    s = validate_schedule({"name": "p", "type": "T", "interval": 60}, now=T0)
    assert s.priority == 0
    assert task_fields(s, Firing(T0))["priority"] == 0
    assert validate_schedule({"name": "p", "type": "T", "interval": 60, "priority": 90},
                             now=T0).priority == 90
