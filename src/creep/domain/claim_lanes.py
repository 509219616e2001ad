"""Claim lanes: a PostgreSQL worker's big leased claims split over concurrent transactions.

Opt-in (WorkerSettings.claim_lanes = 2, `creep worker --claim-lanes 2`). Settling the leases
of a worker's finished tasks and leasing assets for its next tasks lock the same asset rows
(a batch of a drain touches most of the pool), so one worker's combined complete-and-claim
transactions run one at a time: the worker's Python waits for PostgreSQL and PostgreSQL for
the worker. With lanes, PostgresStore.task_complete_and_claim runs one transaction per lane
at once, each on its own connection. Assets belong to a lane by a hash of their id; a lane
settles the completions of the tasks it claimed and, when every candidate has the same
health_score and cost_per_lease (only load tells them apart), leases its own assets, so the
lanes rarely want the same asset row. The cost, which is why lanes are opt-in:

- load is balanced within each lane's half of the pool, not across the whole pool;
- a lane serves single-asset tasks from its own half only, and the tasks it reads and
  passes over stay locked until it commits, so the other lane may serve lower-priority
  tasks first: priority order holds within a lane, not across the two. A kind whose assets
  all sit in one half is served only when that half's lane reads it first;
- a task that needs several assets its lane's half cannot give is matched against the whole
  pool, skipping the rows the other lane holds: on a busy pool it may wait long;
- shares of a claim follow what each lane claimed last time on this store (one worker per
  store is the usual case; workers sharing one store share these figures).

Health and cost still decide first: with any difference among the candidates the claim
loaded (all kinds, all pages so far), a lane matches against the whole pool by the usual
rule (domain/matching.py).

Which lane claimed a task is written into its claim token (the low bits of the UUID), so a
completion finds its lane again with no state kept. Lanes only steer: every asset row is
still locked before it is changed, so a completion settled in the "wrong" lane is correct
and at worst waits for the other lane's commit.
"""

from __future__ import annotations

import uuid
import zlib
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
    """The lane an asset belongs to: a hash of its id (ids that share most of their bytes,
    a uuid1's node or sequential ids, still spread over the lanes)."""
    return zlib.crc32(asset_id.encode()) & (LANES - 1)


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
