"""Pure domain: the transition table, validation messages, backoff, outcomes, DAGs."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from creep import IllegalTransition, TaskStatus, ValidationError
from creep.domain.dag import topological_order
from creep.domain.outcomes import Backoff, Outcome, OutcomeKind, resolve
from creep.domain.task import TASK_TRANSITIONS, check_transition, transition_pairs
from creep.domain.task_spec import Limits, validate_task_spec

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_self_transition_raises(status: TaskStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"{status.value} -> {status.value}"):
        check_transition(status, status)


def test_every_pair_is_legal_or_raises() -> None:
    for old in TaskStatus:
        for new in TaskStatus:
            if new in TASK_TRANSITIONS[old]:
                check_transition(old, new)
            else:
                with pytest.raises(IllegalTransition):
                    check_transition(old, new)
    with pytest.raises(IllegalTransition):
        check_transition("SUCCESS", "QUEUED")


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_database_guard_matches_transition_table(dialect: str) -> None:
    # The guard in force is the one the latest migration that (re)creates it defines.
    folder = Path(__file__).parents[2] / "src/creep/storage/migrations" / dialect
    sql = [
        text for path in sorted(folder.glob("*.sql"))
        if "CREATE TRIGGER tasks_transition_guard" in (text := path.read_text())
    ][-1]
    guard = sql[sql.index("CREATE TRIGGER tasks_transition_guard"):]
    guarded = set(re.findall(r"'([A-Z_]+>[A-Z_]+)'", guard))
    assert guarded == {f"{a}>{b}" for a, b in transition_pairs()}


def _spec(**fields: object) -> object:
    return validate_task_spec({"task_type": "ECHO", **fields}, now=NOW)


def test_defaults() -> None:
    spec = validate_task_spec({"task_type": "ECHO"}, now=NOW)
    assert spec.priority == 50
    assert spec.max_attempts == 4
    assert spec.correlation_id == spec.task_id
    assert spec.idempotency_key


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"priority": 101}, "priority", "from 0 to 100"),
        ({"priority": -1}, "priority", "from 0 to 100"),
        ({"priority": True}, "priority", "integer"),
        ({"timeout_ms": 0}, "timeout_ms", "> 0"),
        ({"currency": "usd"}, "currency", "3-4 letter"),
        ({"currency": "DOLLAR"}, "currency", "3-4 letter"),
        ({"max_total_cost": -1}, "max_total_cost", ">= 0"),
        ({"max_total_cost": "abc"}, "max_total_cost", "decimal"),
        ({"max_total_cost": float("nan")}, "max_total_cost", "finite"),
        ({"business_value_hint": "-0.5"}, "business_value_hint", ">= 0"),
        ({"tags": ["a", 3]}, "tags[1]", "string"),
        ({"tags": "a"}, "tags", "list"),
        ({"depends_on": ["nope"]}, "depends_on[0]", "UUID"),
        ({"constraints": {"max_retries": -1}}, "constraints.max_retries", "0 to"),
        ({"resource_hints": [{"min_count": 1}]}, "resource_hints[0].sku_category", "required"),
        ({"resource_hints": [{"sku_category": "NET", "sku_code": "a*b"}]},
         "resource_hints[0].sku_code", "prefix"),
        ({"task_type": ""}, "task_type", "empty"),
        ({"bogus": 1}, "bogus", "not a TaskOrder field"),
        ({"run_after": "yesterday"}, "run_after", "ISO 8601"),
    ],
)
def test_validation_names_field_and_rule(fields: dict[str, object], field: str, rule: str) -> None:
    with pytest.raises(ValidationError) as info:
        _spec(**fields)
    assert any(f == field and rule in r for f, r in info.value.errors), info.value.errors


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        _spec(priority=500, timeout_ms=-1, currency="x")
    assert {f for f, _ in info.value.errors} == {"priority", "timeout_ms", "currency"}


def test_payload_limit_is_configurable() -> None:
    big = {"blob": "x" * 2000}
    validate_task_spec({"task_type": "E", "input_payload": big}, now=NOW)
    with pytest.raises(ValidationError, match="input_payload: is 2011 bytes; the limit is 1000"):
        validate_task_spec(
            {"task_type": "E", "input_payload": big}, now=NOW, limits=Limits(max_payload_bytes=1000)
        )


def test_money_is_exact_decimal() -> None:
    spec = validate_task_spec({"task_type": "E", "max_total_cost": 5.1}, now=NOW)
    assert spec.max_total_cost == Decimal("5.1")
    spec = validate_task_spec({"task_type": "E", "max_total_cost": "0.10"}, now=NOW)
    assert spec.max_total_cost == Decimal("0.10")


def test_fingerprint_ignores_key_but_not_body() -> None:
    a = validate_task_spec({"task_type": "E", "idempotency_key": "k", "priority": 1}, now=NOW)
    b = validate_task_spec({"task_type": "E", "idempotency_key": "k", "priority": 1}, now=NOW)
    c = validate_task_spec({"task_type": "E", "idempotency_key": "k", "priority": 2}, now=NOW)
    assert a.request_hash == b.request_hash != c.request_hash


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    backoff = Backoff(base_seconds=1, cap_seconds=60)
    rng = random.Random(7)
    for attempt, step in [(1, 1), (2, 2), (3, 4), (4, 8), (10, 60)]:
        for _ in range(50):
            delay = backoff.delay(attempt, rng)
            assert step / 2 <= delay <= step


def test_resolve_retry_then_dead_letter() -> None:
    backoff = Backoff(base_seconds=10)
    out = Outcome("t", "tok", OutcomeKind.RETRY, error="boom")
    res = resolve(out, attempt=1, max_attempts=3, now=NOW, backoff=backoff)
    assert res.status is TaskStatus.QUEUED and res.event_type == "retrying"
    assert res.run_after is not None
    assert NOW + timedelta(seconds=5) <= res.run_after <= NOW + timedelta(seconds=10)
    res = resolve(out, attempt=3, max_attempts=3, now=NOW, backoff=backoff)
    assert res.status is TaskStatus.DEAD_LETTER and res.event_type == "dead_lettered"
    explicit = Outcome("t", "tok", OutcomeKind.RETRY, retry_delay=2.5)
    res = resolve(explicit, attempt=1, max_attempts=3, now=NOW, backoff=backoff)
    assert res.run_after == NOW + timedelta(seconds=2.5)


def test_requeue_does_not_charge_attempt() -> None:
    res = resolve(
        Outcome("t", "tok", OutcomeKind.REQUEUE), attempt=1, max_attempts=1, now=NOW,
        backoff=Backoff(),
    )
    assert res.status is TaskStatus.QUEUED and not res.charge_attempt


def test_dag_order_and_cycle() -> None:
    assert topological_order({"a": ["b"], "b": ["c"], "c": []}) == ["c", "b", "a"]
    with pytest.raises(ValidationError, match="cycle: a -> b -> a"):
        topological_order({"a": ["b"], "b": ["a"]})
