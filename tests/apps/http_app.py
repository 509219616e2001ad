"""Handlers for `creep worker --api-url` in tests (the database is never opened here)."""

from __future__ import annotations

import asyncio
from typing import Any

from creep import Creep, Fail, TaskContext

app = Creep()


@app.handler("ECHO")
async def echo(ctx: TaskContext) -> Any:
    await ctx.progress(50, "half way")
    await ctx.heartbeat()
    return {"echo": ctx.task.input_payload, "attempt": ctx.attempt}


@app.handler("REFUSE")
def refuse(ctx: Any) -> None:
    raise Fail(code="HARD_FAIL", message="refused by the handler")


@app.handler("FLAKY")
def flaky(ctx: Any) -> str:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return "second attempt works"


@app.handler("WAIT_FOR_CANCEL")
async def wait_for_cancel(ctx: TaskContext) -> None:
    while True:
        await ctx.heartbeat()  # raises TaskCancelled once cancellation was requested
        await asyncio.sleep(0.05)


@app.handler("SLEEP")
async def sleep(ctx: TaskContext) -> None:
    """Holds its claim for `seconds` (bench_http_worker: heartbeat traffic)."""
    await asyncio.sleep(float(ctx.task.input_payload.get("seconds", 1)))
