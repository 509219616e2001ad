"""Random (version 4) UUIDs from a pooled os.urandom buffer.

uuid.uuid4() makes one getrandom() syscall per id, and CPython releases the GIL around it; on
the API's hot path each release let the task-writer thread take the GIL for a whole switch
interval. One syscall per 256 ids keeps the ids as unpredictable (still the OS CSPRNG)."""

from __future__ import annotations

import os
import threading

_POOL = 256
_lock = threading.Lock()
_buf = b""
_pos = 0


def _forget() -> None:
    global _buf, _pos
    _buf, _pos = b"", 0


# A forked child must not hand out the ids its parent still holds in the pool.
os.register_at_fork(after_in_child=_forget)


def uuid4_str() -> str:
    """str(uuid.uuid4()), cheaper."""
    global _buf, _pos
    with _lock:
        if _pos >= len(_buf):
            _buf = os.urandom(16 * _POOL)
            _pos = 0
        raw = bytearray(_buf[_pos:_pos + 16])
        _pos += 16
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"
