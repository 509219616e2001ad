"""Pure asset rules: transition tables, matching preference, budget, health, validation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from creep import IllegalTransition, ValidationError
from creep.domain.asset import (
    ASSET_TRANSITIONS,
    AssetStatus,
    asset_transition_pairs,
    check_asset_transition,
    next_health,
    validate_asset_changes,
    validate_asset_spec,
)
from creep.domain.asset_event import BanPolicy, validate_reported_event
from creep.domain.lease import LEASE_TRANSITIONS, LeaseStatus, check_lease_transition
from creep.domain.ledger import summarise
from creep.domain.matching import Candidate, Demand, code_matches, match_all
from creep.storage.common import load_migrations


def cand(asset_id: str, *, health: int = 100, cur: int = 0, mx: int = 1, cost: str = "0",
         code: str = "ip.uk.1", category: str = "RAW_NET", **attrs: object) -> Candidate:
    return Candidate(asset_id, "t", category, code, dict(attrs), mx, cur, health,
                     Decimal(cost), "USD", "IN_USE" if cur else "READY")


def demand(task_id: str, *hints: dict[str, object], budget: str | None = None,
           spent: str = "0", min_health: float = 0) -> Demand:
    return Demand(task_id, "t", "USD", [dict(h) for h in hints], min_health,
                  None if budget is None else Decimal(budget), Decimal(spent))


def test_transition_tables_have_no_self_transitions_and_match_the_migrations() -> None:
    for table in (ASSET_TRANSITIONS, LEASE_TRANSITIONS):
        for old, targets in table.items():  # type: ignore[attr-defined]
            assert old not in targets
    for dialect in ("sqlite", "postgres"):
        sql = next(m.sql for m in load_migrations(dialect) if m.name == "assets")
        for pair in asset_transition_pairs():
            assert f"'{pair}'" in sql
    with pytest.raises(IllegalTransition):
        check_asset_transition("ARCHIVED", "READY")
    with pytest.raises(IllegalTransition):
        check_asset_transition("READY", "READY")
    check_asset_transition(AssetStatus.BANNED, AssetStatus.READY)
    with pytest.raises(IllegalTransition):
        check_lease_transition(LeaseStatus.RELEASED, LeaseStatus.ACTIVE)


def test_sku_patterns() -> None:
    assert code_matches("ip.residential.uk.*", "ip.residential.uk.42")
    assert not code_matches("ip.residential.uk.*", "ip.residential.ukx")
    assert code_matches("vcc.1", "vcc.1") and not code_matches("vcc.1", "vcc.10")
    assert code_matches(None, "anything")


def test_preference_health_then_load_then_cost() -> None:
    pool = [cand("a", health=90), cand("b", health=95, cost="3", mx=2),
            cand("c", health=95, cost="1", mx=4, cur=2), cand("d", health=95, cost="2", mx=2)]
    [m] = match_all([demand("t1", {"sku_category": "RAW_NET", "min_count": 3})], pool)
    # b and d are idle (load 0) so they beat c (load 0.5); among them the cheaper d first.
    assert [a.asset_id for _, a in m.picks] == ["d", "b", "c"]


def test_all_or_nothing_consumes_nothing_when_a_hint_fails() -> None:
    pool = [cand("ip"), cand("card", category="RAW_FUND", cur=1)]  # the card is full
    first, second = match_all(
        [demand("both", {"sku_category": "RAW_NET"}, {"sku_category": "RAW_FUND"}),
         demand("ip-only", {"sku_category": "RAW_NET"})],
        pool,
    )
    assert first.refusal == "NO_RESOURCE" and first.picks == []
    assert [a.asset_id for _, a in second.picks] == ["ip"]
    assert pool[0].spare == 0


def test_concurrency_is_shared_across_a_batch() -> None:
    pool = [cand("a", mx=2)]
    got = match_all([demand(f"t{i}", {"sku_category": "RAW_NET"}) for i in range(3)], pool)
    assert [m.refusal for m in got] == [None, None, "NO_RESOURCE"]


def test_distinct_assets_per_task_and_filters() -> None:
    pool = [cand("a", geo="GB", mx=5), cand("b", geo="FR"), cand("c", geo="GB", health=10)]
    [m] = match_all([demand("t", {"sku_category": "RAW_NET", "min_count": 2,
                                  "attributes": {"geo": "GB"}}, min_health=50)], pool)
    assert m.refusal == "NO_RESOURCE"  # a alone cannot fill two slots of one task


def test_budget_falls_back_to_the_cheapest_set_then_refuses() -> None:
    pool = [cand("fancy", health=100, cost="4"), cand("cheap", health=50, cost="1")]
    [m] = match_all([demand("t", {"sku_category": "RAW_NET"}, budget="5", spent="3")], pool)
    assert [a.asset_id for _, a in m.picks] == ["cheap"] and m.cost == Decimal("1")
    [m2] = match_all([demand("t", {"sku_category": "RAW_NET"}, budget="5", spent="4.5")],
                     [cand("x", cost="1")])
    assert m2.refusal == "BUDGET_EXCEEDED" and m2.picks == []


def test_health_rule_clamps() -> None:
    assert next_health(100, "TASK_SUCCESS") == 100
    assert next_health(50, "TASK_SUCCESS") == 51
    assert next_health(3, "TASK_FAIL") == 0
    assert next_health(50, "TASK_TIMEOUT") == 40


def test_ledger_summary_is_exact_and_grouped_by_currency() -> None:
    rows = [("USD", "COST", Decimal("0.10")), ("USD", "COST", Decimal("0.20")),
            ("USD", "REFUND", Decimal("0.05")), ("USD", "REVENUE", Decimal("1")),
            ("EUR", "TASK_BURN", Decimal("2")), ("EUR", "ADJUSTMENT", Decimal("-0.5"))]
    usd, eur = sorted(summarise(rows), key=lambda s: s.currency, reverse=True)
    assert (usd.cost, usd.revenue, usd.margin) == (Decimal("0.25"), Decimal(1), Decimal("0.75"))
    assert (eur.cost, eur.margin, eur.entries) == (Decimal("1.5"), Decimal("-1.5"), 2)


def test_asset_validation_names_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        validate_asset_spec({"sku_category": "", "sku_code": "a", "currency": "usd",
                             "cost_per_lease": "1.0000001", "status": "IN_USE", "bogus": 1})
    assert {f for f, _ in exc.value.errors} == {
        "sku_category", "currency", "cost_per_lease", "status", "bogus"}
    with pytest.raises(ValidationError, match="current_concurrency: cannot be changed"):
        validate_asset_changes({"current_concurrency": 5})


def test_event_validation_and_ban_policy_failures() -> None:
    ok = validate_reported_event({"event_type": "HTTP_PROBE_FAIL", "http_status": 403,
                                  "latency_ms": 0, "severity": "WARN", "retryable": True})
    assert ok["severity"] == "WARN" and ok["http_status"] == 403
    with pytest.raises(ValidationError):
        validate_reported_event({"event_type": "", "version": 2})
    default = BanPolicy("t", "RAW_NET", 3, 60)
    assert default.is_failure("HTTP_PROBE_FAIL") and default.is_failure("TASK_TIMEOUT")
    assert not default.is_failure("ALLOCATED")
    strict = BanPolicy("t", "RAW_NET", 3, 60, ["E_403"])
    assert strict.is_failure("E_403") and not strict.is_failure("TASK_FAIL")


def test_event_rows_follow_the_column_order() -> None:
    from datetime import UTC, datetime

    from creep.domain.asset_event import EVENT_FIELDS, AssetEvent
    from creep.storage.sqlite_assets import SqliteAssets

    now = datetime(2026, 1, 1, tzinfo=UTC)
    values = {name: f"v-{name}" for name in EVENT_FIELDS}
    values.update(occurred_at=now, recorded_at=now, tags=[], context={}, version=1,
                  severity=None, http_status=200, latency_ms=1, retryable=True)
    row = SqliteAssets()._event_row(AssetEvent(**values))  # type: ignore[arg-type]
    expected = [values[n] for n in EVENT_FIELDS]
    for i, name in enumerate(EVENT_FIELDS):
        if name not in ("occurred_at", "recorded_at", "tags", "context"):
            assert row[i] == expected[i], name


def test_values_json_cannot_carry_are_refused_with_their_path() -> None:
    """Attributes (and a task's hints and constraints) are stored as JSON written by orjson,
    which takes integers of at most 64 bits: a bigger one is a validation error naming it,
    through the Python API as over HTTP, never a storage error."""
    from datetime import UTC, datetime

    from creep.domain.task_spec import validate_task_spec
    from creep.domain.text import INT_RULE, find_bad_text

    big = 2**64
    assert find_bad_text({"a": [1, {"b": big}]}, "x") == ("x.a[1].b", INT_RULE)
    assert find_bad_text({"a": [2**64 - 1, -(2**63), True]}, "x") is None
    with pytest.raises(ValidationError, match=r"attributes\.n"):
        validate_asset_spec({"sku_category": "X", "sku_code": "x.1", "attributes": {"n": big}})
    with pytest.raises(ValidationError, match=r"attributes\.n"):
        validate_asset_changes({"attributes": {"n": -(2**63) - 1}})
    with pytest.raises(ValidationError, match=r"resource_hints\[0\]\.attributes\.n"):
        validate_task_spec({"task_type": "A", "resource_hints": [
            {"sku_category": "X", "attributes": {"n": big}}]}, now=datetime.now(UTC))
