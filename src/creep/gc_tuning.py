"""Fewer garbage-collector passes while creep moves large batches.

A claim of 500 tasks, a bulk submission or a burst of completions allocates tens of
thousands of short-lived containers. With CPython's default first-generation threshold
(700 allocations) that is a collection every few tasks, and the survivors push older
generations into full passes over every object in the process: 15-20 % of a worker's CPU
in the queue benchmark. Raising the threshold for the duration keeps the collector on,
just less often. Process-wide, so nested and concurrent users share one saved setting.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: First-generation threshold while batches are in flight (the interpreter default is 700).
BATCH_THRESHOLD = 20_000

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def fewer_collections(threshold: int = BATCH_THRESHOLD) -> Iterator[None]:
    """Raise the first-generation threshold to `threshold` inside the block; the previous
    thresholds come back when the last concurrent user leaves. A threshold of 0 (the
    collector switched off by the application) or one already higher is left alone."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            current = gc.get_threshold()
            if 0 < current[0] < threshold:
                _saved = current
                gc.set_threshold(threshold, current[1], current[2])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
