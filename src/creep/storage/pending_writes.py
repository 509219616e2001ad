"""Writes that ride along in the next write transaction of the current context.

A caller (the REST API) queues a write, e.g. the audit row of a request, then calls an ordinary
store method. The store's write-transaction helper applies every queued write just before it
commits, on the same connection: the change and its audit row commit together or not at all,
and no store method needs an extra parameter. Outside such a scope this costs one
ContextVar lookup per transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol


class PendingWrite(Protocol):
    def apply(self, store: Any, conn: Any) -> bool:
        """Write inside the store's open transaction on `conn`; True once done (False: try
        again at the next write transaction of this scope)."""
        ...


_pending: ContextVar[list[PendingWrite] | None] = ContextVar("creep_pending_writes", default=None)


@contextmanager
def riding(*writes: PendingWrite) -> Iterator[list[PendingWrite]]:
    """Queue `writes` for the write transactions run inside this block. Nested blocks share
    one queue, so the writes of an outer block ride along too."""
    outer = _pending.get()
    if outer is not None:
        outer.extend(writes)
        try:
            yield outer
        finally:
            for write in writes:  # leave the outer block's queue as it was
                if any(w is write for w in outer):
                    outer.remove(write)
        return
    queue = list(writes)
    token = _pending.set(queue)
    try:
        yield queue
    finally:
        _pending.reset(token)


def waiting() -> bool:
    """True when writes wait to ride along with the next write transaction."""
    return bool(_pending.get())


def add(write: PendingWrite) -> None:
    """Queue one more write in the current scope (which must exist)."""
    queue = _pending.get()
    if queue is None:
        raise RuntimeError("no pending-writes scope is open")
    queue.append(write)


def queued() -> list[PendingWrite]:
    """The writes waiting in this scope now (a copy), for `restore`."""
    return list(_pending.get() or ())


def restore(writes: list[PendingWrite]) -> None:
    """Queue exactly `writes` again, after a transaction that flushed them was rolled back
    (so that the next one writes them)."""
    queue = _pending.get()
    if queue is not None:
        queue[:] = writes


def take_created_audits() -> list[Any]:
    """The audit rows that queued writes offer to write with a task insert itself (their
    `created_task_audits()`: rows to keep only for tasks the insert creates; None declines).
    Those writes leave the queue; `restore` puts them back if the transaction fails."""
    queue = _pending.get()
    if not queue:
        return []
    rows: list[Any] = []
    for write in list(queue):
        offer = getattr(write, "created_task_audits", None)
        folded = offer() if offer is not None else None
        if folded is not None:
            rows.extend(folded)
            queue.remove(write)
    return rows


@contextmanager
def kept_on_error() -> Iterator[None]:
    """Queue again what waits now if the block raises (its transaction rolled back), e.g.
    writes taken out by take_created_audits."""
    saved = queued()
    try:
        yield
    except BaseException:
        restore(saved)
        raise


def before_change(store: Any, conn: Any) -> None:
    """Called by a store inside its write transaction right before a change that removes
    what a queued write reads (a delete): each write with a `before_change(store, conn)`
    reads it now (e.g. an audit row's old image, as the transaction sees it)."""
    for write in _pending.get() or ():
        hook = getattr(write, "before_change", None)
        if hook is not None:
            hook(store, conn)


def flush(store: Any, conn: Any) -> None:
    """Called by a store right before COMMIT. An exception aborts the transaction."""
    queue = _pending.get()
    if not queue:
        return
    # Apply before removing: if a write raises, the transaction rolls back and nothing is lost.
    done = [w for w in list(queue) if w.apply(store, conn)]
    for w in done:
        queue.remove(w)
