"""What a handler sees of its task: the order, cancellation, heartbeat and progress."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from creep.domain.errors import ValidationError
from creep.domain.outcomes import TaskCancelled
from creep.domain.task import TaskOrder
from creep.engine.lease_context import LeaseContextMixin, SyncLeaseContextMixin

if TYPE_CHECKING:
    from creep.engine.worker import Worker
    from creep.ports import ClaimedTask


class TaskContext(LeaseContextMixin):  # charge/earn/report_event/leases: lease_context.py
    """Handed to async handlers. `await ctx.heartbeat()` renews the claim now and raises
    TaskCancelled once cancellation was requested; `await ctx.progress(pct, msg)` records progress."""

    def __init__(self, worker: Worker, claimed: ClaimedTask) -> None:
        self._claimed = claimed
        self.claim_token = claimed.claim_token
        self._worker = worker
        self._cancelled = False
        self.cancel_reason: str | None = None
        self.revoked_lease_ids: list[str] = []

    @property
    def task(self) -> TaskOrder:
        """The task order as claimed (decoded on first read: see ClaimedTask)."""
        return self._claimed.task

    @property
    def task_id(self) -> str:
        return self._claimed.task_id

    @property
    def attempt(self) -> int:
        return self._claimed.attempt

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested (or the task timed out or the worker is
        shutting down); a handler in a long loop should check it and stop."""
        return self._cancelled

    def _mark_cancelled(self, reason: str) -> None:
        if not self._cancelled:
            self._cancelled = True
            self.cancel_reason = reason

    def raise_if_cancelled(self) -> None:
        if self._cancelled:
            raise TaskCancelled(self.cancel_reason or "cancelled")

    async def heartbeat(self) -> None:
        self.raise_if_cancelled()
        await self._worker.heartbeat_one(self)
        self.raise_if_cancelled()

    async def progress(self, percent: int, message: str | None = None) -> None:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValidationError.single("progress", "must be an integer from 0 to 100")
        self.raise_if_cancelled()
        await self._worker.progress_one(self, percent, message)


class SyncTaskContext(SyncLeaseContextMixin):
    """Handed to plain (sync) handlers, which run in a thread: the same calls, blocking."""

    def __init__(self, inner: TaskContext, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._loop = loop
        self.claim_token = inner.claim_token

    @property
    def task(self) -> TaskOrder:
        return self._inner.task

    @property
    def task_id(self) -> str:
        return self._inner.task_id

    @property
    def attempt(self) -> int:
        return self._inner.attempt

    @property
    def cancelled(self) -> bool:
        return self._inner.cancelled

    def raise_if_cancelled(self) -> None:
        self._inner.raise_if_cancelled()

    def _call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        if _on_loop(self._loop):
            # A coroutine a sync handler returned (a decorator around an async function)
            # runs on the worker's loop and awaits these calls: hand it the awaitable.
            # Blocking here would wait on this very loop for good.
            return make()

        async def run() -> Any:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def heartbeat(self) -> None:
        """Blocking in the handler's thread; awaitable on the worker's loop (see _call)."""
        return self._call(self._inner.heartbeat)  # type: ignore[no-any-return]

    def progress(self, percent: int, message: str | None = None) -> None:
        return self._call(lambda: self._inner.progress(percent, message))  # type: ignore[no-any-return]


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop runs in this thread: a handler's pool thread
        return False
