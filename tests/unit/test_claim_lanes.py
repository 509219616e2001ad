"""Claim lanes (domain/claim_lanes.py): tokens name their lane, shares follow what each lane
could claim, and matching in a lane keeps the matching rule."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from creep.domain.claim_lanes import (
    LANES,
    asset_lane,
    lane_candidates,
    lane_match,
    lane_of,
    lane_shares,
    lane_token,
)
from creep.domain.matching import Candidate, Demand, match_all


def _asset_in(lane: int, **extra: object) -> Candidate:
    while True:
        asset_id = str(uuid.uuid4())
        if asset_lane(asset_id) == lane:
            break
    fields: dict[str, object] = {
        "asset_id": asset_id, "tenant_id": "t", "sku_category": "NET", "sku_code": "ip.1",
        "attributes": {}, "max_concurrency": 2, "current_concurrency": 0,
        "health_score": 100, "cost_per_lease": Decimal("1"), "currency": "USD",
        "status": "READY", **extra,
    }
    return Candidate(**fields)  # type: ignore[arg-type]


def _demand(task_id: str, count: int = 1) -> Demand:
    return Demand(task_id=task_id, tenant_id="t", currency="USD",
                  hints=[{"sku_category": "NET", "min_count": count}], min_health_score=0,
                  max_total_cost=None)


def test_a_token_names_its_lane_and_stays_a_uuid4() -> None:
    for lane in range(LANES):
        tokens = {lane_token(lane) for _ in range(200)}
        assert len(tokens) == 200
        assert {lane_of(t) for t in tokens} == {lane}
        assert {uuid.UUID(t).version for t in tokens} == {4}
    # Any token names some lane: a claim without lanes is settled somewhere.
    assert {lane_of(str(uuid.uuid4())) for _ in range(200)} == set(range(LANES))


@pytest.mark.parametrize(("limit", "last"), [(250, [0, 0]), (250, [250, 0]), (101, [40, 61]),
                                             (64, [0, 64]), (2, [1, 1])])
def test_shares_sum_to_the_limit_and_follow_what_each_lane_claimed(
    limit: int, last: list[int]
) -> None:
    shares = lane_shares(limit, last)
    assert sum(shares) == limit and all(s >= 0 for s in shares)
    if last[0] != last[1]:
        more, less = (0, 1) if last[0] > last[1] else (1, 0)
        assert shares[more] > shares[less] > 0  # the idle lane keeps a floor to look with
    if last == [0, 0]:
        assert abs(shares[0] - shares[1]) <= 1


def test_a_lane_leases_its_own_assets_when_only_load_tells_them_apart() -> None:
    mine = [_asset_in(0), _asset_in(0, current_concurrency=1)]
    other = [_asset_in(1)]  # less loaded than one of mine: the rule alone would take it
    demands = [_demand(f"t{i}") for i in range(4)]
    got = lane_match(demands, [*mine, *other], 10, lane=0)
    assert [m.task_id for m in got if m.picks] == ["t0", "t1", "t2"]
    assert {a.asset_id for m in got for _, a in m.picks} == {a.asset_id for a in mine}
    assert got[3].refusal == "NO_RESOURCE"  # waits for its lane, or the other lane claims it
    assert lane_candidates([*mine, *other], 1) == other


def test_the_rule_decides_when_health_or_cost_differ() -> None:
    healthier = _asset_in(1, health_score=100)
    cheaper = _asset_in(1, cost_per_lease=Decimal("0.5"))
    for pool in ([_asset_in(0, health_score=90), healthier],
                 [_asset_in(0), cheaper]):
        demands = [_demand("t0")]
        fresh = [Candidate(**{f: getattr(c, f) for f in c.__dataclass_fields__}) for c in pool]
        expected = match_all(demands, pool, 1)
        got = lane_match(demands, fresh, 1, lane=0)
        assert [a.asset_id for _, a in got[0].picks] == [a.asset_id for _, a in expected[0].picks]
        assert got[0].picks[0][1].asset_id == pool[1].asset_id  # the other lane's, by the rule


def test_a_task_needing_assets_of_both_lanes_is_matched_from_the_whole_pool() -> None:
    pool = [_asset_in(0, max_concurrency=1), _asset_in(1, max_concurrency=1)]
    got = lane_match([_demand("pair", count=2), _demand("one")], pool, 10, lane=0)
    by_task = {m.task_id: m for m in got}
    assert {a.asset_id for _, a in by_task["pair"].picks} == {a.asset_id for a in pool}
    assert by_task["one"].refusal == "NO_RESOURCE"  # the pair took both: none is left
    assert [m.task_id for m in got] == ["pair", "one"]  # in the demands' order


def test_without_a_lane_matching_is_the_rule_itself() -> None:
    pool = [_asset_in(0, current_concurrency=1), _asset_in(1), _asset_in(0, health_score=90)]
    copies = [Candidate(**{f: getattr(c, f) for f in c.__dataclass_fields__}) for c in pool]
    demands = [_demand(f"t{i}") for i in range(5)] + [_demand("pair", count=2)]
    got = lane_match(demands, pool, 10, lane=None)
    want = match_all(demands, copies, 10)
    assert [(m.task_id, [a.asset_id for _, a in m.picks], m.refusal) for m in got] == [
        (m.task_id, [a.asset_id for _, a in m.picks], m.refusal) for m in want]
