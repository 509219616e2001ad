"""match_all against a plain reading of its rule (domain/matching.py's docstring): every
demand in order takes, hint by hint, the `min_count` most preferred fitting assets with
spare concurrency it has not picked already, all or nothing, with the cheapest set tried
when the preferred one is over budget."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creep.domain.matching import Candidate, Demand, Match, _static_fits, match_all

relaxed = settings(deadline=None, max_examples=300,
                   suppress_health_check=[HealthCheck.too_slow])


def reference(demands: list[Demand], pool: list[Candidate]) -> list[Match]:
    taken = {a.asset_id: 0 for a in pool}

    def spare(a: Candidate) -> int:
        return a.max_concurrency - a.current_concurrency - taken[a.asset_id]

    def key(a: Candidate, thrifty: bool) -> tuple[Any, ...]:
        load = (a.current_concurrency + taken[a.asset_id]) / a.max_concurrency
        pref = (-a.health_score, load, a.cost_per_lease, a.asset_id)
        return (a.cost_per_lease, *pref) if thrifty else pref

    def pick(x: Demand, thrifty: bool) -> list[tuple[int, Candidate]] | None:
        chosen: list[tuple[int, Candidate]] = []
        for i, hint in enumerate(x.hints):
            used = {a.asset_id for _, a in chosen}
            fits = sorted((a for a in pool if _static_fits(hint, x, a) and spare(a) > 0
                           and a.asset_id not in used), key=lambda a: key(a, thrifty))
            need = int(hint.get("min_count", 1))
            if len(fits) < need:
                return None
            chosen += [(i, a) for a in fits[:need]]
        return chosen

    out = []
    for x in demands:
        m = Match(x.task_id)
        picks = pick(x, False)
        if picks is None:
            m.refusal = "NO_RESOURCE"
            out.append(m)
            continue
        cost = sum((a.cost_per_lease for _, a in picks), Decimal(0))
        if x.max_total_cost is not None and x.spent + cost > x.max_total_cost:
            cheap = pick(x, True)
            cheap_cost = sum((a.cost_per_lease for _, a in cheap or []), Decimal(0))
            if cheap is None or x.spent + cheap_cost > x.max_total_cost:
                m.refusal, m.cost = "BUDGET_EXCEEDED", cost
                out.append(m)
                continue
            picks, cost = cheap, cheap_cost
        for _, a in picks:
            taken[a.asset_id] += 1
        m.picks, m.cost = picks, cost
        out.append(m)
    return out


assets = st.lists(
    st.tuples(st.sampled_from(["NET", "FUND"]), st.integers(0, 100), st.integers(1, 3),
              st.integers(0, 3), st.sampled_from(["0", "1", "2.5"])),
    min_size=1, max_size=12,
)
hints = st.lists(st.tuples(st.sampled_from(["NET", "FUND"]), st.integers(1, 2)),
                 min_size=1, max_size=2)
demands = st.lists(st.tuples(hints, st.sampled_from([None, "1", "3", "6"]),
                             st.sampled_from([0, 50])), min_size=1, max_size=25)


@relaxed
@given(assets, demands)
def test_match_all_follows_the_rule(pool_spec: list[Any], demand_spec: list[Any]) -> None:
    def pool() -> list[Candidate]:
        return [Candidate(f"a{i}", "t", cat, "x", {}, mx, min(cur, mx), health,
                          Decimal(cost), "USD", "READY")
                for i, (cat, health, mx, cur, cost) in enumerate(pool_spec)]

    # Demands of one kind share their hint objects, as the stores decode them.
    shared: dict[str, list[dict[str, Any]]] = {}
    wanted = []
    for k, (hs, budget, health) in enumerate(demand_spec):
        text = repr(hs)
        decoded = shared.setdefault(text, [{"sku_category": c, "min_count": n} for c, n in hs])
        wanted.append(Demand(f"t{k}", "t", "USD", decoded, health,
                             None if budget is None else Decimal(budget)))
    got = match_all(wanted, pool())
    expected = reference(wanted, pool())
    assert [(m.task_id, m.refusal, m.cost, [(i, a.asset_id) for i, a in m.picks])
            for m in got] == [(m.task_id, m.refusal, m.cost,
                               [(i, a.asset_id) for i, a in m.picks]) for m in expected]
