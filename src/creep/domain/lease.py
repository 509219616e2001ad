"""Lease: one task's time-boxed hold on one asset, with its status machine."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from creep.domain.errors import IllegalTransition


class LeaseStatus(StrEnum):
    ACTIVE = "ACTIVE"
    RELEASED = "RELEASED"  # the task finished (or an operator released a kept lease)
    EXPIRED = "EXPIRED"  # the task's claim expired: the rescuer took the task back
    REVOKED = "REVOKED"  # the asset was banned, sold or archived while leased


L = LeaseStatus

#: The one table of legal lease transitions: a lease ends once.
LEASE_TRANSITIONS: dict[LeaseStatus, frozenset[LeaseStatus]] = {
    L.ACTIVE: frozenset({L.RELEASED, L.EXPIRED, L.REVOKED}),
    L.RELEASED: frozenset(),
    L.EXPIRED: frozenset(),
    L.REVOKED: frozenset(),
}


def check_lease_transition(old: LeaseStatus | str, new: LeaseStatus | str) -> None:
    old_s, new_s = LeaseStatus(old), LeaseStatus(new)
    if new_s not in LEASE_TRANSITIONS[old_s]:
        raise IllegalTransition("lease", old_s.value, new_s.value)


@dataclass(slots=True)
class Lease:
    lease_id: str
    tenant_id: str
    task_id: str
    asset_id: str
    status: LeaseStatus
    acquired_at: datetime
    #: Follows the task's claim: renewed by each heartbeat. None for a kept lease
    #: (constraints.keep_leases) after its task finished: it lasts until released.
    expires_at: datetime | None
    released_at: datetime | None
    cost: Decimal
    currency: str
    #: The claim (fencing token) under which the lease was taken.
    claim_token: str
    #: Which hint of the task this lease satisfies (index into resource_hints).
    hint_index: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
