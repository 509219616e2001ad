"""HTTP worker benchmark: drain rate of `creep worker --api-url` (the worker protocol over
loopback) next to the same worker on the database directly, plus artifact upload/download.

    python bench/bench_http_worker.py -n 2000
    python bench/bench_http_worker.py -n 2000 --database-url postgresql://127.0.0.1:5432/test

The held run keeps --held tasks (200) running 6 s at once: its requests per second are
mostly heartbeats.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_queue import fresh_url  # noqa: E402

ADMIN = "bench-admin-key-" + "x" * 24


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drain(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _worker_calls(admin: httpx.Client) -> int:
    """POSTs the server answered on worker protocol routes so far (from /metrics)."""
    total = 0.0
    for line in admin.get("/metrics").text.splitlines():
        if (line.startswith("creep_http_request_duration_seconds_count{")
                and 'method="POST"' in line
                and ('route="/v1/workers/' in line or 'route="/v1/tasks/{task_id}/' in line)):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--database-url")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--held", type=int, default=200,
                        help="tasks held 6 s at once (claim TTL 5 s: a heartbeat round a "
                             "second), for the heartbeat traffic")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="creep-bench-http-"))
    url, drop = fresh_url(args.database_url, work)
    port = _port()
    env = {**os.environ, "CREEP_DATABASE_URL": url, "CREEP_ADMIN_KEY": ADMIN,
           "CREEP_PORT": str(port), "CREEP_LOG_LEVEL": "WARNING",
           "CREEP_ARTIFACT_DIR": str(work / "artifacts"),
           # This tree's code (src) and its test apps (tests.apps), not an installed creep.
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    server = subprocess.Popen([sys.executable, "-m", "creep.cli", "server"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}"
    results: dict[str, float] = {}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{api}/health/live").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        admin = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {ADMIN}"},
                             timeout=60)
        admin.post("/v1/tenants", json={"tenant_id": "bench"}).raise_for_status()
        key = admin.post("/v1/keys", json={"name": "bench", "tenant_id": "bench"}).json()["key"]
        c = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        worker = [sys.executable, "-m", "creep.cli", "worker", "--app",
                  "tests.apps.http_app:app", "--burst", "--log-level", "WARNING",
                  "--concurrency", str(args.concurrency)]

        def submit(n: int, task_type: str = "ECHO", payload: dict[str, Any] | None = None) -> None:
            tasks = [{"ref": f"r{i}", "task_type": task_type,
                      "input_payload": payload or {"i": i}} for i in range(n)]
            for start in range(0, n, 500):
                r = c.post("/v1/batches", json={"title": "bench", "tasks": tasks[start:start + 500]})
                r.raise_for_status()

        submit(args.n)
        calls = _worker_calls(admin)
        seconds = _drain([*worker, "--api-url", api], {**env, "CREEP_API_KEY": key})
        results["http_worker_tasks_per_s"] = args.n / seconds
        # Worker protocol requests (claims, heartbeats, progress, results) per task: less
        # noisy than the rate on a shared machine.
        results["http_worker_requests_per_task"] = (_worker_calls(admin) - calls) / args.n
        if args.held:
            submit(args.held, "SLEEP", {"seconds": 6})
            calls = _worker_calls(admin)
            held = [*worker[:-1], str(args.held), "--claim-ttl", "5", "--api-url", api]
            seconds = _drain(held, {**env, "CREEP_API_KEY": key})
            spent = _worker_calls(admin) - calls
            results["held_requests_per_s"] = spent / seconds
            results["held_requests_per_task"] = spent / args.held
        submit(args.n)
        seconds = _drain([*worker, "--database-url", url], env)
        results["db_worker_tasks_per_s"] = args.n / seconds

        task = c.post("/v1/tasks", json={"task_type": "NONE"}).json()["task_id"]
        blob = os.urandom(1024 * 1024)
        started = time.perf_counter()
        ids = []
        for i in range(20):
            r = c.post(f"/v1/tasks/{task}/artifacts", files={"file": (f"f{i}", blob + bytes([i]))},
                       data={"kind": "output"})
            r.raise_for_status()
            ids.append(r.json()["url"])
        results["upload_1MiB_per_s"] = 20 / (time.perf_counter() - started)
        started = time.perf_counter()
        for u in ids:
            c.get(u).raise_for_status()
        results["download_1MiB_per_s"] = 20 / (time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if drop is not None:
            drop()
    print(json.dumps({"n": args.n, "database": "postgres" if drop else "sqlite",
                      **{k: round(v, 2) for k, v in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
