"""Store-level micro-benchmark: the cost per task of each queue statement, without a worker.

    python bench/bench_store.py -n 20000 [--database-url postgresql://127.0.0.1:5432/test]
    python bench/bench_store.py -n 20000 --profile claim     # cProfile one phase

Phases: validate (TaskSpec building), insert (task_create_many), claim (task_claim in batches)
and complete (task_complete_many in batches). Prints wall and CPU microseconds per task for each, so an
A/B comparison does not depend on the worker loop; run under
`valgrind --tool=callgrind` or `perf stat -e instructions` to count instructions.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from bench_queue import fresh_url, orders  # noqa: E402
from creep import Creep  # noqa: E402
from creep.domain.outcomes import Outcome, OutcomeKind, resolve  # noqa: E402
from creep.ports import Completion  # noqa: E402


def server_cpu(url: str, tag: str) -> float:
    """CPU seconds (user + system) used so far by the PostgreSQL backends serving this
    benchmark (found by application_name), read from /proc: the server's share of the cost,
    which process_time() cannot see. Only meaningful with PostgreSQL on this machine."""
    import os

    import psycopg

    with psycopg.connect(url.split("?")[0]) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (tag,))]
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def run(url: str, n: int, batch: int, profile: str | None) -> dict[str, float]:
    tag = ""
    if url.startswith("postgres"):
        tag = f"creep-bench-{os.getpid()}"
        url = f"{url}&application_name={tag}"
    app = Creep(url)
    store = app.store
    prof = cProfile.Profile()
    out: dict[str, float] = {}

    def phase(name: str, fn: Any, *args: Any) -> Any:
        if profile == name:
            prof.enable()
        server = server_cpu(url, tag) if tag else 0.0
        started, cpu = time.perf_counter(), time.process_time()
        value = fn(*args)
        out[f"{name}_us"] = (time.perf_counter() - started) / n * 1e6
        # Process CPU (all threads, user + system): steadier than wall time on a busy machine.
        out[f"{name}_cpu_us"] = (time.process_time() - cpu) / n * 1e6
        if tag:
            out[f"{name}_pg_cpu_us"] = (server_cpu(url, tag) - server) / n * 1e6
        if profile == name:
            prof.disable()
        return value

    raw = orders(n, "s")
    specs = phase("validate", lambda: [app.validate(o) for o in raw])

    def insert() -> None:
        for i in range(0, n, 5000):
            store.task_create_many(specs[i:i + 5000], app.clock.now())

    phase("insert", insert)
    claimed_all: list[Any] = []

    def claim() -> None:
        while True:
            got = store.task_claim("bench", ["NOOP"], batch, app.clock.now(), 600)
            if not got:
                return
            claimed_all.append(got)

    phase("claim", claim)

    def complete() -> None:
        for chunk in claimed_all:
            comps = []
            for c in chunk:
                o = Outcome(c.task.task_id, c.claim_token, OutcomeKind.SUCCEEDED, result=None,
                            result_json=b"null")
                comps.append(Completion(o, resolve(o, attempt=1, max_attempts=4,
                                                   now=app.clock.now(), backoff=app.backoff)))
            store.task_complete_many(comps, app.clock.now())

    phase("complete", complete)
    assert sum(len(c) for c in claimed_all) == n
    app.close()
    if profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--profile", choices=["validate", "insert", "claim", "complete"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = fresh_url(args.database_url, Path(tmp))
        try:
            result = run(url, args.n, args.batch, args.profile)
        finally:
            if drop:
                drop()
    print(json.dumps({k: round(v, 2) for k, v in result.items()}))


if __name__ == "__main__":
    main()
