"""Writing a big bulk submission chunk by chunk (app.submit_many), overlapped.

Nothing commits before every order has been checked (one bad order rejects the whole
submission). The first chunks are checked at once and start being written while a helper
thread checks the rest; their transactions wait for that check before committing, and roll
back if it fails. Building a checked chunk's specs cannot fail and may run beside the writes:
the database works without the GIL (SQLite's C code, PostgreSQL's server), so while chunk k
is written the next chunk is built in a helper thread. A store that sets `bulk_writers` > 1
(PostgreSQL: one server process per connection) writes that many chunks at once, each in its
own transaction on its own connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from creep.domain.bulk_specs import Checked, build_specs, check_orders
from creep.domain.errors import ValidationError
from creep.domain.task import TaskOrder
from creep.domain.task_spec import Limits, TaskSpec
from creep.ports import Store
from creep.storage import pending_writes


class CheckedOrders:
    """check_orders' answers for a submission: its head checked, its tail maybe still being
    checked by another thread (`tail`, which raises the tail's ValidationError)."""

    def __init__(self, head: list[Checked], tail: Future[list[Checked]] | None = None) -> None:
        self._head = head
        self._tail = tail
        self._all: list[Checked] | None = head if tail is None else None

    def wait(self) -> None:
        """Return once every order is known valid; raise the tail's ValidationError if not."""
        if self._tail is not None:
            self._tail.result()

    def all(self) -> list[Checked]:
        if self._all is None:
            assert self._tail is not None
            self._all = [*self._head, *self._tail.result()]
        return self._all

    def slice(self, a: int, b: int) -> Sequence[Checked]:
        return self._head[a:b] if b <= len(self._head) else self.all()[a:b]


def check_ahead(
    items: Sequence[Mapping[str, Any]], head: int, *, now: datetime, limits: Limits,
    pool: ThreadPoolExecutor,
) -> CheckedOrders:
    """Check the first `head` orders now and the rest on `pool`. An error in the head is
    raised at once, with the tail's errors too (one ValidationError names them all)."""
    try:
        first = check_orders(items[:head], now=now, limits=limits, traced=False)
    except ValidationError as exc:
        errors = list(exc.errors)
        try:
            check_orders(items[head:], now=now, limits=limits, traced=False, offset=head)
        except ValidationError as more:
            errors.extend(more.errors)
        raise ValidationError(errors) from None
    return CheckedOrders(first, pool.submit(
        check_orders, items[head:], now=now, limits=limits, traced=False, offset=head))


def write_chunks(
    store: Store, items: Sequence[Mapping[str, Any]], checked: CheckedOrders,
    limits: Limits, now: datetime, chunk: int,
) -> list[TaskOrder]:
    """Create the tasks of `items` in transactions of `chunk` orders; the answer keeps
    submission order. No chunk commits before `checked` is complete and valid. When a chunk
    fails its error is raised; the chunks written before it stay, and so may those already
    being written beside it (at most bulk_writers - 1 of them); no later chunk is started."""
    try:
        return _write_chunks(store, items, checked, limits, now, chunk)
    except Exception:
        # A bad order is the error to report (a chunk may have failed before its commit
        # waited for the check, e.g. on an idempotency conflict), as if all were checked first.
        checked.wait()
        raise


def _write_chunks(
    store: Store, items: Sequence[Mapping[str, Any]], checked: CheckedOrders,
    limits: Limits, now: datetime, chunk: int,
) -> list[TaskOrder]:
    bounds = [(a, a + chunk) for a in range(0, len(items), chunk)]
    writers = int(getattr(store, "bulk_writers", 1))
    if writers > 1 and not pending_writes.waiting() and _distinct_keys(items, checked):
        # (Writes riding along belong to this thread's transaction; one key in two chunks
        # written at once would make one wait on the other's lock, or deadlock.)
        return _side_by_side(store, items, checked, limits, now, bounds, writers)
    # A store that can prepare a chunk's rows without its database (SQLite) has that done
    # ahead too: the writing thread is then left mostly the database's own work.
    prepare: Callable[[list[TaskSpec], datetime], Any] | None = getattr(
        store, "task_prepare_many", None)

    def build(k: int) -> tuple[list[TaskSpec], Any]:
        a, b = bounds[k]
        specs = build_specs(items[a:b], checked.slice(a, b), limits, False)
        return specs, None if prepare is None else prepare(specs, now)

    out: list[TaskOrder] = []
    with ThreadPoolExecutor(1, thread_name_prefix="creep-submit") as pool:
        ahead = pool.submit(build, 0)
        for k in range(len(bounds)):
            specs, prepared = ahead.result()
            if k + 1 < len(bounds):
                ahead = pool.submit(build, k + 1)
            if prepared is None:
                out.extend(store.task_create_many(specs, now, before_commit=checked.wait))
            else:
                out.extend(store.task_create_many(  # type: ignore[call-arg]
                    specs, now, prepared=prepared, before_commit=checked.wait))
    return out


def _side_by_side(
    store: Store, items: Sequence[Mapping[str, Any]], checked: CheckedOrders,
    limits: Limits, now: datetime, bounds: list[tuple[int, int]], writers: int,
) -> list[TaskOrder]:
    def build(k: int) -> list[TaskSpec]:
        a, b = bounds[k]
        return build_specs(items[a:b], checked.slice(a, b), limits, False)

    built: list[Future[list[TaskSpec]]] = []

    def job(k: int) -> list[TaskOrder]:
        return store.task_create_many(built[k].result(), now, before_commit=checked.wait)

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


def _distinct_keys(items: Sequence[Mapping[str, Any]], checked: CheckedOrders) -> bool:
    """No idempotency key twice in the submission (keys left out are fresh task ids)."""
    # Decided before any chunk starts: first from the orders' own keys (keys that differ as
    # strings differ whatever their tenant and env; an order without one takes its task id,
    # given or fresh), waiting for the whole check and comparing exactly only when that fails.
    keys = [data.get("idempotency_key") or data.get("task_id") for data in items]
    present = [k for k in keys if k]
    if len(set(present)) == len(present):
        return True
    seen: set[tuple[str, str, str]] = set()
    for data, c in zip(items, checked.all(), strict=True):
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
