"""`creep up`: everything on one machine in one process tree — migrations, the API server and
a worker pool running the example handlers (each a child process), an admin key kept beside the
database, and with --demo a tenant and a steady stream of example tasks. Ctrl-C / SIGTERM stops
the children gracefully and exits 0."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer

from creep.cli_http.common import err, error_line, out

if TYPE_CHECKING:
    from creep.client import Client

DEMO_TENANT = "demo"
_PROXY = [{"sku_category": "PROXY"}]
# (task_type, extra fields): succeeds, retries then succeeds, fails, exceeds its time budget,
# runs on a leased proxy (lease cost + its own cost and revenue in the ledger), and asks for a
# proxy whose lease alone costs more than its max_total_cost (FAILED, BUDGET_EXCEEDED).
DEMO_MIX: list[tuple[str, dict[str, Any]]] = [
    ("ECHO", {}),
    ("SCRAPE_PAGE", {"resource_hints": _PROXY}),
    ("SLOW_REPORT", {}),
    ("FLAKY_CALL", {}),
    ("SCRAPE_PAGE", {"resource_hints": _PROXY, "max_total_cost": "0.10"}),
    ("ECHO", {"priority": 90}),
    ("CHARGE_CARD", {}),
    ("SCRAPE_PAGE", {"resource_hints": [{"sku_category": "PROXY",
                                         "attributes": {"country": "uk"}}]}),
    ("SLOW_REPORT", {"timeout_ms": 1, "constraints": {"max_retries": 0}}),
]
# The demo's asset pool: each lease costs 0.25 USD, then the proxy cools down for 5 s.
DEMO_ASSETS = [
    {"sku_category": "PROXY", "sku_code": f"proxy.{country}.{n}",
     "attributes": {"country": country}, "cost_per_lease": "0.25", "currency": "USD",
     "cooldown_seconds": 5, "max_concurrency": 1}
    for country, n in (("uk", 1), ("uk", 2), ("de", 1), ("us", 1), ("us", 2))
]


def demo_schedules(now: datetime) -> list[dict[str, Any]]:
    """An interval schedule whose first run is in a few seconds, and a nightly cron one."""
    return [
        {"name": "demo-every-30s", "type": "ECHO", "interval": 30,
         "next_run": (now + timedelta(seconds=3)).isoformat(), "data": {"from": "schedule"},
         "description": "fires every 30 s (`creep schedule history`)"},
        {"name": "demo-nightly-report", "type": "SLOW_REPORT", "cron_expr": "0 3 * * *",
         "description": "a cron schedule: every night at 03:00 UTC"},
    ]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]


def key_file_for(database_url: str) -> Path:
    """Beside the SQLite file; for PostgreSQL in the working directory."""
    if database_url.startswith("sqlite:"):
        path = urlsplit(database_url).path
        path = path[1:] if path.startswith("/") else path
        return Path(path + ".admin-key")
    return Path(".creep-admin-key")


def admin_key(path: Path) -> tuple[str, bool]:
    """The kept admin key, or a new one written with mode 0600: (key, created)."""
    from creep.domain.tenancy import new_key_secret

    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key, False
    key = new_key_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    return key, True


#: Set in the environment of the processes `creep up` starts: its pid (see stop_with_parent).
PARENT_ENV = "CREEP_UP_PARENT_PID"


def _spawn(name: str, args: list[str], env: dict[str, str]) -> Child:
    # A session of its own: Ctrl-C reaches only this process, which stops the children in order.
    proc = subprocess.Popen([sys.executable, "-m", "creep.cli", *args],
                            env={**env, PARENT_ENV: str(os.getpid())}, start_new_session=True)
    return Child(name, proc)


def stop_with_parent() -> None:
    """In a process `creep up` started: SIGTERM itself (a graceful stop) once `creep up` is
    gone. In a session of its own, it would otherwise run on after a kill -9 or a crash of
    `creep up`, holding the port and its tasks. Compared with the pid `creep up` passed, not
    with the parent found at start, so a parent gone before the check is seen too."""
    parent = os.environ.pop(PARENT_ENV, None)  # not for processes this one starts
    if not parent or not parent.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="creep-up-parent", daemon=True).start()


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port, else None. Asked before anything starts:
    while our server fails to bind, another one there (another `creep up`) would answer the
    liveness probe, and we would announce it as ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _wait_live(
    url: str, children: list[Child], timeout: float, stopping: threading.Event
) -> str | None:
    """None once the server answers or a stop is asked for, else why not."""
    deadline = time.monotonic() + timeout
    while not stopping.is_set() and time.monotonic() < deadline:
        for child in children:
            if child.proc.poll() is not None:
                return f"{child.name} exited with {child.proc.returncode}"
        try:
            if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        stopping.wait(0.1)
    return None if stopping.is_set() else f"the server did not answer within {timeout:g} s"


#: Of `--shutdown-grace`, what a stopping worker keeps to give its running tasks back, and
#: the least time any process gets to stop before it is killed.
_STOP_MARGIN = 2.0


def _stop(children: list[Child], grace: float) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    # Never under the margin: a worker with no grace left still writes its running tasks'
    # requeue, which killed would leave them RUNNING, charged an attempt once their claims
    # expire (and the scheduler still gives its leader lock back).
    grace = max(grace, _STOP_MARGIN)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            err.print(f"{child.name} did not stop within {grace:g} s; killing it")
            child.proc.kill()
            child.proc.wait()


def _seed(c: Client) -> None:
    """The demo tenant, its asset pool and schedules; what an earlier `creep up --demo` seeded
    is kept (409s are expected then)."""
    from creep.client import ApiProblem

    def created(make: Callable[[], object]) -> None:
        try:
            make()
        except ApiProblem as exc:
            if exc.status != 409:
                raise

    created(lambda: c.create_tenant(DEMO_TENANT, name="Demo tenant"))
    if not c.list_assets(tenant_id=DEMO_TENANT, sku_category="PROXY", limit=1).items:
        c.create_assets([{**a, "tenant_id": DEMO_TENANT} for a in DEMO_ASSETS])
    for sched in demo_schedules(datetime.now(UTC)):
        created(functools.partial(c.create_schedule, sched, tenant_id=DEMO_TENANT))


def _demo(url: str, key: str, rate: float, stop: threading.Event) -> None:
    """Seed the demo tenant, then submit example tasks until stopped."""
    from creep.client import Client, ClientError

    with Client(url, key) as c:
        try:
            _seed(c)
        except ClientError as exc:
            err.print(f"demo: cannot seed the demo tenant: {exc}")
            return
        n = 0
        while not stop.is_set():
            task_type, extra = DEMO_MIX[n % len(DEMO_MIX)]
            try:
                c.create_task(tenant_id=DEMO_TENANT, env="dev", task_type=task_type,
                              input_payload={"n": n}, tags=["demo"], **extra)
            except ClientError as exc:
                if stop.is_set():
                    return
                err.print(f"demo: submit failed: {exc}")
            n += 1
            stop.wait(1.0 / rate)


def up(
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", envvar="CREEP_DATABASE_URL",
                     help="default sqlite:///./creep.db"),
    ] = None,
    host: Annotated[str, typer.Option(envvar="CREEP_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CREEP_PORT", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=0, max=64, help="Worker processes.")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks in flight per worker.")] = 8,
    demo: Annotated[bool, typer.Option("--demo", help="Seed a demo tenant and submit a "
                                       "steady stream of example tasks.")] = False,
    demo_rate: Annotated[float, typer.Option(min=0.1, max=1000,
                                             help="Demo tasks per second.")] = 2.0,
    key_file: Annotated[
        Path | None, typer.Option(help="Where the admin key is kept [beside the database]")
    ] = None,
    shutdown_grace: Annotated[float, typer.Option(
        min=0, help="Seconds to stop in: running tasks get all but 2 s to finish, then are "
        "given back; a process still running after it (2 s at least) is killed.")] = 15.0,
) -> None:
    """Run creep on this machine: API server + workers (example handlers), one command."""
    from creep.api.settings import SettingsError, load_settings
    from creep.domain.errors import CreepError
    from creep.storage import database_url as resolve_url
    from creep.storage import open_store, require_current_schema

    url = resolve_url(database_url)
    try:
        settings = load_settings(database_url=url, host=host, port=port)
    except SettingsError as exc:
        for line in exc.problems:
            err.print(error_line(line))
        raise typer.Exit(2) from None
    try:
        store = open_store(url, migrate=settings.auto_migrate)
        try:
            if not settings.auto_migrate:
                require_current_schema(store)
            version = store.schema_version()
        finally:
            store.close()
    except CreepError as exc:
        err.print(error_line(str(exc)))
        raise typer.Exit(2) from None
    path = key_file or key_file_for(url)
    try:
        key, created = admin_key(path)
    except OSError as exc:
        err.print(error_line(f"cannot keep the admin key in {str(path)!r}: {exc}"))
        raise typer.Exit(2) from None

    taken = _cannot_listen(host, port)
    if taken is not None:
        err.print(error_line(taken))
        raise typer.Exit(2)

    stopping = threading.Event()
    children: list[Child] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            # Asked again while stopping: pass it on (the children have sessions of their
            # own, out of the terminal's reach). A worker then gives its running tasks back
            # at once instead of waiting out its grace; the server stops waiting too.
            for child in children:
                child.proc.send_signal(signal.SIGTERM)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = {**os.environ, "CREEP_ADMIN_KEY": key, "CREEP_DATABASE_URL": url,
           "CREEP_LOG_JSON": os.environ.get("CREEP_LOG_JSON", "false"),
           # Quiet by default: no access log line per request (CREEP_LOG_LEVEL=INFO shows it).
           "CREEP_LOG_LEVEL": os.environ.get("CREEP_LOG_LEVEL", "WARNING")}
    env.pop("CREEP_API_URL", None)
    children.append(_spawn("server", ["server", "--host", host, "--port", str(port)], env))
    children += [
        _spawn(f"worker {i + 1}", ["worker", "--app", "creep.up_worker:app",
                                   "--database-url", url, "--concurrency", str(concurrency),
                                   "--shutdown-grace",
                                   str(max(shutdown_grace - _STOP_MARGIN, 0))], env)
        for i in range(workers)
    ]
    # The scheduler fires cron/interval schedules and runs the built-in retention schedules.
    children.append(_spawn("scheduler", ["scheduler", "--database-url", url], env))
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    problem = _wait_live(base, children, timeout=60, stopping=stopping)
    if problem is not None:
        err.print(error_line(problem))
        _stop(children, shutdown_grace)
        raise typer.Exit(1)
    if stopping.is_set():  # asked to stop while starting: there is nothing to announce
        out.print("stopping ...")
        _stop(children, shutdown_grace)
        out.print("stopped")
        raise typer.Exit(0)
    out.print(f"creep is up: {base}  (API docs {base}/docs; schema version {version})",
              highlight=False)
    out.print(f"dashboard: {base}/ui", highlight=False)
    out.print(f"database:  {url}", highlight=False)
    out.print(f"admin key: {key}  ({'new, ' if created else ''}kept in {path})",
              highlight=False)
    out.print(f"try:       export CREEP_API_URL={base} CREEP_API_KEY={key}; creep task list",
              highlight=False)
    out.print(f"{workers} worker process(es) and a scheduler; the workers run the example handlers "
              "(ECHO, SLOW_REPORT, FLAKY_CALL, CHARGE_CARD, SCRAPE_PAGE); Ctrl-C stops everything.",
              highlight=False)
    sys.stdout.flush()
    feeder = None
    if demo:
        feeder = threading.Thread(target=_demo, args=(base, key, demo_rate, stopping),
                                  name="demo", daemon=True)
        feeder.start()
        out.print(f"demo: tenant {DEMO_TENANT!r} with {len(DEMO_ASSETS)} proxies (assets) and 2 "
                  f"schedules; {demo_rate:g} example tasks per second", highlight=False)
    code = 0
    while not stopping.wait(0.2):
        dead = [c for c in children if c.proc.poll() is not None]
        if dead:
            err.print(error_line(f"{dead[0].name} exited with {dead[0].proc.returncode}; "
                                 "stopping"))
            code = 1
            break
    stopping.set()
    out.print("stopping ...")
    if feeder is not None:
        feeder.join(timeout=5)
    _stop(children, shutdown_grace)
    out.print("stopped")
    raise typer.Exit(code)
