"""Operations: readiness when the database is down (a quick 503 problem), settings validated
at start, metrics, JSON logs with request ids, `creep keys create`."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest

from tests.api.conftest import Server, _pg_schema, free_port, start_server, stop_server
from tests.conftest import PG_URL, require_postgres


class TcpProxy:
    """A TCP proxy to PostgreSQL that the test can cut (refuse) or stall (accept, then
    never answer), to play a database that went away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.mode = "forward"
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            if self.mode == "stall":
                continue  # hold the connection open, say nothing
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()


def _timed_ready(server: Server) -> tuple[int, float, dict[str, object]]:
    started = time.monotonic()
    r = httpx.get(f"{server.url}/health/ready", timeout=30)
    return r.status_code, time.monotonic() - started, r.json()


def test_readiness_on_sqlite_when_the_file_is_gone(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db = tmp_path / "ready.db"
    server = start_server(f"sqlite:///{db}", tmp_path / "s.log")
    try:
        assert _timed_ready(server)[0] == 200
        moved = tmp_path / "elsewhere"
        moved.mkdir()
        for f in tmp_path.glob("ready.db*"):
            shutil.move(f, moved / f.name)
        status, seconds, body = _timed_ready(server)
        assert status == 503 and body["title"] == "Not ready" and seconds < 5
        for f in moved.iterdir():
            shutil.move(f, tmp_path / f.name)
        assert _timed_ready(server)[0] == 200
    finally:
        stop_server(server)


@pytest.fixture
def proxied_postgres(tmp_path: Path) -> Iterator[tuple[TcpProxy, str]]:
    require_postgres()
    url, drop = _pg_schema()
    schema = url.rsplit("search_path%3D", 1)[-1]
    proxy = TcpProxy(("127.0.0.1", int(PG_URL.rsplit(":", 1)[-1].split("/")[0])))
    proxy.start()
    database = PG_URL.rsplit("/", 1)[-1]
    proxied = (f"postgresql://127.0.0.1:{proxy.port}/{database}"
               f"?options={quote(f'-csearch_path={schema}')}&pool_min=1")
    yield proxy, proxied
    proxy.cut()
    drop()


def test_readiness_on_postgres_when_the_database_is_down(
    proxied_postgres: tuple[TcpProxy, str], tmp_path: Path
) -> None:
    proxy, url = proxied_postgres
    server = start_server(url, tmp_path / "s.log", CREEP_READY_TIMEOUT_SECONDS="1")
    try:
        assert _timed_ready(server)[0] == 200
        proxy.cut()  # connection refused
        status, seconds, body = _timed_ready(server)
        assert status == 503 and seconds < 5, body
        assert body["status"] == 503 and body["type"].endswith("/not-ready")
        proxy.mode = "stall"
        proxy.start()  # accepts, never answers: the probe must still give up in time
        status, seconds, body = _timed_ready(server)
        assert status == 503 and seconds < 5, body
        proxy.cut()
        proxy.mode = "forward"
        proxy.start()
        assert _timed_ready(server)[0] == 200
    finally:
        stop_server(server)


def test_bad_settings_stop_the_server_before_it_starts(tmp_path: Path) -> None:
    env = {**os.environ, "CREEP_PORT": "99999", "CREEP_RATE_LIMIT_BURST": "zero",
           "CREEP_ADMIN_KEY": "short", "CREEP_LOG_LEVEL": "LOUD"}
    result = subprocess.run(
        [sys.executable, "-m", "creep.cli", "server", "--database-url", "ftp://x/y",
         "--host", "127.0.0.1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    named = sorted(line.split(":")[1].strip() for line in lines)
    assert named == ["--database-url", "CREEP_ADMIN_KEY", "CREEP_LOG_LEVEL", "CREEP_PORT",
                     "CREEP_RATE_LIMIT_BURST"], result.stderr
    missing_dir = subprocess.run(
        [sys.executable, "-m", "creep.cli", "server", "--database-url",
         f"sqlite:///{tmp_path}/no/such/dir/c.db"],
        capture_output=True, text=True, timeout=60,
    )
    assert missing_dir.returncode == 2 and "does not exist" in missing_dir.stderr


def test_metrics_logs_and_runtime_log_level(tmp_path: Path) -> None:
    server = start_server(f"sqlite:///{tmp_path}/m.db", tmp_path / "s.log",
                          CREEP_LOG_LEVEL="INFO")
    try:
        _tenant, key = server.tenant()
        with server.client(key) as c:
            c.post("/v1/tasks", json={"task_type": "METERED", "priority": 95},
                   headers={"X-Request-ID": "metered-1"})
        text = httpx.get(f"{server.url}/metrics").text
        assert 'creep_tasks_created_total{task_type="METERED"} 1.0' in text
        assert 'creep_queue_depth{priority_band="9",status="QUEUED"} 1.0' in text
        assert 'creep_http_request_duration_seconds_count{method="POST",route="/v1/tasks",' \
               'status="201"} 1.0' in text
        lines = [orjson.loads(line) for line in server.logs().splitlines()
                 if line.startswith("{")]
        access = [line for line in lines if line.get("request_id") == "metered-1"]
        assert access and access[0]["status"] == 201 and access[0]["path"] == "/v1/tasks"

        with server.admin() as admin:
            assert admin.get("/v1/admin/log-level", params={"logger": "creep.api.access"}
                             ).json()["level"] == "INFO"
            r = admin.put("/v1/admin/log-level",
                          json={"logger": "creep.api.access", "level": "WARNING"})
            assert r.status_code == 200
            assert admin.put("/v1/admin/log-level", json={"level": "CHATTY"}).status_code == 422
        with server.client(key) as c:
            c.get("/v1/tasks", headers={"X-Request-ID": "quiet-1"})
        assert '"quiet-1"' not in server.logs()
    finally:
        stop_server(server)


def test_keys_create_command_makes_a_working_key(server: Server) -> None:
    env = {**os.environ, "CREEP_DATABASE_URL": server.database_url}
    made = subprocess.run(
        [sys.executable, "-m", "creep.cli", "keys", "create", "--admin", "--name", "ops"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("crp_") and secret not in made.stderr
    with server.client(secret) as c:
        assert c.get("/v1/tenants").status_code == 200
    bad = subprocess.run(
        [sys.executable, "-m", "creep.cli", "keys", "create", "--name", "x", "--tenant", "nope"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "tenant nope not found" in bad.stderr
