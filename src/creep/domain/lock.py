"""TaskLock (seed 003): the state machine of an expiring, fenced hold.

One row per lock_key: acquiring a released or expired lock re-activates its row with a new
token. `active -> active` is legal only as a renewal (same token) or as a takeover after the
previous hold expired (new acquired_at after the old expires_at); the database enforces the
same rule, so nobody can steal a live lock whatever SQL they run.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from creep.domain.errors import IllegalTransition, ValidationError

#: The shortest TTL a lock is taken or renewed for, in seconds (`creep scheduler --lock-ttl`
#: has the same floor). Seed 003 (TaskLock 验证规则): `expires_at` > `acquired_at`, which
#: both schemas check too (sqlite 0018, postgres 0019).
MIN_LOCK_TTL = 0.5
#: The longest: a year (an expiry past any real outage, yet far from the largest timestamp).
MAX_LOCK_TTL = 366 * 24 * 3600.0


def check_lock_ttl(value: Any, name: str = "lock_ttl") -> float:
    """A lock TTL in seconds: a finite number from MIN_LOCK_TTL to MAX_LOCK_TTL (a bool or a
    string is refused, as is zero or less: the lock would expire when taken)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and MIN_LOCK_TTL <= value <= MAX_LOCK_TTL
    ):
        raise ValidationError.single(
            name, f"must be a number of seconds from {MIN_LOCK_TTL} to {MAX_LOCK_TTL:.0f}")
    return float(value)


class LockState(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"


L = LockState
LOCK_TRANSITIONS: dict[LockState, frozenset[LockState]] = {
    L.ACTIVE: frozenset({L.RELEASED, L.EXPIRED, L.ACTIVE}),  # ACTIVE: renewal/takeover only
    L.RELEASED: frozenset({L.ACTIVE}),
    L.EXPIRED: frozenset({L.ACTIVE}),
}


def check_lock_transition(
    old: LockState | str, new: LockState | str, *, same_token: bool, old_expired: bool
) -> None:
    o, n = LockState(old), LockState(new)
    ok = n in LOCK_TRANSITIONS[o]
    if o is L.ACTIVE and n is L.ACTIVE:
        ok = same_token or old_expired
    if not ok:
        raise IllegalTransition("lock", o.value, n.value)
