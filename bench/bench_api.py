"""POST /v1/tasks under a real load generator (wrk) vs a bare FastAPI endpoint that returns a
constant, both served by uvicorn with the same settings, in the same run.

    python bench/bench_api.py                                   # SQLite (a temp file)
    python bench/bench_api.py --database-url postgresql://127.0.0.1:5432/test
    python bench/bench_api.py --duration 20 --connections 64 --threads 2
    python bench/bench_api.py --repeat 3             # three back-to-back rounds, median ratio

Needs `wrk` (Debian: apt-get install -y wrk). Prints requests/s of both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ADMIN_KEY = "bench-admin-key-" + "z" * 24
BODY = {"task_type": "BENCH", "priority": 60, "tags": ["bench"], "input_payload": {"n": 1}}

BARE_APP = '''
from fastapi import FastAPI, Request
app = FastAPI()

@app.post("/bare")
async def bare() -> dict[str, bool]:
    return {"ok": True}
'''

LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_live(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def uvicorn_args(port: int, workers: int) -> list[str]:
    # The settings `creep server` uses: uvloop + httptools (uvicorn[standard]), no access log,
    # the same number of worker processes.
    return ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level",
            "warning", "--loop", "uvloop", "--http", "httptools", "--workers", str(workers)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (uvicorn workers), from /proc: on a
    shared machine, server CPU per request is steadier than requests/s."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def run_wrk(url: str, lua: Path, args: argparse.Namespace, pid: int) -> dict[str, float]:
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d",
         f"{args.duration}s", "--latency", "-s", str(lua), url],
        capture_output=True, text=True, check=True,
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    return {"rps": rps, "cpu_us": cpu / max(total, 1) * 1e6, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "p50": p50.group(1) if p50 else "?", "p99": p99.group(1) if p99 else "?"}  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes, for both servers")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure bare and creep back to back this many times; the ratio "
                             "reported is the median of the rounds' ratios")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    work = Path(tempfile.mkdtemp(prefix="creep-bench-api-"))
    database_url = args.database_url or f"sqlite:///{work}/bench.db"
    schema = None
    if database_url.startswith("postgres"):
        from urllib.parse import quote

        import psycopg

        schema = f"bench_api_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in database_url else "?"
        database_url = f"{database_url}{sep}options={quote(f'-csearch_path={schema}')}"
    (work / "bare_app.py").write_text(BARE_APP)

    results: dict[str, dict[str, float]] = {}
    rounds: list[float] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bare_port, creep_port = free_port(), free_port()
        bare = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bare_app:app", *uvicorn_args(bare_port, args.workers)],
            cwd=work,
        )
        procs.append(bare)
        env = {**os.environ, "CREEP_DATABASE_URL": database_url, "CREEP_ADMIN_KEY": ADMIN_KEY,
               "CREEP_PORT": str(creep_port), "CREEP_LOG_LEVEL": "WARNING",
               "CREEP_WORKERS": str(args.workers)}
        creep = subprocess.Popen([sys.executable, "-m", "creep.cli", "server"], env=env)
        procs.append(creep)
        wait_live(f"http://127.0.0.1:{bare_port}/docs", bare)
        wait_live(f"http://127.0.0.1:{creep_port}/health/live", creep)
        base = f"http://127.0.0.1:{creep_port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            c.post("/v1/tenants", json={"tenant_id": "bench"}).raise_for_status()
            key = c.post("/v1/keys", json={"name": "bench", "tenant_id": "bench"}).json()["key"]
        lua = work / "post.lua"
        lua.write_text(LUA.format(body=json.dumps(BODY), key=key))
        # Warm both up, then measure the bare endpoint and creep back to back.
        for url in (f"http://127.0.0.1:{bare_port}/bare", f"{base}/v1/tasks"):
            subprocess.run(["wrk", "-t", "1", "-c", "4", "-d", "2s", "-s", str(lua), url],
                           capture_output=True, check=True)
        for i in range(max(1, args.repeat)):
            for name, url, pid in (("bare", f"http://127.0.0.1:{bare_port}/bare", bare.pid),
                                   ("creep", f"{base}/v1/tasks", creep.pid)):
                results[name if args.repeat <= 1 else f"{name}#{i + 1}"] = run_wrk(
                    url, lua, args, pid)
            last = list(results.values())
            rounds.append(last[-1]["rps"] / last[-2]["rps"])
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
            listed = c.get("/v1/tasks", params={"limit": 1}).json()["items"]
            assert listed and listed[0]["task_type"] == "BENCH"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
        if schema is not None and args.database_url:
            import psycopg

            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    engine = "postgres" if database_url.startswith("postgres") else "sqlite"
    print(f"engine={engine} workers={args.workers} "
          f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s")
    for name, r in results.items():
        print(f"{name:6s} {r['rps']:9.1f} req/s  p50 {r['p50']:>8}  p99 {r['p99']:>8}  "
              f"server CPU {r['cpu_us']:5.0f} us/request  non-2xx {r['non_2xx']}")
    ratio = statistics.median(rounds)
    each = f" (median of {len(rounds)} rounds: {', '.join(f'{r:.1%}' for r in rounds)})" \
        if len(rounds) > 1 else ""
    print(f"creep / bare = {ratio:.1%}{each} (target >= 50%)")


if __name__ == "__main__":
    main()
