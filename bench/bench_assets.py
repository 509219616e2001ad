"""Asset benchmark: the drain rate of tasks that each need one lease from a pool of 100
assets, next to the drain rate of the same number of tasks without resource hints.

    python bench/bench_assets.py -n 20000
    python bench/bench_assets.py -n 20000 --database-url postgresql://127.0.0.1:5432/test
    python bench/bench_assets.py -n 20000 --database-url ... --claim-lanes 2   # opt-in lanes

With --repeat N, N plain/leased pairs run alternately and the medians are reported (the
ratio is that of the median rates), with each pair's figures under "runs".

Each leased task takes a lease (and its ledger COST entry and ALLOCATED event), then on
completion writes TASK_SUCCESS, RELEASED and the asset's health and concurrency.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from bench_queue import fresh_url, make_app  # noqa: E402
from creep import Creep  # noqa: E402

HINT = [{"sku_category": "RAW_NET", "sku_code": "ip.bench.*"}]


def orders(n: int, tag: str, hinted: bool) -> list[dict[str, Any]]:
    return [
        {"tenant_id": "bench", "env": "prod", "idempotency_key": f"{tag}-{i}",
         "task_type": "NOOP", "priority": i % 100,
         **({"resource_hints": HINT} if hinted else {})}
        for i in range(n)
    ]


def drain(url: str, concurrency: int, lanes: int = 1) -> tuple[float, int, float]:
    """(tasks per second, tasks completed, this process's CPU seconds while draining). The
    CPU time (all threads: the event loop, the handlers, the store calls and on SQLite the
    database itself) is steadier than the rate on a shared machine."""
    app = make_app(url)
    started, cpu = time.perf_counter(), time.process_time()
    stats = app.run_worker(burst=True, concurrency=concurrency, install_signals=False,
                           claim_lanes=lanes)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    app.close()
    return stats["completed"] / elapsed, stats["completed"], cpu


def run(url: str | None, n: int, assets: int, per_asset: int, concurrency: int,
        hinted: bool, lanes: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db, drop = fresh_url(url, Path(tmp))
        try:
            app = Creep(db)
            app.import_assets([
                {"tenant_id": "bench", "sku_category": "RAW_NET", "sku_code": f"ip.bench.{i}",
                 "max_concurrency": per_asset, "cost_per_lease": "0.01"}
                for i in range(assets)
            ])
            for start in range(0, n, 5000):
                app.submit_many(orders(min(5000, n - start), f"b{start}", hinted))
            app.close()
            rate, done, cpu = drain(db, concurrency, lanes if hinted else 1)
            check = Creep(db)
            leases = len(check.list_leases(status="RELEASED", limit=n + 1)) if hinted else 0
            check.close()
        finally:
            if drop:
                drop()
    return {"drain_per_s": rate, "completed": done, "leases_released": leases,
            "cpu_us_per_task": 1e6 * cpu / max(done, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--assets", type=int, default=100)
    parser.add_argument("--max-concurrency", type=int, default=5,
                        help="leases one asset may hold at once")
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--claim-lanes", type=int, default=1,
                        help="the leased drain's worker claim_lanes (PostgreSQL; README, "
                             "Workers); the plain drain always runs with 1")
    parser.add_argument("--repeat", type=int, default=1,
                        help="plain/leased pairs, run alternately; the medians are reported "
                             "(wall-clock rates on a shared machine swing from run to run)")
    args = parser.parse_args()
    plains, leaseds = [], []
    for _ in range(args.repeat):
        plains.append(run(args.database_url, args.n, args.assets, args.max_concurrency,
                          args.concurrency, hinted=False))
        leaseds.append(run(args.database_url, args.n, args.assets, args.max_concurrency,
                           args.concurrency, hinted=True, lanes=args.claim_lanes))
    plain = {k: median(r[k] for r in plains) for k in ("drain_per_s", "cpu_us_per_task")}
    leased = {k: median(r[k] for r in leaseds) for k in ("drain_per_s", "cpu_us_per_task")}
    result: dict[str, Any] = {
        "backend": (args.database_url or "sqlite").split(":")[0], "n": args.n,
        "assets": args.assets, "max_concurrency": args.max_concurrency,
        "claim_lanes": args.claim_lanes,
        "no_hints_drain_per_s": round(plain["drain_per_s"], 1),
        "one_lease_drain_per_s": round(leased["drain_per_s"], 1),
        "ratio": round(leased["drain_per_s"] / plain["drain_per_s"], 3),
        # Client-side CPU per task (PostgreSQL's own work is not in it).
        "no_hints_cpu_us_per_task": round(plain["cpu_us_per_task"], 1),
        "one_lease_cpu_us_per_task": round(leased["cpu_us_per_task"], 1),
        "leases_released": min(r["leases_released"] for r in leaseds),
    }
    if args.repeat > 1:
        result["runs"] = [
            {"no_hints_drain_per_s": round(p["drain_per_s"], 1),
             "one_lease_drain_per_s": round(x["drain_per_s"], 1),
             "ratio": round(x["drain_per_s"] / p["drain_per_s"], 3)}
            for p, x in zip(plains, leaseds, strict=True)
        ]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
