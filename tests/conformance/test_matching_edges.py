"""Matching edges, shrunk from property-based runs of match_all (and of the leased claim on
both backends) against a brute-force reference that enumerates every assignment of a task's
hints to the pool: overlapping hints that each need several assets, the cheapest set under a
budget, and SQLite attribute filters for keys and integers a JSON path or a bind cannot
carry."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from creep import Creep, FrozenClock, TaskContext, TaskStatus
from creep.domain.matching import Candidate, Demand, match_all


def _drain(app: Creep) -> dict[str, list[str]]:
    """Run every runnable USE task; returns the asset ids each task leased."""
    seen: dict[str, list[str]] = {}

    @app.handler("USE")
    async def use(ctx: TaskContext) -> None:
        seen[ctx.task.task_id] = sorted(x.asset_id for x in await ctx.leases())

    app.run_worker(burst=True, install_signals=False, concurrency=4)
    return seen


def _cand(asset_id: str, code: str, attrs: dict[str, Any], health: int,
          cost: str = "0") -> Candidate:
    return Candidate(asset_id, "t", "NET", code, attrs, 1, 0, health, Decimal(cost), "USD",
                     "READY")


# -- 1. overlapping hints with min_count > 1: a task the pool can serve waits forever ----------

# Hint 0 fits {g1, g2, y}, hint 1 fits {g1, g2, f}; each takes its two best, g1 and g2, in
# whichever order the hints are tried, and the other hint is then one short. The task can
# be served: hint 0 = {g1, y}, hint 1 = {g2, f}.
OVERLAP_HINTS = [
    {"sku_category": "NET", "sku_code": "ip.*", "attributes": {"geo": "GB"}, "min_count": 2},
    {"sku_category": "NET", "sku_code": "ip.x", "attributes": {}, "min_count": 2},
]


def test_overlapping_multi_count_hints_refused_no_resource_though_pool_serves_them() -> None:
    pool = [_cand("g1", "ip.x", {"geo": "GB"}, 100), _cand("g2", "ip.x", {"geo": "GB"}, 100),
            _cand("y", "ip.y", {"geo": "GB"}, 50), _cand("f", "ip.x", {"geo": "FR"}, 50)]
    [m] = match_all([Demand("t1", "t", "USD", OVERLAP_HINTS, 0, None)], pool)
    assert m.refusal is None, "NO_RESOURCE, yet hint 0 = {g1, y}, hint 1 = {g2, f} serves it"
    assert sorted(a.asset_id for _, a in m.picks) == ["f", "g1", "g2", "y"]


def test_overlapping_multi_count_hints_task_stays_queued_though_pool_serves_it(
    app: Creep,
) -> None:
    app.import_assets([
        {"sku_category": "NET", "sku_code": "ip.x", "attributes": {"geo": "GB"}},
        {"sku_category": "NET", "sku_code": "ip.x", "attributes": {"geo": "GB"}},
        {"sku_category": "NET", "sku_code": "ip.y", "attributes": {"geo": "GB"},
         "health_score": 50},
        {"sku_category": "NET", "sku_code": "ip.x", "attributes": {"geo": "FR"},
         "health_score": 50},
    ])
    t = app.submit(task_type="USE", resource_hints=OVERLAP_HINTS)
    seen = _drain(app)
    assert app.get_task(t.task_id).status == TaskStatus.SUCCESS, "left QUEUED (NO_RESOURCE)"
    assert len(seen[t.task_id]) == 4


# -- 2. the budget fallback misses the cheapest set: the task fails for good -------------------

# Hint 0 fits {c1, c2, y, e}, hint 1 fits {c1, c2, f, e}; c1, c2, y, f cost 1 and e costs 5.
# The cheapest valid set is hint 0 = {c1, y}, hint 1 = {c2, f}: 4. Taking each hint's
# cheapest in either order hands c1, c2 to the first hint and leaves the second f/y + e: 8.
BUDGET_HINTS = OVERLAP_HINTS


def test_budget_fallback_misses_cheapest_set_of_overlapping_multi_count_hints() -> None:
    pool = [_cand("c1", "ip.x", {"geo": "GB"}, 100, "1"),
            _cand("c2", "ip.x", {"geo": "GB"}, 100, "1"),
            _cand("y", "ip.y", {"geo": "GB"}, 50, "1"),
            _cand("f", "ip.x", {"geo": "FR"}, 50, "1"),
            _cand("e", "ip.x", {"geo": "GB"}, 100, "5")]
    [m] = match_all([Demand("t1", "t", "USD", BUDGET_HINTS, 0, Decimal(4))], pool)
    assert m.refusal is None, "BUDGET_EXCEEDED, yet {c1, y} + {c2, f} costs 4 <= 4"
    assert m.cost == Decimal(4)


def test_budget_fallback_misses_cheapest_set_task_fails_budget_exceeded(app: Creep) -> None:
    app.import_assets([
        {"sku_category": "NET", "sku_code": "ip.x", "attributes": {"geo": "GB"},
         "cost_per_lease": "1"},
        {"sku_category": "NET", "sku_code": "ip.x", "attributes": {"geo": "GB"},
         "cost_per_lease": "1"},
        {"sku_category": "NET", "sku_code": "ip.y", "attributes": {"geo": "GB"},
         "health_score": 50, "cost_per_lease": "1"},
        {"sku_category": "NET", "sku_code": "ip.x", "attributes": {"geo": "FR"},
         "health_score": 50, "cost_per_lease": "1"},
        {"sku_category": "NET", "sku_code": "ip.x", "attributes": {"geo": "GB"},
         "cost_per_lease": "5"},
    ])
    t = app.submit(task_type="USE", resource_hints=BUDGET_HINTS, max_total_cost="4")
    _drain(app)
    done = app.get_task(t.task_id)
    assert (done.status, done.result_code) == (TaskStatus.SUCCESS, "OK"), done.result_code
    assert sum(e.amount for e in app.ledger_entries(task_id=t.task_id)) == Decimal(4)


# -- SQLite's attribute filter (asset_dialect.SqliteDialect.attrs_filter) ----------------------


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Creep]:
    app = Creep(f"sqlite:///{tmp_path}/creep.db", clock=FrozenClock())
    yield app
    app.close()


# -- 3. an attribute key that JSON escapes (a tab, a newline, a control character) -------------


@pytest.mark.parametrize("key", ["a\tb", "line\nbreak", "\x01"])
def test_sqlite_attribute_key_with_control_character_never_matches(
    sqlite_app: Creep, key: str
) -> None:
    # Stored as {"a\\tb": 1}; the SQL path $."a<TAB>b" names the unescaped key, which
    # SQLite's json_extract does not find: the only matching asset is filtered out in SQL
    # (PostgreSQL's jsonb containment serves the same task).
    app = sqlite_app
    a = app.create_asset(sku_category="NET", sku_code="ip.1", attributes={key: 1})
    t = app.submit(task_type="USE",
                   resource_hints=[{"sku_category": "NET", "attributes": {key: 1}}])
    seen = _drain(app)
    assert app.get_task(t.task_id).status == TaskStatus.SUCCESS, "left QUEUED"
    assert seen[t.task_id] == [a.asset_id]


# -- 4. an integer attribute of 2**63 .. 2**64-1 (accepted at submit) crashes the claim --------


def test_sqlite_hint_attribute_int_above_int64_crashes_the_worker(sqlite_app: Creep) -> None:
    # find_bad_text accepts integers up to 2**64 - 1; binding 2**63 as a SQLite INTEGER
    # raises OverflowError inside the claim, which stops the worker (run_worker raises), on
    # every restart, for every task type it serves. PostgreSQL serves the task.
    app = sqlite_app
    big = 2**63
    a = app.create_asset(sku_category="NET", sku_code="ip.1", attributes={"n": big})
    t = app.submit(task_type="USE",
                   resource_hints=[{"sku_category": "NET", "attributes": {"n": big}}])
    seen = _drain(app)  # raises OverflowError: Python int too large to convert to SQLite INTEGER
    assert app.get_task(t.task_id).status == TaskStatus.SUCCESS
    assert seen[t.task_id] == [a.asset_id]
