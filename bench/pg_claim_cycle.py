"""PostgreSQL backend CPU per task of the bare claim + complete cycle (the store calls a worker
makes, no worker), in batches of 500: the median of several rounds, each draining `-n` tasks,
which is steadier than a full drain on a busy machine.

    python bench/pg_claim_cycle.py --database-url postgresql://127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_queue import make_app, orders
from creep.domain.outcomes import Outcome, OutcomeKind, resolve
from creep.ports import Completion
from pg_drain_stats import _cpu, scratch_schema


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default="postgresql://127.0.0.1:5432/test")
    p.add_argument("-n", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--priorities", type=int, default=100)
    args = p.parse_args()
    base = args.database_url
    schema, url, admin = scratch_schema(base)
    per_task: list[float] = []
    try:
        app = make_app(url)
        store, now = app.store, app.clock.now
        for r in range(args.rounds):
            app.submit_many(orders(args.n, f"r{r}", args.priorities))
            pids = [row[0] for row in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (schema,))]
            before = sum(_cpu(pid) for pid in pids)
            done = 0
            while True:
                batch = store.task_claim("w", ["NOOP"], args.batch, now(), 600)
                if not batch:
                    break
                comps = []
                for c in batch:
                    o = Outcome(c.task.task_id, c.claim_token, OutcomeKind.SUCCEEDED, result=None)
                    comps.append(Completion(o, resolve(o, attempt=1, max_attempts=4,
                                                       now=now(), backoff=app.backoff)))
                store.task_complete_many(comps, now())
                done += len(batch)
            pids2 = [row[0] for row in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (schema,))]
            assert pids2 == pids or set(pids2) >= set(pids), (pids, pids2)
            after = sum(_cpu(pid) for pid in pids2)
            per_task.append((after - before) / done * 1e6)
        app.close()
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
    print(json.dumps({"backend_cpu_us_per_task_median": round(statistics.median(per_task), 1),
                      "rounds": [round(x, 1) for x in per_task]}))


if __name__ == "__main__":
    main()
