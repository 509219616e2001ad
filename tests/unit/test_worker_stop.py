"""The worker's shutdown ends its background loops even when one swallows a cancellation,
as Python 3.11's wait_for does when the cancellation lands as the wait it wraps completes."""

from __future__ import annotations

import asyncio

from creep.engine.worker import _cancel_all


def test_cancel_all_cancels_again_a_task_that_swallowed_the_first_cancel() -> None:
    swallowed = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)  # as wait_for does: the loop goes on

    async def quiet() -> None:
        await asyncio.sleep(10)

    async def main() -> list[asyncio.Task[None]]:
        tasks = [asyncio.create_task(stubborn()), asyncio.create_task(quiet())]
        await asyncio.sleep(0)
        await asyncio.wait_for(_cancel_all(tasks), 5)
        return tasks

    tasks = asyncio.run(main())
    assert swallowed == [True]
    assert all(t.cancelled() for t in tasks)


def test_cancel_all_retrieves_the_error_of_a_loop_that_fails_as_it_is_cancelled() -> None:
    async def failing_on_cancel() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("boom") from None

    async def main() -> asyncio.Task[None]:
        task = asyncio.create_task(failing_on_cancel())
        await asyncio.sleep(0)
        await _cancel_all([task])
        # Retrieved by _cancel_all itself: asyncio would otherwise log "Task exception was
        # never retrieved" when the task is collected.
        assert task._log_traceback is False
        return task

    task = asyncio.run(main())
    assert isinstance(task.exception(), RuntimeError)
