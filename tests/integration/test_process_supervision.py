"""`creep server` and `creep up` as supervisors of their processes: the exit status when a
process they started fails, and what they say."""

from __future__ import annotations

import http.server
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from creep.storage import open_store
from tests.api.conftest import free_port
from tests.conftest import child_pythonpath, wait_until


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


def _alive(pid: int) -> bool:
    """Running (Linux): an exited process init has not reaped yet is a zombie, not alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_killed_leaves_no_process_behind(tmp_path: Path) -> None:
    """`creep up` starts its processes in sessions of their own (Ctrl-C reaches only it, and
    it stops them in order), so when it died without stopping them (kill -9, a crash) the
    server, workers and scheduler ran on, holding the port and the tasks. Each now stops,
    as on SIGTERM, once `creep up` is gone."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "creep.cli", "up", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    children: list[int] = []
    try:
        for line in proc.stdout:
            if line.startswith("creep is up: "):
                break
        else:
            pytest.fail(f"creep up exited {proc.wait()}")
        children = [int(pid) for pid in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        assert len(children) == 3  # server, worker, scheduler
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not any(_alive(pid) for pid in children), 10), (
            [pid for pid in children if _alive(pid)])
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
