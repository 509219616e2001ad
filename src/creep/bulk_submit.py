"""Writing a checked bulk submission chunk by chunk (app.submit_many), overlapped.

Every order was checked first (check_orders), so building a chunk's specs cannot fail and may
run beside the writes. The database works without the GIL (SQLite's C code, PostgreSQL's
server), so while chunk k is written the next chunk's specs are built in a helper thread.
A store that sets `bulk_writers` > 1 (PostgreSQL: one server process per connection) writes
that many chunks at once, each in its own transaction on its own connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from creep.domain.bulk_specs import Checked, build_specs
from creep.domain.task import TaskOrder
from creep.domain.task_spec import Limits, TaskSpec
from creep.ports import Store
from creep.storage import pending_writes


def write_chunks(
    store: Store, items: Sequence[Mapping[str, Any]], checked: Sequence[Checked],
    limits: Limits, now: datetime, chunk: int,
) -> list[TaskOrder]:
    """Create the tasks of `items` in transactions of `chunk` orders; the answer keeps
    submission order. When a chunk fails its error is raised; the chunks written before it
    stay, and so may those already being written beside it (at most bulk_writers - 1 of
    them); no later chunk is started."""
    bounds = [(a, a + chunk) for a in range(0, len(items), chunk)]
    writers = int(getattr(store, "bulk_writers", 1))
    if writers > 1 and not pending_writes.waiting() and _distinct_keys(items, checked):
        # (Writes riding along belong to this thread's transaction; one key in two chunks
        # written at once would make one wait on the other's lock, or deadlock.)
        return _side_by_side(store, items, checked, limits, now, bounds, writers)
    # A store that can prepare a chunk's rows without its database (SQLite) has that done
    # ahead too: the writing thread is then left mostly the database's own work.
    prepare = getattr(store, "task_prepare_many", None)

    def build(k: int) -> tuple[list[TaskSpec], dict[str, Any]]:
        a, b = bounds[k]
        specs = build_specs(items[a:b], checked[a:b], limits, False)
        return specs, {} if prepare is None else {"prepared": prepare(specs, now)}

    out: list[TaskOrder] = []
    with ThreadPoolExecutor(1, thread_name_prefix="creep-submit") as pool:
        ahead = pool.submit(build, 0)
        for k in range(len(bounds)):
            specs, prepared = ahead.result()
            if k + 1 < len(bounds):
                ahead = pool.submit(build, k + 1)
            out.extend(store.task_create_many(specs, now, **prepared))
    return out


def _side_by_side(
    store: Store, items: Sequence[Mapping[str, Any]], checked: Sequence[Checked],
    limits: Limits, now: datetime, bounds: list[tuple[int, int]], writers: int,
) -> list[TaskOrder]:
    def build(k: int) -> list[TaskSpec]:
        a, b = bounds[k]
        return build_specs(items[a:b], checked[a:b], limits, False)

    built: list[Future[list[TaskSpec]]] = []

    def job(k: int) -> list[TaskOrder]:
        return store.task_create_many(built[k].result(), now)

    # A window of `writers` chunks in submission order: the next chunk starts only when the
    # oldest one in flight has committed, so when a chunk fails, at most the writers - 1
    # chunks beside it may still commit and no later one starts. Specs are built on their own
    # thread, ahead of the window: the writers, which mostly wait on their servers, take the
    # next chunk as soon as one commits instead of building it first.
    out: list[TaskOrder] = []
    with ThreadPoolExecutor(1, thread_name_prefix="creep-build") as builder, \
            ThreadPoolExecutor(writers, thread_name_prefix="creep-submit") as pool:
        try:
            built.extend(builder.submit(build, k) for k in range(min(writers + 1, len(bounds))))
            window: deque[Future[list[TaskOrder]]] = deque(
                pool.submit(job, k) for k in range(min(writers, len(bounds))))
            for k in range(len(bounds)):
                out.extend(window.popleft().result())
                if len(built) < len(bounds):
                    built.append(builder.submit(build, len(built)))
                if k + writers < len(bounds):
                    window.append(pool.submit(job, k + writers))
        finally:
            builder.shutdown(wait=False, cancel_futures=True)  # a failed chunk: no more specs
    return out


def _distinct_keys(items: Sequence[Mapping[str, Any]], checked: Sequence[Checked]) -> bool:
    """No idempotency key twice in the submission (keys left out are fresh task ids)."""
    # Serial work before any chunk is written: first the cheap test (keys that differ as
    # strings differ whatever their tenant and env), the exact one only when it fails.
    keys = [c.idempotency_key if isinstance(c, TaskSpec) else data.get("idempotency_key")
            for data, c in zip(items, checked, strict=True)]
    present = [k for k in keys if k]
    if len(set(present)) == len(present):
        return True
    seen: set[tuple[str, str, str]] = set()
    for data, c in zip(items, checked, strict=True):
        if isinstance(c, TaskSpec):
            key = (c.tenant_id, c.env, c.idempotency_key)
        else:  # a common order: as fast_build fills it in
            idem = data.get("idempotency_key")
            if not idem:
                continue
            key = (data.get("tenant_id") or "default", data.get("env") or "default", idem)
        if key in seen:
            return False
        seen.add(key)
    return True
