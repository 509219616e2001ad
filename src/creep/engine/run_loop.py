"""Running a worker's event loop to its end: asyncio.run, with a bounded ending."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: How long the tasks still pending when the worker returned get to end once cancelled.
UNWIND_SECONDS = 1.0


def run_to_end(main: Coroutine[Any, Any, T], unwind: float = UNWIND_SECONDS) -> T:
    """asyncio.run(main) (Ctrl-C handling included), except for its ending. asyncio.run
    cancels the tasks still pending when `main` returns, then waits for each of them: forever
    for an async handler that ignores its cancellation, although the worker has given its task
    back (what the handler would still write is refused by the claim token) and its process
    should exit. Here such a task gets `unwind` seconds to end once cancelled; then its
    coroutine is closed (GeneratorExit at its await: its `finally` blocks run), as the
    interpreter would close it at exit."""
    with asyncio.Runner() as runner:
        try:
            return runner.run(main)
        finally:
            runner.run(_unwind(unwind))


async def _unwind(seconds: float) -> None:
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    if not left:
        return
    for task in left:
        task.cancel()
    _, stuck = await asyncio.wait(left, timeout=seconds)
    for task in stuck:
        close = getattr(task.get_coro(), "close", None)
        if close is not None:
            # RuntimeError: it awaited again while closing; nothing more can be done here.
            with contextlib.suppress(RuntimeError):
                close()
        task.cancel()  # thrown into the closed coroutine, this ends the task
    if stuck:
        await asyncio.wait(stuck, timeout=0.1)
