"""Claim lanes: a PostgreSQL worker's big leased claims split over concurrent transactions.

Settling the leases of a worker's finished tasks and leasing assets for its next tasks lock
the same asset rows (a batch of a drain touches most of the pool), so one worker's combined
complete-and-claim transactions ran one at a time: the worker's Python waited for
PostgreSQL and PostgreSQL for the worker, about one core of two busy. With lanes,
`task_complete_and_claim` runs one transaction per lane at once, each on its own
connection. Assets belong to a lane by the last byte of their id; a lane settles the
completions of the tasks it claimed and, where the matching rule allows, leases its own
assets, so the lanes rarely want the same asset row.

The matching rule (domain/matching.py) is kept: a lane prefers its own assets only when
every candidate has the same health_score and cost_per_lease, where the rule would rank
them by load alone; then the load is balanced within each lane's half of the pool. A task
that needs several assets and that its lane's assets cannot serve (one in each lane) is
matched against the whole pool, so lanes never starve it. One that needs a single asset
waits for its lane's assets, or for the other lane, which reads the queue too: taking the
other lane's assets whenever its own are busy would have the lanes lock each other's rows.

Which lane claimed a task is written into its claim token (the low bits of the UUID), so a
completion finds its lane again in any process, with no state kept. Lanes only steer: every
asset row is still locked before it is changed, so a completion settled in the "wrong" lane
(a token from a claim without lanes, a task holding assets of both lanes) is correct and at
worst waits for the other lane's commit. Settling locks asset rows in asset id order and
claiming skips locked ones, so lanes cannot deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from creep.domain.matching import Candidate, Demand, Match, match_all

#: Lanes of one worker's combined claims (a power of two: a lane is an id's low bits).
LANES = 2
#: The smallest claim split into lanes: each lane costs a transaction of its own.
MIN_LANE_CLAIM = 32 * LANES


def lane_token(lane: int) -> str:
    """A new random claim token that names `lane`."""
    return str(uuid.UUID(int=(uuid.uuid4().int & ~(LANES - 1)) | lane))


def lane_of(token: str) -> int:
    """The lane a claim token names (any token names one)."""
    return int(token[-1], 16) & (LANES - 1)


def asset_lane(asset_id: str) -> int:
    """The lane an asset belongs to: its id's last byte (random in a uuid7)."""
    return int(asset_id[-2:], 16) & (LANES - 1)


def lane_shares(limit: int, last: Sequence[int]) -> list[int]:
    """How many of `limit` tasks each lane claims, given what each claimed last time: in
    proportion, so a lane whose assets are busy leaves its share to one that has room, with
    a floor so that every lane keeps looking. Sums to `limit`."""
    weights = [n + max(1, limit // (4 * LANES)) for n in last]
    total = sum(weights)
    shares = [limit * w // total for w in weights]
    for lane in range(limit - sum(shares)):  # the rounding's remainder, one each
        shares[lane % LANES] += 1
    return shares


def lane_candidates(candidates: Sequence[Candidate], lane: int | None) -> list[Candidate]:
    """The candidates a claim in `lane` leases a single asset from: its own lane's when the
    rule cannot tell the candidates apart but by load, else all of them."""
    if lane is None or len({(c.health_score, c.cost_per_lease) for c in candidates}) > 1:
        return list(candidates)
    return [c for c in candidates if asset_lane(c.asset_id) == lane]


def lane_match(
    demands: Sequence[Demand], candidates: Sequence[Candidate], limit: int, lane: int | None
) -> list[Match]:
    """match_all for a claim in `lane` (None: no lane): from its own assets when the rule
    cannot tell the candidates apart but by load (the whole pool for a task of several
    assets they cannot serve), else from all."""
    own = lane_candidates(candidates, lane)
    return match_all(demands, candidates, limit,
                     preferred=None if len(own) == len(candidates) else own)
