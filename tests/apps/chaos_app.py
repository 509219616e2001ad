"""A creep app for the chaos test (tests/integration/test_chaos_drain.py). Every run of a
handler appends "start task_id attempt pid wall_time" when it begins and "end task_id attempt
pid wall_time" when its body is done to $CREEP_CHAOS_LOG_DIR/runs.<pid>.log, flushed at
once (a process killed with -9 leaves only its starts)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import IO

from creep import Creep, Fail, Retry, TaskContext

app = Creep()
_DIR = os.environ.get("CREEP_CHAOS_LOG_DIR")
_log: IO[str] | None = None


def _record(ctx: TaskContext, phase: str) -> None:
    global _log
    if not _DIR:
        return
    if _log is None:
        _log = open(os.path.join(_DIR, f"runs.{os.getpid()}.log"), "a")  # noqa: SIM115
    _log.write(f"{phase} {ctx.task_id} {ctx.attempt} {os.getpid()} {time.time():.6f}\n")
    _log.flush()


async def _work(ctx: TaskContext, seconds: float | None = None) -> None:
    """The "end" line is written however the body stops (cancelled too)."""
    _record(ctx, "start")
    try:
        await asyncio.sleep(random.uniform(0.02, 0.2) if seconds is None else seconds)
    finally:
        _record(ctx, "end")


@app.handler("PLAIN")
async def plain(ctx: TaskContext) -> object:
    await _work(ctx)
    return {"ok": True}


@app.handler("LEASED")
async def leased(ctx: TaskContext) -> object:
    await _work(ctx)
    return {"ok": True}


@app.handler("FLAKY")
async def flaky(ctx: TaskContext) -> object:
    """Asks for a retry on its first two attempts, succeeds on the third."""
    await _work(ctx)
    if ctx.attempt < 3:
        raise Retry(delay=0.05)
    return {"ok": True}


@app.handler("FAIL")
async def fail(ctx: TaskContext) -> object:
    await _work(ctx)
    raise Fail(code="HARD_FAIL", message="chaos: a business failure")


@app.handler("SLOW")
async def slow(ctx: TaskContext) -> object:
    """Outlives its timeout_ms: the worker cancels it."""
    await _work(ctx, 30)
    return None
