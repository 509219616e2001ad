"""TaskLock (seed 003): the state machine of an expiring, fenced hold.

One row per lock_key: acquiring a released or expired lock re-activates its row with a new
token. `active -> active` is legal only as a renewal (same token) or as a takeover after the
previous hold expired (new acquired_at after the old expires_at); the database enforces the
same rule, so nobody can steal a live lock whatever SQL they run.
"""

from __future__ import annotations

from enum import StrEnum

from creep.domain.errors import IllegalTransition


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
