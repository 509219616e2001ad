"""A real `creep server` process per backend, shared by the API tests, driven over HTTP; and
the in-process API of tests/api/inprocess.py as fixtures (`clock`, `app`, `api`: a module may
redefine any of them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from creep import Creep, FrozenClock
from tests.api.inprocess import T0, TestClient, acme_api
from tests.conftest import PG_URL, require_postgres

ADMIN_KEY = "test-admin-key-" + "x" * 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    database_url: str
    admin_key: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _tenants: list[str] = field(default_factory=list)

    def client(
        self, key: str | None = None, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Client:
        merged = {"Authorization": f"Bearer {key}"} if key else {}
        merged.update(headers or {})
        return httpx.Client(base_url=self.url, headers=merged, timeout=30, **kwargs)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_key)

    def tenant(self, **limits: Any) -> tuple[str, str]:
        """A fresh tenant and a key for it: (tenant_id, key)."""
        tenant_id = f"t-{uuid.uuid4().hex[:10]}"
        with self.admin() as c:
            r = c.post("/v1/tenants", json={"tenant_id": tenant_id, **limits})
            assert r.status_code == 201, r.text
            r = c.post("/v1/keys", json={"name": f"key of {tenant_id}", "tenant_id": tenant_id})
            assert r.status_code == 201, r.text
            return tenant_id, r.json()["key"]

    def key(self, tenant_id: str | None, **options: Any) -> dict[str, Any]:
        body = {"name": "extra key", "tenant_id": tenant_id, **options}
        if tenant_id is None:
            body["role"] = "admin"
        with self.admin() as c:
            r = c.post("/v1/keys", json=body)
            assert r.status_code == 201, r.text
            data: dict[str, Any] = r.json()
            return data

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(database_url: str, log_path: Path, **env: str) -> Server:
    port = free_port()
    environ = {
        **os.environ,
        "CREEP_DATABASE_URL": database_url,
        "CREEP_ADMIN_KEY": ADMIN_KEY,
        "CREEP_PORT": str(port),
        "CREEP_LOG_LEVEL": "WARNING",
        "CREEP_SSE_POLL_SECONDS": "0.05",
        # Artifact uploads land next to the server's log, never in the working directory.
        "CREEP_ARTIFACT_DIR": str(log_path.parent / "artifacts"),
        **env,
    }
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "creep.cli", "server"], env=environ, stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", database_url, ADMIN_KEY, proc, log_path)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.logs()}")
        try:
            if httpx.get(f"{server.url}/health/live", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{server.logs()}")
        time.sleep(0.1)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def _pg_schema() -> tuple[str, Callable[[], None]]:
    import psycopg

    schema = f"creep_api_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"

    def drop() -> None:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    return url, drop


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database URL for the API tests: an SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db')}/creep.db"
        return
    require_postgres()
    url, drop = _pg_schema()
    yield url
    drop()


@pytest.fixture(scope="session")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per backend for all API tests (each test makes tenants of its own), default
    settings; tests that need other settings start their own."""
    srv = start_server(database, tmp_path_factory.mktemp("log") / "server.log")
    yield srv
    stop_server(srv)


def read_sse(response: httpx.Response, stop_after: int | None = None) -> list[dict[str, str]]:
    """The events of a Server-Sent Events response, up to the close (`end` without an `id`),
    or `stop_after` events."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "event" in current:
                events.append(current)
                closed = current["event"] == "end" and "id" not in current
                if closed or (stop_after and len(events) >= stop_after):
                    return events
            current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        current[name] = value
    return events


@pytest.fixture(scope="module")
def worker_server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server for the HTTP worker protocol's tests, one per module: claims poll every 50 ms
    and the maintenance (the rescuer) runs every 200 ms."""
    log = tmp_path_factory.mktemp("workers") / "server.log"
    server = start_server(database, log, CREEP_CLAIM_POLL_SECONDS="0.05",
                          CREEP_MAINTENANCE_INTERVAL_SECONDS="0.2")
    yield server
    stop_server(server)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)
    yield creep_app
    creep_app.close()


@pytest.fixture
def api(app: Creep, db_url: str, clock: FrozenClock) -> Iterator[TestClient]:
    """The in-process API on `app`'s store and clock, tenant `acme` created."""
    with acme_api(app, db_url, clock) as client:
        yield client
