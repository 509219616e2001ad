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
import uuid
from typing import overload

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
    if n > _POOL_BYTES // 4:
        return os.urandom(n)  # a big batch (uuid7_many): the pool could not hold it
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
    ids per task (a lease, its ledger entry, its asset events) make them a batch at a time.
    The 16 bytes of every id are laid out in one buffer and hex-encoded at once."""
    global _last_ms, _seq
    if n <= 0:
        return []
    ms = time.time_ns() // 1_000_000
    rand_bytes = _random(8 * n + 2)
    # (milliseconds << 12 | sequence) counts on by one per id, as n uuid7() calls would:
    # a sequence past 0xFFF carries into the next millisecond.
    with _lock:
        if ms > _last_ms:
            first = (ms << 12) | (int.from_bytes(rand_bytes[-2:]) & 0x1FF)
        else:
            first = ((_last_ms << 12) | _seq) + 1
        last = first + n - 1
        _last_ms, _seq = last >> 12, last & 0xFFF
    # 48-bit milliseconds, version 7, 12-bit sequence.
    head = b"".join([(((c >> 12) << 16) | 0x7000 | (c & 0xFFF)).to_bytes(8)
                     for c in range(first, last + 1)])
    raw = bytearray(16 * n)
    for k in range(8):  # byte k of every id's head, then byte k of its random tail
        raw[k::16] = head[k::8]
        raw[8 + k::16] = rand_bytes[k:8 * n:8]
    raw[8::16] = raw[8::16].translate(_VARIANT)  # the RFC 4122 variant: 0b10 in the top bits
    hexed = raw.hex().encode()
    text = bytearray(b"-" * (36 * n))
    for to, frm in _LAYOUT:  # each hex digit to its place in the 36-character form
        text[to::36] = hexed[frm::32]
    joined = text.decode()
    return [joined[i:i + 36] for i in range(0, 36 * n, 36)]


#: Byte translation setting the variant bits of a UUID's ninth byte.
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))
#: (position in the 8-4-4-4-12 form, hex digit) for the 32 digits of a UUID.
_LAYOUT = [(i + (i >= 8) + (i >= 12) + (i >= 16) + (i >= 20), i) for i in range(32)]


def uuid4_str() -> str:
    """str(uuid.uuid4()), cheaper."""
    raw = bytearray(_random(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


@overload
def canonical_uuid(value: str) -> str: ...


@overload
def canonical_uuid(value: None) -> None: ...


def canonical_uuid(value: str | None) -> str | None:
    """`value` as creep writes ids (lower case, hyphenated) when it reads as a UUID, else
    unchanged (None, or text that names nothing on either backend).

    PostgreSQL's uuid columns find an id however it is written (upper case, braced, without
    hyphens); SQLite compares text. An id from outside creep (a REST path or filter, a
    Python API argument) is brought to this form where it comes in, so both find the same
    rows. The claim/complete path takes ids creep gave out and skips it."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):  # not a UUID, or not even a string
        return value


def is_uuid(value: object) -> bool:
    """Whether `value` is a string that reads as a UUID (ids that cannot be one name nothing
    stored)."""
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
