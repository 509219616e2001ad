"""`creep up` as a subprocess: probed over HTTP, stopped with SIGINT / SIGTERM (exit 0), and
started again with the admin key it kept."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import _pg_schema, free_port
from tests.conftest import require_postgres


def _start(cwd: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start `creep up` and read its banner: {"url": ..., "key": ...}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREEP_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "creep.cli", "up", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: dict[str, str] = {}
    lines: list[str] = []
    for line in proc.stdout:  # the banner comes within the startup timeout of `creep up`
        lines.append(line)
        if line.startswith("creep is up: "):
            seen["url"] = line.split()[3]
        if line.startswith("dashboard: "):
            seen["dashboard"] = line.split()[1]
        if line.startswith("admin key: "):
            seen["key"] = line.split()[2]
            seen["banner"] = line
            return proc, seen
    proc.wait()
    raise AssertionError(f"creep up exited {proc.returncode}:\n{''.join(lines)}")


def _stop(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    return rest


def _wait_for(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_creep_up_demo_on_sqlite(tmp_path: Path) -> None:
    port = free_port()
    proc, seen = _start(tmp_path, "--port", str(port), "--demo", "--demo-rate", "20")
    try:
        url, key = seen["url"], seen["key"]
        assert url == f"http://127.0.0.1:{port}" and "new" in seen["banner"]
        key_file = tmp_path / "creep.db.admin-key"
        assert key_file.read_text().strip() == key
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            assert c.get("/health/ready").status_code == 200
            assert seen["dashboard"] == f"{url}/ui"
            assert c.get("/ui/").headers["content-type"].startswith("text/html")

            def finished() -> bool:
                tasks = c.get("/v1/tasks", params={"tenant_id": "demo", "limit": 500}).json()
                statuses = {t["status"] for t in tasks["items"]}
                codes = {t["result_code"] for t in tasks["items"]}
                scraped = {t["task_type"] for t in tasks["items"] if t["status"] == "SUCCESS"}
                return ({"SUCCESS", "FAILED", "TIMEOUT"} <= statuses
                        and "BUDGET_EXCEEDED" in codes and "SCRAPE_PAGE" in scraped)

            _wait_for(finished, "the demo tasks to succeed, fail, time out and exceed budgets")
            assets = c.get("/v1/assets", params={"tenant_id": "demo"}).json()["items"]
            assert len(assets) == 5 and {a["sku_category"] for a in assets} == {"PROXY"}
            leases = c.get("/v1/leases", params={"tenant_id": "demo"}).json()["items"]
            assert leases and all(x["cost"] == "0.25" for x in leases)
            ledger = c.get("/v1/ledger/summary", params={"tenant_id": "demo"}).json()["items"]
            assert ledger and float(ledger[0]["revenue"]) > 0 and float(ledger[0]["cost"]) > 0
            schedules = c.get("/v1/schedules", params={"tenant_id": "demo"}).json()["items"]
            every = {s["name"]: s for s in schedules}["demo-every-30s"]
            assert {s["name"] for s in schedules} == {"demo-every-30s", "demo-nightly-report"}

            def fired() -> bool:
                runs = c.get(f"/v1/schedules/{every['uid']}/executions").json()["items"]
                return any(r["trigger_type"] == "scheduled" and r["task_id"] for r in runs)

            _wait_for(fired, "the interval schedule to fire")
    except BaseException:
        proc.kill()
        raise
    out = _stop(proc, signal.SIGINT)
    assert "stopped" in out

    # Again: the kept key, the same database (the demo tenant exists already).
    restarted = datetime.now(UTC)
    proc, again = _start(tmp_path, "--port", str(free_port()), "--workers", "0", "--demo")
    try:
        assert again["key"] == key and "new" not in again["banner"]
        r = httpx.get(f"{again['url']}/v1/tenants/demo",
                      headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        # Nothing of the demo's seed is doubled by a second `creep up --demo` (it seeds
        # before it submits the first task).
        with httpx.Client(base_url=again["url"], headers={"Authorization": f"Bearer {key}"}) as c:
            _wait_for(lambda: c.get("/v1/tasks", params={
                "tenant_id": "demo", "created_from": restarted.isoformat()}).json()["items"],
                "the second demo to submit tasks")
            assert len(c.get("/v1/assets", params={"tenant_id": "demo"}).json()["items"]) == 5
            assert len(c.get("/v1/schedules", params={"tenant_id": "demo"}).json()["items"]) == 2
    except BaseException:
        proc.kill()
        raise
    _stop(proc, signal.SIGTERM)


def test_creep_up_on_postgres(tmp_path: Path) -> None:
    require_postgres()
    url, drop = _pg_schema()
    try:
        proc, seen = _start(tmp_path, "--database-url", url, "--port", str(free_port()))
        try:
            assert (tmp_path / ".creep-admin-key").read_text().strip() == seen["key"]
            headers = {"Authorization": f"Bearer {seen['key']}"}
            assert httpx.post(f"{seen['url']}/v1/tenants", json={"tenant_id": "pg"},
                              headers=headers).status_code == 201
            r = httpx.post(f"{seen['url']}/v1/tasks", headers=headers, json={
                "tenant_id": "pg", "task_type": "ECHO", "input_payload": 7})
            task_id = r.json()["task_id"]

            def done() -> bool:
                body = httpx.get(f"{seen['url']}/v1/tasks/{task_id}", headers=headers).json()
                return bool(body["status"] == "SUCCESS")

            _wait_for(done, "the example worker to run the task")
        except BaseException:
            proc.kill()
            raise
        _stop(proc, signal.SIGINT)
    finally:
        drop()


def test_creep_up_refuses_bad_settings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "creep.cli", "up", "--database-url", "sqlite:///no/such/dir/x.db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr


pytestmark = pytest.mark.timeout(240)
