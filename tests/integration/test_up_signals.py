"""`creep up` stopped by signals while a task runs and while it starts: its workers give their
tasks back uncharged, and it says what happened. The example handlers take milliseconds, so
the processes `creep up` starts load a sitecustomize that adds a handler that runs until it
is stopped (HANG), and can hold the server's start back."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from creep.storage import open_store
from tests.api.conftest import free_port
from tests.conftest import child_pythonpath, wait_until

pytestmark = pytest.mark.timeout(60)

_HOOKS = '''
import os, sys
if "worker" in sys.argv:
    import asyncio
    import creep.examples as examples

    built = examples.build_example_app

    def build(database_url=None):
        app = built(database_url)

        @app.handler("HANG")
        async def hang(ctx):
            await asyncio.sleep(3600)

        @app.handler("STUBBORN")
        async def stubborn(ctx):  # ignores its cancellation for 10 s
            end = asyncio.get_running_loop().time() + 10
            while (left := end - asyncio.get_running_loop().time()) > 0:
                try:
                    await asyncio.sleep(left)
                except asyncio.CancelledError:
                    pass

        return app

    examples.build_example_app = build
if "server" in sys.argv and os.environ.get("SLOW_SERVER_START"):
    import time
    time.sleep(float(os.environ["SLOW_SERVER_START"]))
'''


def _start(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(_HOOKS)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CREEP_")}
    return subprocess.Popen(
        [sys.executable, "-m", "creep.cli", "up", "--port", str(free_port()), *args],
        cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**base, "PYTHONPATH": child_pythonpath(str(hooks)), "CREEP_LOG_JSON": "false",
             **env},
    )


def _banner(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The URL and admin key `creep up` printed."""
    assert proc.stdout is not None
    url = ""
    for line in proc.stdout:
        if line.startswith("creep is up: "):
            url = line.split()[3]
        if line.startswith("admin key: "):
            return url, line.split()[2]
    raise AssertionError(f"creep up exited {proc.wait()}: {proc.stderr.read()}")  # type: ignore[union-attr]


def _hanging_task(url: str, key: str, task_type: str = "HANG") -> str:
    """A HANG task, once the worker runs it."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.post("/v1/tenants", json={"tenant_id": "t"}).status_code == 201
        task_id: str = c.post("/v1/tasks", json={"tenant_id": "t", "task_type": task_type}
                              ).json()["task_id"]
        assert wait_until(
            lambda: c.get(f"/v1/tasks/{task_id}").json()["status"] == "RUNNING", 10)
    return task_id


def _given_back(tmp_path: Path, task_id: str) -> None:
    """The task is queued again, its attempt not charged."""
    store = open_store(f"sqlite:///{tmp_path}/creep.db")
    try:
        task = store.task_get(task_id)
        assert task is not None and task.status.value == "QUEUED", task
        assert task.attempt == 0, task
    finally:
        store.close()


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()  # its processes stop by themselves once it is gone
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def test_up_with_no_shutdown_grace_still_lets_a_running_task_be_given_back(
    tmp_path: Path,
) -> None:
    """With --shutdown-grace under 2 s, `creep up` SIGKILLed every process 0.1 s after the
    stop (the server, the scheduler, and a worker writing its running task's requeue, which
    then stayed RUNNING until its claim expired and was charged an attempt)."""
    proc = _start(tmp_path, "--workers", "1", "--shutdown-grace", "0")
    try:
        task_id = _hanging_task(*_banner(proc))
        # Writes that take a moment (here another writer holds SQLite for 0.5 s).
        with sqlite3.connect(tmp_path / "creep.db", isolation_level=None) as busy:
            busy.execute("BEGIN IMMEDIATE")
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            busy.execute("ROLLBACK")
        out, errors = proc.communicate(timeout=15)
    finally:
        _reap(proc)
    _given_back(tmp_path, task_id)
    assert proc.returncode == 0, errors
    assert "killing" not in errors, errors
    assert out.rstrip().endswith("stopped"), out


def test_up_gives_back_a_task_whose_handler_ignores_cancellation(tmp_path: Path) -> None:
    """`creep up` kills a worker 2 s after the worker's grace; the worker then waited up to
    5 s for a handler it cancelled before writing the requeue, so a handler ignoring its
    cancellation got it killed first: the task stayed RUNNING until its claim expired and
    was charged an attempt. The requeue is now written within that margin."""
    proc = _start(tmp_path, "--workers", "1", "--shutdown-grace", "3")
    try:
        task_id = _hanging_task(*_banner(proc), task_type="STUBBORN")
        proc.send_signal(signal.SIGTERM)
        out, errors = proc.communicate(timeout=15)
    finally:
        _reap(proc)
    assert proc.returncode == 0, errors
    # Its handler still runs, so the worker itself is killed, but after giving the task back.
    assert "worker 1 did not stop within 3 s; killing it" in errors, errors
    assert out.rstrip().endswith("stopped"), out
    _given_back(tmp_path, task_id)


def test_a_second_ctrl_c_reaches_the_workers(tmp_path: Path) -> None:
    """A worker stops waiting for its running tasks at a second SIGINT/SIGTERM; `creep up`
    kept a second Ctrl-C to itself, so it still waited the workers' whole grace."""
    proc = _start(tmp_path, "--workers", "1", "--shutdown-grace", "60")
    try:
        task_id = _hanging_task(*_banner(proc))
        proc.send_signal(signal.SIGINT)
        assert proc.stdout is not None
        assert "stopping ...\n" in iter(proc.stdout.readline, "")
        time.sleep(0.5)  # the worker is waiting for its task
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, errors = proc.communicate(timeout=10)
    finally:
        _reap(proc)
    assert proc.returncode == 0, errors
    assert time.monotonic() - started < 10  # not the workers' grace of 58 s
    assert "killing" not in errors, errors
    assert out.rstrip().endswith("stopped"), out
    _given_back(tmp_path, task_id)


def test_sigterm_while_starting_stops_without_saying_it_is_up(tmp_path: Path) -> None:
    """A SIGTERM before the server answered was not seen until it did: `creep up` printed
    "creep is up" and the admin key, then stopped."""
    proc = _start(tmp_path, "--workers", "1", SLOW_SERVER_START="8")
    try:
        assert wait_until(lambda: len(subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()) == 3, 10)  # server, worker and scheduler started
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, errors = proc.communicate(timeout=15)
    finally:
        _reap(proc)
    assert proc.returncode == 0, errors
    assert time.monotonic() - started < 5, (out, errors)
    assert "creep is up" not in out and "admin key" not in out, out
    assert out.rstrip().endswith("stopped"), out
