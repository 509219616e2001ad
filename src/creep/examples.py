"""Built-in example handlers, used by `creep demo` and the quick start."""

from __future__ import annotations

import asyncio
import uuid

from creep.app import Creep
from creep.domain.outcomes import Backoff, Fail, Retry
from creep.domain.task import TaskOrder
from creep.engine.context import TaskContext


def build_example_app(database_url: str | None = None) -> Creep:
    app = Creep(database_url, backoff=Backoff(base_seconds=0.05, cap_seconds=0.2))

    @app.handler("ECHO")
    async def echo(ctx: TaskContext) -> object:
        return {"echo": ctx.task.input_payload}

    @app.handler("SLOW_REPORT")
    async def slow_report(ctx: TaskContext) -> object:
        for pct in (25, 50, 75):
            await asyncio.sleep(0.01)
            await ctx.progress(pct, f"step {pct // 25} of 3")
        return {"pages": 3}

    @app.handler("FLAKY_CALL")
    async def flaky_call(ctx: TaskContext) -> object:
        if ctx.attempt < 2:
            raise Retry(delay=0, message="upstream answered 503")
        return {"attempts": ctx.attempt}

    @app.handler("CHARGE_CARD")
    async def charge_card(ctx: TaskContext) -> object:
        raise Fail(code="HARD_FAIL", message="card declined")

    @app.handler("SCRAPE_PAGE")
    async def scrape_page(ctx: TaskContext) -> object:
        # Runs on a leased asset (resource_hints): the lease's cost is charged by creep; the
        # handler adds its own cost and the revenue, so the ledger shows a margin per task.
        await asyncio.sleep(0.05)
        await ctx.charge("0.05", description="bandwidth")
        await ctx.earn("0.40", description="page delivered")
        return {"leases": len(ctx.lease_ids)}

    return app


def submit_examples(app: Creep, count: int) -> list[TaskOrder]:
    kinds = ["ECHO", "SLOW_REPORT", "FLAKY_CALL", "CHARGE_CARD"]
    run = uuid.uuid4().hex[:8]
    orders = [
        {
            "tenant_id": "demo", "env": "dev", "idempotency_key": f"demo-{run}-{i}",
            "task_type": kinds[i % len(kinds)], "priority": 20 + (i * 7) % 80,
            "input_payload": {"n": i},
        }
        for i in range(count)
    ]
    return app.submit_many(orders)
