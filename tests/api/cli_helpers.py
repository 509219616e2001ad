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
    """`creep *args` in a process of its own (the console script's whole path: start-up,
    exit code, the streams as a pipe sees them)."""
    env = {**os.environ, **_cli_env(server, key, url)}
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "creep.cli", *args], env=env, capture_output=True, text=True,
        timeout=timeout, cwd=cwd,
    )


def creep_here(server: Server | None, *args: str, key: str | None = None,
               url: str | None = None) -> subprocess.CompletedProcess[str]:
    """`creep *args` through the same Typer app in this process: what `creep` does minus the
    interpreter's start-up (~0.6 s of imports a call, which the CLI suites would otherwise
    spend hundreds of times). A crash raises here rather than becoming an exit code, so a
    test cannot mistake a traceback for a refusal."""
    from typer.testing import CliRunner

    from creep.cli import app

    result = CliRunner().invoke(app, list(args), env=_cli_env(server, key, url))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(
        ["creep", *args], result.exit_code, result.stdout, result.stderr)


def _cli_env(server: Server | None, key: str | None, url: str | None) -> dict[str, str | None]:
    env: dict[str, str | None] = {"COLUMNS": "200", "CREEP_API_URL": None, "CREEP_API_KEY": None}
    if server is not None:
        env["CREEP_API_URL"] = url or server.url
        env["CREEP_API_KEY"] = key or server.admin_key
    return env


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
