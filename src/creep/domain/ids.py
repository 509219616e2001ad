"""Time-ordered ids (UUID version 7 layout: 48-bit Unix milliseconds, then random bits).

Rows keyed by them are appended at the end of their indexes instead of scattered across
them, which keeps inserts into append-only logs (asset events, ledger, leases) cheap.
"""

from __future__ import annotations

import random
import time


def uuid7() -> str:
    ms = time.time_ns() // 1_000_000
    # The random module reseeds in a forked child, so processes do not share a sequence;
    # one getrandbits is several times cheaper than an os.urandom system call per id.
    rand = random.getrandbits(80)
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
