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


def test_cancel_all_keeps_an_error_of_a_task_retrieved() -> None:
    async def failing() -> None:
        raise RuntimeError("boom")

    async def main() -> asyncio.Task[None]:
        task = asyncio.create_task(failing())
        await asyncio.sleep(0)
        await _cancel_all([task])
        return task

    task = asyncio.run(main())
    assert isinstance(task.exception(), RuntimeError)
