"""A creep app for worker subprocesses in tests. Each run of a handler is logged to
$CREEP_TEST_LOG as one line "task_id attempt pid" so tests can count executions."""

from __future__ import annotations

import asyncio
import os

from creep import Creep, TaskContext

app = Creep()
_LOG = os.environ.get("CREEP_TEST_LOG")


def _record(ctx: TaskContext, phase: str) -> None:
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(f"{ctx.task_id} {ctx.attempt} {os.getpid()} {phase}\n")


@app.handler("NOOP")
async def noop(ctx: TaskContext) -> object:
    _record(ctx, "run")
    return None


@app.handler("SLEEP")
async def sleep(ctx: TaskContext) -> object:
    _record(ctx, "start")
    await asyncio.sleep(float(ctx.task.input_payload["seconds"]))
    _record(ctx, "end")
    return {"slept": ctx.task.input_payload["seconds"]}
