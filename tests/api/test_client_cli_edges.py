"""Edges of the command line over the API and of `creep.client`, each through a `creep`
subprocess or the SDK against a real server (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid

import orjson

from tests.api.cli_helpers import creep, ok_json
from tests.api.conftest import Server


def _last(stderr: str) -> str:
    """The last line of stderr (a traceback's exception), to keep failures short."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


def _crashed(stderr: str) -> bool:
    return "Traceback" in stderr


def _tenant(server: Server) -> str:
    tenant_id = f"edge-{uuid.uuid4().hex[:8]}"
    ok_json(creep(server, "tenants", "create", tenant_id, "--json"))
    return tenant_id


def test_task_submit_wait_timeout_prints_the_unfinished_task_and_exits_3(server: Server) -> None:
    """`creep task submit --wait --timeout` on a task still queued at the timeout prints the
    task as it is (JSON or table) and exits 3 ("still running at --timeout" in the README),
    saying on stderr that it is unfinished; no traceback."""
    tenant_id = _tenant(server)
    result = creep(server, "task", "submit", "--type", "NO_WORKER_RUNS_THIS", "--tenant",
                   tenant_id, "--wait", "--timeout", "0.3", "--json")
    assert not _crashed(result.stderr), _last(result.stderr)
    assert result.returncode == 3, (result.returncode, _last(result.stderr))
    task = orjson.loads(result.stdout)
    assert task["status"] == "QUEUED" and task["tenant_id"] == tenant_id
    assert f"task {task['task_id']} is still QUEUED" in result.stderr

    table = creep(server, "task", "submit", "--type", "NO_WORKER_RUNS_THIS", "--tenant",
                  tenant_id, "--wait", "--timeout", "0.3")
    assert table.returncode == 3, (table.returncode, _last(table.stderr))
    assert "QUEUED" in table.stdout and "NO_WORKER_RUNS_THIS" in table.stdout
