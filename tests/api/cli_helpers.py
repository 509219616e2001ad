"""Run `creep` as a subprocess against a test server; start a worker process beside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.api.conftest import Server


def creep(server: Server | None, *args: str, key: str | None = None, cwd: Path | None = None,
          url: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("CREEP_API_URL", None)
    env.pop("CREEP_API_KEY", None)
    if server is not None:
        env["CREEP_API_URL"] = url or server.url
        env["CREEP_API_KEY"] = key or server.admin_key
    return subprocess.run(
        [sys.executable, "-m", "creep.cli", *args], env=env, capture_output=True, text=True,
        timeout=timeout, cwd=cwd,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return orjson.loads(result.stdout)


def start_worker(database_url: str, log: Path) -> subprocess.Popen[bytes]:
    """The example handlers (creep up's worker app) working the test server's database."""
    with log.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "creep.cli", "worker", "--app", "creep.up_worker:app",
             "--database-url", database_url, "--concurrency", "4", "--log-level", "WARNING"],
            stdout=f, stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
