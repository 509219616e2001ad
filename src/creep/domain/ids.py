"""Time-ordered ids (UUID version 7, RFC 9562) for tasks, asset events, leases and ledger entries.

Ids that grow with time keep every index on task_id (the primary key, the events' task
index, the dependency table) append-mostly: a batch of new tasks, or the events of tasks
created together, dirty a few adjacent pages instead of one random page each. That halves
the pages a commit writes on SQLite and avoids random full-page writes on PostgreSQL; the
append-only logs (asset events, ledger, leases) gain the same way.
"""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def uuid7() -> str:
    """A UUIDv7 string: 48-bit Unix milliseconds, then a 12-bit sequence that keeps ids from
    one process increasing within a millisecond, then 62 random bits."""
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms > _last_ms:
            _last_ms, _seq = ms, int.from_bytes(os.urandom(2)) & 0x1FF
        else:
            # Same millisecond (or the clock stepped back): count on from the last id.
            _seq += 1
            if _seq > 0xFFF:
                _last_ms, _seq = _last_ms + 1, 0
            ms = _last_ms
        seq = _seq
    rand = int.from_bytes(os.urandom(8)) & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
