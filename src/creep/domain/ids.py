"""Time-ordered ids (UUID version 7, RFC 9562) for tasks, asset events, leases and ledger entries.

Ids that grow with time keep every index on task_id (the primary key, the events' task
index, the dependency table) append-mostly: a batch of new tasks, or the events of tasks
created together, dirty a few adjacent pages instead of one random page each. That halves
the pages a commit writes on SQLite and avoids random full-page writes on PostgreSQL; the
append-only logs (asset events, ledger, leases) gain the same way.

`uuid4_str()`: random (version 4) UUIDs from a pooled os.urandom buffer. uuid.uuid4() makes one
getrandom() syscall per id, and CPython releases the GIL around it; on the API's hot path each
release let the task-writer thread take the GIL for a whole switch interval. One syscall per
256 ids keeps the ids as unpredictable (still the OS CSPRNG).
"""

from __future__ import annotations

import os
import threading
import time

_POOL_BYTES = 4096
_pool_lock = threading.Lock()
_buf = b""
_pos = 0


def _forget() -> None:
    global _buf, _pos
    _buf, _pos = b"", 0


# A forked child must not hand out the random bytes its parent still holds in the pool.
os.register_at_fork(after_in_child=_forget)


def _random(n: int) -> bytes:
    """n bytes from the OS CSPRNG, read 4 KB at a time (one syscall, one GIL release)."""
    global _buf, _pos
    with _pool_lock:
        if _pos + n > len(_buf):
            _buf, _pos = os.urandom(_POOL_BYTES), 0
        out = _buf[_pos:_pos + n]
        _pos += n
    return out


_lock = threading.Lock()
_last_ms = 0
_seq = 0


def uuid7() -> str:
    """A UUIDv7 string: 48-bit Unix milliseconds, then a 12-bit sequence that keeps ids from
    one process increasing within a millisecond, then 62 random bits."""
    global _last_ms, _seq
    ms = time.time_ns() // 1_000_000
    rand_bytes = _random(10)
    with _lock:
        if ms > _last_ms:
            _last_ms, _seq = ms, int.from_bytes(rand_bytes[8:]) & 0x1FF
        else:
            # Same millisecond (or the clock stepped back): count on from the last id.
            _seq += 1
            if _seq > 0xFFF:
                _last_ms, _seq = _last_ms + 1, 0
            ms = _last_ms
        seq = _seq
    rand = int.from_bytes(rand_bytes[:8]) & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"



def uuid7_many(n: int) -> list[str]:
    """n UUIDv7 strings, as n calls of uuid7() would give them (increasing, in this order),
    for one clock read, one random read and one lock: the hot paths that write several
    ids per task (a lease, its ledger entry, its asset events) make them a batch at a time."""
    global _last_ms, _seq
    if n <= 0:
        return []
    ms = time.time_ns() // 1_000_000
    rand_bytes = _random(8 * n + 2)
    stamps: list[tuple[int, int]] = []
    with _lock:
        for _ in range(n):
            if ms > _last_ms:
                _last_ms, _seq = ms, int.from_bytes(rand_bytes[-2:]) & 0x1FF
            else:
                _seq += 1
                if _seq > 0xFFF:
                    _last_ms, _seq = _last_ms + 1, 0
            stamps.append((_last_ms, _seq))
    out: list[str] = []
    for i, (at, seq) in enumerate(stamps):
        rand = int.from_bytes(rand_bytes[8 * i:8 * i + 8]) & 0x3FFF_FFFF_FFFF_FFFF
        h = f"{(at << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand:032x}"
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out

def uuid4_str() -> str:
    """str(uuid.uuid4()), cheaper."""
    raw = bytearray(_random(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"
