"""Matching task resource hints to pooled assets (pure; the stores call it inside the claim
transaction with the candidate rows they locked).

Rule: tasks are served in claim order (priority desc, created_at). For each hint, candidates
are assets of the task's tenant and currency with the hint's sku_category, its sku_code
(exact, or `prefix.*`), every attribute equal (JSON equality: true is not 1), health_score >= constraints.min_health_score,
status READY or IN_USE and spare concurrency. Among candidates creep prefers, in order:
higher health_score, lower load (current/max concurrency), lower cost_per_lease, asset_id.
`preferred` (a claim lane's own assets, domain/claim_lanes.py) narrows the candidates of
every demand but those of several assets it cannot serve.
A task takes all of its hints or nothing. Each hint takes its best candidates in turn; when
hints overlap (`ip.*` and `ip.x`) and that leaves one without candidates, the hints are tried
in the other orders (every order up to MAX_ORDERED_HINTS hints), then, for tasks of up to
MAX_EXACT_LEASES leases, every assignment: a task the pool can serve is served. When the
preferred set would take the task's cost over max_total_cost, the cheapest set is tried (for
up to MAX_EXACT_LEASES leases the cheapest there is; past that, the cheapest found trying the
hints in every order); if that is over budget too, the task fails with BUDGET_EXCEEDED.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson


@dataclass(slots=True)
class Candidate:
    asset_id: str
    tenant_id: str
    sku_category: str
    sku_code: str
    attributes: dict[str, Any]
    max_concurrency: int
    current_concurrency: int
    health_score: int
    cost_per_lease: Decimal
    currency: str
    status: str
    #: Leases handed out from this asset in the current batch.
    taken: int = 0

    @property
    def spare(self) -> int:
        return self.max_concurrency - self.current_concurrency - self.taken

    def preference(self) -> tuple[Any, ...]:
        load = (self.current_concurrency + self.taken) / self.max_concurrency
        return (-self.health_score, load, self.cost_per_lease, self.asset_id)

    def thrift(self) -> tuple[Any, ...]:
        return (self.cost_per_lease, *self.preference())


@dataclass(slots=True)
class Demand:
    task_id: str
    tenant_id: str
    currency: str
    hints: list[dict[str, Any]]
    min_health_score: float
    max_total_cost: Decimal | None
    spent: Decimal = Decimal(0)


@dataclass(slots=True)
class Match:
    task_id: str
    #: (hint_index, asset) for every lease to take.
    picks: list[tuple[int, Candidate]] = field(default_factory=list)
    #: None: matched; "NO_RESOURCE": wait; "BUDGET_EXCEEDED": fail now.
    refusal: str | None = None
    cost: Decimal = Decimal(0)


def code_matches(pattern: str | None, code: str) -> bool:
    if pattern is None:
        return True
    if pattern.endswith(".*"):
        return code.startswith(pattern[:-1])
    return code == pattern


def _static_fits(hint: dict[str, Any], demand: Demand, asset: Candidate) -> bool:
    """Everything but spare concurrency, which changes as a batch is matched."""
    if asset.sku_category != hint["sku_category"] or asset.tenant_id != demand.tenant_id:
        return False
    if asset.currency != demand.currency or asset.status not in ("READY", "IN_USE"):
        return False
    if asset.health_score < demand.min_health_score:
        return False
    if not code_matches(hint.get("sku_code"), asset.sku_code):
        return False
    attrs = hint.get("attributes") or {}
    return all(json_equal(asset.attributes.get(k), v) for k, v in attrs.items())


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values as the databases see it: true is not 1 (Python says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class _Ranked:
    """Candidates of one hint in preference order: a heap with lazy re-keying. Keys only
    grow as leases are handed out (load rises), and within one match only `taken` changes,
    so an entry records the `taken` it was keyed at: a popped entry whose asset was taken
    from since (here or through another hint's heap) is pushed back with its current key; an
    asset without spare concurrency is dropped."""

    def __init__(self, assets: Iterable[Candidate], key: Callable[[Candidate], Any]) -> None:
        self.key = key
        self.heap = [(key(a), a.asset_id, a, a.taken) for a in assets if a.spare > 0]
        heapq.heapify(self.heap)

    def take(self, need: int, used: set[str]) -> list[Candidate] | None:
        got: list[tuple[Any, str, Candidate, int]] = []
        passed: list[tuple[Any, str, Candidate, int]] = []
        heap = self.heap
        while len(got) < need and heap:
            entry = heap[0]
            asset = entry[2]
            if asset.spare <= 0:
                heapq.heappop(heap)
            elif asset.taken != entry[3]:  # taken from since it was keyed: one sift
                heapq.heapreplace(heap, (self.key(asset), entry[1], asset, asset.taken))
            else:
                heapq.heappop(heap)
                (passed if entry[1] in used else got).append(entry)
        # Back as they were: if the caller takes them (all or none) their keys are stale,
        # too low, and re-keyed when met; if not, they are still exact.
        for entry in passed + got:
            heapq.heappush(heap, entry)
        return [entry[2] for entry in got] if len(got) == need else None

    def top(self, n: int) -> list[Candidate]:
        """Up to `n` best candidates with spare concurrency, best first (nothing taken)."""
        got: list[Candidate] = []
        while len(got) < n:
            best = self.take(len(got) + 1, set())
            if best is None:
                break
            got = best
        return got


class _Pool:
    """The candidates, with the static filter of each distinct hint computed once."""

    def __init__(self, assets: Sequence[Candidate]) -> None:
        self.assets = assets
        self._ranked: dict[tuple[Any, ...], _Ranked] = {}
        # Demands of one kind share their decoded hint objects (the stores decode each
        # distinct text once): looked up by identity first, without building the full key.
        self._by_hint: dict[tuple[Any, ...], tuple[dict[str, Any], _Ranked]] = {}

    def ranked(self, hint: dict[str, Any], demand: Demand, thrifty: bool) -> _Ranked:
        fast = (id(hint), demand.tenant_id, demand.currency, demand.min_health_score, thrifty)
        known = self._by_hint.get(fast)
        if known is not None and known[0] is hint:
            return known[1]
        attrs = hint.get("attributes")
        key = (hint["sku_category"], hint.get("sku_code"),
               orjson.dumps(attrs, option=orjson.OPT_SORT_KEYS) if attrs else b"",
               demand.tenant_id, demand.currency, demand.min_health_score, thrifty)
        found = self._ranked.get(key)
        if found is None:
            fitting = (a for a in self.assets if _static_fits(hint, demand, a))
            found = _Ranked(fitting, Candidate.thrift if thrifty else Candidate.preference)
            self._ranked[key] = found
        self._by_hint[fast] = (hint, found)
        return found


#: Up to this many hints, every order of them is tried (5 hints: 120 orders); past it, the
#: given order and its reverse.
MAX_ORDERED_HINTS = 5


#: Up to this many leases in all, a task whose hints the orders above cannot serve is
#: searched exhaustively (and a budgeted one for its cheapest set).
MAX_EXACT_LEASES = 6


def _pick(demand: Demand, pool: _Pool, thrifty: bool) -> list[tuple[int, Candidate]] | None:
    """The first set that serves every hint, the hints taken in their given order first;
    `thrifty`: the cheapest set."""
    first = _pick_in(demand, pool, thrifty, range(len(demand.hints)))
    if len(demand.hints) < 2 or (first is not None and not thrifty):
        return first
    best, best_cost = first, _cost(first)
    for order in _other_orders(len(demand.hints)):
        picks = _pick_in(demand, pool, thrifty, order)
        if picks is None:
            continue
        if not thrifty:
            return picks
        cost = _cost(picks)
        if best is None or cost < best_cost:
            best, best_cost = picks, cost
    if best is None or thrifty:
        exact = _search(demand, pool, thrifty)
        if exact is not None and (best is None or _cost(exact) < best_cost):
            best = exact
    return best


def _search(demand: Demand, pool: _Pool, thrifty: bool) -> list[tuple[int, Candidate]] | None:
    """Every assignment of distinct assets to the hints' slots (overlapping hints that each
    need several assets defeat any order of greedy picks): the first in preference order, or
    with `thrifty` the cheapest. Bounded to MAX_EXACT_LEASES slots; a hint needs only its
    best `slots` candidates, as the others can take at most the rest."""
    needs = [int(h.get("min_count", 1)) for h in demand.hints]
    total = sum(needs)
    if total > MAX_EXACT_LEASES:
        return None
    options = [pool.ranked(h, demand, thrifty).top(total) for h in demand.hints]
    slots = [i for i, n in enumerate(needs) for _ in range(n)]
    chosen: list[tuple[int, Candidate]] = []
    used: set[str] = set()
    best: list[tuple[int, Candidate]] | None = None
    best_cost = Decimal(0)

    def fill(slot: int, first: int, cost: Decimal) -> None:
        nonlocal best, best_cost
        if best is not None and (not thrifty or cost >= best_cost):
            return
        if slot == len(slots):
            best, best_cost = list(chosen), cost
            return
        hint = slots[slot]
        for j in range(first, len(options[hint])):
            asset = options[hint][j]
            if asset.asset_id in used:
                continue
            used.add(asset.asset_id)
            chosen.append((hint, asset))
            # A hint's own slots take its options in order: each set is tried once.
            same = slot + 1 < len(slots) and slots[slot + 1] == hint
            fill(slot + 1, j + 1 if same else 0, cost + asset.cost_per_lease)
            chosen.pop()
            used.discard(asset.asset_id)

    fill(0, 0, Decimal(0))
    return best


def _cost(picks: list[tuple[int, Candidate]] | None) -> Decimal:
    return sum((a.cost_per_lease for _, a in picks or []), Decimal(0))


def _other_orders(n: int) -> Iterator[Sequence[int]]:
    if n <= MAX_ORDERED_HINTS:
        yield from itertools.islice(itertools.permutations(range(n)), 1, None)
    else:
        yield range(n - 1, -1, -1)


def _pick_in(
    demand: Demand, pool: _Pool, thrifty: bool, order: Iterable[int]
) -> list[tuple[int, Candidate]] | None:
    """Each hint in `order` takes its best candidates not taken by an earlier one; the
    picks are returned in hint order."""
    chosen: list[tuple[int, Candidate]] = []
    used: set[str] = set()
    hints = demand.hints
    for i in order:
        hint = hints[i]
        best = pool.ranked(hint, demand, thrifty).take(int(hint.get("min_count", 1)), used)
        if best is None:
            return None
        for asset in best:
            chosen.append((i, asset))
            used.add(asset.asset_id)
    chosen.sort(key=lambda pick: pick[0])
    return chosen


def match_all(
    demands: Iterable[Demand], candidates: Sequence[Candidate], limit: int | None = None,
    preferred: Sequence[Candidate] | None = None,
) -> list[Match]:
    """Match demands in order against the pool, consuming spare concurrency as it goes;
    stop once `limit` demands are matched. With `preferred` (a part of `candidates`, e.g. a
    claim lane's own assets), demands take from it alone, except those of several assets
    it cannot serve, which take from all the candidates."""
    pool = _Pool(candidates)
    first = pool if preferred is None else _Pool(preferred)
    out: list[Match] = []
    matched = 0
    for demand in demands:
        if limit is not None and matched >= limit:
            break
        match = Match(demand.task_id)
        source = first
        picks = _pick(demand, source, thrifty=False)
        if picks is None and source is not pool and _several(demand):
            source = pool
            picks = _pick(demand, source, thrifty=False)
        if picks is None:
            match.refusal = "NO_RESOURCE"
            out.append(match)
            continue
        cost = picks[0][1].cost_per_lease if len(picks) == 1 else sum(
            (a.cost_per_lease for _, a in picks), Decimal(0))
        if demand.max_total_cost is not None and demand.spent + cost > demand.max_total_cost:
            cheap = _pick(demand, source, thrifty=True)
            cheap_cost = _cost(cheap)
            if cheap is None or demand.spent + cheap_cost > demand.max_total_cost:
                match.refusal = "BUDGET_EXCEEDED"
                match.cost = cost
                out.append(match)
                continue
            picks, cost = cheap, cheap_cost
        for _, asset in picks:
            asset.taken += 1
        match.picks = picks
        match.cost = cost
        matched += 1
        out.append(match)
    return out


def _several(demand: Demand) -> bool:
    return sum(int(h.get("min_count", 1)) for h in demand.hints) > 1
