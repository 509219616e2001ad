"""`creep server` and `creep up` as supervisors of their processes: the exit status when a
process they started fails, and what they say."""

from __future__ import annotations

import http.server
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from creep.storage import open_store
from tests.api.conftest import free_port
from tests.conftest import child_pythonpath


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREEP_")}
    return {**env, "PYTHONPATH": child_pythonpath(), "CREEP_LOG_JSON": "false", **extra}


def test_server_with_workers_exits_non_zero_when_a_process_fails_to_start(
    tmp_path: Path,
) -> None:
    """A failure in the app's start-up that the parent's schema check cannot see (here the
    bootstrap admin key cannot be stored) stopped uvicorn's supervisor, which returned
    normally: `creep server --workers 2` exited 0, as one process does not."""
    url = f"sqlite:///{tmp_path}/creep.db"
    open_store(url, migrate=True).close()
    with sqlite3.connect(tmp_path / "creep.db") as conn:
        conn.execute("CREATE TRIGGER no_keys BEFORE INSERT ON api_keys "
                     "BEGIN SELECT RAISE(ABORT, 'no new keys'); END")
    for workers in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "creep.cli", "server", "--database-url", url,
             "--port", str(free_port()), "--workers", workers],
            env=_env(CREEP_ADMIN_KEY="k" * 32), capture_output=True, text=True, timeout=60,
        )
        assert "no new keys" in done.stderr, done.stderr[-2000:]
        assert done.returncode == 3, (workers, done.stderr[-2000:])


pytestmark = pytest.mark.timeout(120)


class _Live(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_up_on_a_port_another_server_holds_says_so_and_never_that_it_is_up(
    tmp_path: Path,
) -> None:
    """Its server could not listen, but the other server (another `creep up`) answered the
    liveness probe: `creep up` printed "creep is up" and an admin key for that other server,
    then stopped with 'server exited with 3'. It now says the port is taken, before starting
    anything."""
    other = http.server.HTTPServer(("127.0.0.1", 0), _Live)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        port = other.server_address[1]
        done = subprocess.run(
            [sys.executable, "-m", "creep.cli", "up", "--port", str(port), "--workers", "0"],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
        )
    finally:
        other.shutdown()
        other.server_close()
    assert "creep is up" not in done.stdout, done.stdout
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), done.stderr
