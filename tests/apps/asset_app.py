"""A creep app for asset tests in worker subprocesses: one handler that holds its lease a
moment, so leases of different workers overlap."""

from __future__ import annotations

import asyncio
import os
import sys

from creep import Creep, TaskContext

app = Creep()


@app.handler("LEASED")
async def leased(ctx: TaskContext) -> object:
    await asyncio.sleep(float(os.environ.get("CREEP_TEST_HOLD_SECONDS", "0.005")))
    return None


if __name__ == "__main__":
    app.run_worker(concurrency=int(sys.argv[1]), poll_interval=0.05, shutdown_grace=10)
