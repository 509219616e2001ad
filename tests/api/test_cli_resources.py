"""Every resource command against a real server (SQLite and PostgreSQL), with a real worker
process running the example handlers. The commands run in this process through the CLI's Typer
app (test_client_cli_edges runs the console script in a process of its own)."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.api.cli_helpers import creep_here, ok_json, start_worker, stop
from tests.api.conftest import Server


@pytest.fixture(scope="module")
def worker(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    proc = start_worker(server.database_url, tmp_path_factory.mktemp("w") / "worker.log")
    yield
    stop(proc)


def _tenant(server: Server) -> str:
    tenant_id = f"cli-{uuid.uuid4().hex[:8]}"
    ok_json(creep_here(server, "tenants", "create", tenant_id, "--name", "CLI test", "--json"))
    return tenant_id


def test_tenants_and_keys(server: Server) -> None:
    tenant_id = _tenant(server)
    again = creep_here(server, "tenants", "create", tenant_id)
    assert again.returncode == 1 and "409" in again.stderr
    listed = ok_json(creep_here(server, "tenants", "list", "--json"))
    assert tenant_id in {t["tenant_id"] for t in listed}
    shown = ok_json(creep_here(server, "tenants", "show", tenant_id, "--json"))
    assert shown["name"] == "CLI test"
    table = creep_here(server, "tenants", "list")
    assert table.returncode == 0 and tenant_id in table.stdout

    issued = creep_here(server, "keys", "issue", "--name", "ci", "--tenant", tenant_id)
    assert issued.returncode == 0, issued.stderr
    key = issued.stdout.strip()
    key_id = issued.stderr.split("key_id: ")[1].split()[0]
    assert ok_json(creep_here(server, "task", "list", "--json", key=key)) == []
    # A tenant key is not an admin key: the audit log is refused (403 -> exit 1).
    assert creep_here(server, "audit", "list", key=key).returncode == 1
    revoked = ok_json(creep_here(server, "keys", "revoke", key_id, "--json"))
    assert revoked["revoked_at"] is not None
    denied = creep_here(server, "task", "list", key=key)
    assert denied.returncode == 1 and "401" in denied.stderr

    usage = creep_here(server, "keys", "issue", "--name", "x", "--admin", "--tenant", tenant_id)
    assert usage.returncode == 2


def test_tenants_update(server: Server) -> None:
    tenant_id = _tenant(server)
    updated = ok_json(creep_here(server, "tenants", "update", tenant_id, "--max-active-tasks", "5",
                            "--rate-limit", "2.5", "--burst", "10", "--json"))
    assert (updated["max_active_tasks"], updated["rate_limit_per_second"],
            updated["rate_limit_burst"], updated["name"]) == (5, 2.5, 10, "CLI test")
    reset = ok_json(creep_here(server, "tenants", "update", tenant_id, "--default", "rate-limit",
                          "--default", "max-active-tasks", "--name", "Renamed", "--json"))
    assert (reset["max_active_tasks"], reset["rate_limit_per_second"],
            reset["rate_limit_burst"], reset["name"]) == (None, None, 10, "Renamed")
    assert ok_json(creep_here(server, "tenants", "show", tenant_id, "--json")) == reset
    plain = creep_here(server, "tenants", "update", tenant_id, "--burst", "20")
    assert plain.returncode == 0 and f"updated tenant {tenant_id}" in plain.stdout
    refused = creep_here(server, "tenants", "update", tenant_id, "--burst", "0")
    assert refused.returncode == 2 and "422" in refused.stderr  # 422: a usage error
    assert "rate_limit_burst" in refused.stderr
    missing = creep_here(server, "tenants", "update", "no-such-tenant", "--burst", "3")
    assert missing.returncode == 1 and "404" in missing.stderr
    assert creep_here(server, "tenants", "update", tenant_id).returncode == 2
    both = creep_here(server, "tenants", "update", tenant_id, "--burst", "3", "--default", "burst")
    assert both.returncode == 2
    assert ok_json(creep_here(server, "tenants", "show", tenant_id, "--json"))["rate_limit_burst"] == 20


def test_task_lifecycle(server: Server, worker: None, tmp_path: Path) -> None:
    tenant_id = _tenant(server)
    done = ok_json(creep_here(server, "task", "submit", "--type", "ECHO", "--tenant", tenant_id,
                         "--payload", '{"x": 1}', "--tag", "cli", "--wait", "--json"))
    assert done["status"] == "SUCCESS" and done["result_payload"] == {"echo": {"x": 1}}
    task_id = done["task_id"]
    assert ok_json(creep_here(server, "task", "show", task_id, "--json"))["tags"] == ["cli"]
    events = ok_json(creep_here(server, "task", "events", task_id, "--json"))
    assert [e["to_status"] for e in events if e["to_status"]][-1] == "SUCCESS"
    followed = creep_here(server, "task", "events", task_id, "--follow", "--json")
    assert followed.returncode == 0
    lines = [orjson.loads(line) for line in followed.stdout.splitlines()]
    assert [e["event_id"] for e in lines] == [e["event_id"] for e in events]
    table = creep_here(server, "task", "events", task_id)
    assert table.returncode == 0 and "SUCCESS" in table.stdout
    listed = ok_json(creep_here(server, "task", "list", "--tenant", tenant_id, "--status",
                           "SUCCESS", "--type", "ECHO", "--json"))
    assert [t["task_id"] for t in listed] == [task_id]

    # A payload from a file, an order with more fields; a business failure ends exit 3.
    payload = tmp_path / "payload.json"
    payload.write_text('{"card": "4242"}')
    failed = creep_here(server, "task", "submit", "--type", "CHARGE_CARD", "--tenant", tenant_id,
                   "--payload", f"@{payload}", "--order", '{"priority": 70}', "--wait", "--json")
    assert failed.returncode == 3, failed.stderr
    failed_task = orjson.loads(failed.stdout)
    assert failed_task["status"] == "FAILED" and failed_task["priority"] == 70
    retried = ok_json(creep_here(server, "task", "retry", failed_task["task_id"], "--json"))
    assert retried["status"] in ("QUEUED", "RUNNING", "FAILED")

    # No handler: stays QUEUED until cancelled; cancelling twice is a conflict (exit 1).
    idem = f"idem-{uuid.uuid4().hex[:6]}"
    queued = ok_json(creep_here(server, "task", "submit", "--type", "NO_HANDLER", "--tenant",
                           tenant_id, "--idempotency-key", idem, "--json"))
    replay = ok_json(creep_here(server, "task", "submit", "--type", "NO_HANDLER", "--tenant",
                           tenant_id, "--idempotency-key", idem, "--json"))
    assert replay["task_id"] == queued["task_id"]
    cancelled = creep_here(server, "task", "cancel", queued["task_id"], "--reason", "test")
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout
    assert creep_here(server, "task", "cancel", queued["task_id"]).returncode == 1

    missing = creep_here(server, "task", "show", str(uuid.uuid4()))
    assert missing.returncode == 1 and "404" in missing.stderr
    bad_json = creep_here(server, "task", "submit", "--type", "ECHO", "--payload", "{nope")
    assert bad_json.returncode == 2 and "--payload" in bad_json.stderr
    invalid = creep_here(server, "task", "submit", "--type", "ECHO", "--tenant", "no-such-tenant")
    assert invalid.returncode == 2 and "tenant_id" in invalid.stderr


def test_task_delete_and_restore(server: Server) -> None:
    """creep task delete | restore, and task list --deleted (the recycle bin)."""
    tenant_id = _tenant(server)
    submit = ("task", "submit", "--type", "NO_HANDLER", "--tenant", tenant_id, "--json")
    queued = ok_json(creep_here(server, *submit))
    unfinished = creep_here(server, "task", "delete", queued["task_id"])
    assert unfinished.returncode == 1
    assert "409" in unfinished.stderr and "cancel it first" in unfinished.stderr
    done = ok_json(creep_here(server, *submit))
    tid = done["task_id"]
    creep_here(server, "task", "cancel", tid)
    stale = creep_here(server, "task", "delete", tid, "--version", "1")
    assert stale.returncode == 1 and "412" in stale.stderr
    deleted = creep_here(server, "task", "delete", tid)
    assert deleted.returncode == 0, deleted.stderr
    assert f"{tid}: CANCELLED, deleted at " in deleted.stdout
    listed = ok_json(creep_here(server, "task", "list", "--tenant", tenant_id, "--json"))
    assert [t["task_id"] for t in listed] == [queued["task_id"]]
    binned = ok_json(creep_here(server, "task", "list", "--tenant", tenant_id, "--deleted",
                           "--json"))
    assert [t["task_id"] for t in binned] == [tid] and binned[0]["deleted_at"]
    table = creep_here(server, "task", "list", "--tenant", tenant_id, "--deleted")
    assert table.returncode == 0 and tid in table.stdout
    refused = creep_here(server, "task", "retry", tid)
    assert refused.returncode == 1 and "restore it" in refused.stderr
    restored = ok_json(creep_here(server, "task", "restore", tid, "--json"))
    assert restored["deleted_at"] is None
    assert ok_json(creep_here(server, "task", "list", "--tenant", tenant_id, "--deleted",
                         "--json")) == []


def test_batch_submit_and_wait(server: Server, worker: None, tmp_path: Path) -> None:
    tenant_id = _tenant(server)
    jsonl = tmp_path / "orders.jsonl"
    jsonl.write_text("\n".join([
        '{"task_type": "ECHO", "ref": "a", "input_payload": 1}',
        '{"task_type": "SLOW_REPORT", "ref": "b", "depends_on": ["a"]}',
        "",
        '{"task_type": "FLAKY_CALL", "ref": "c", "depends_on": ["a", "b"]}',
        '{"task_type": "ECHO", "depends_on": ["c"]}',
        '{"task_type": "ECHO"}',
    ]) + "\n")
    result = creep_here(server, "batch", "submit", str(jsonl), "--tenant", tenant_id,
                   "--chunk-size", "2", "--wait", "--poll", "0.1", "--json")
    batches = ok_json(result)
    assert len(batches) == 3 and sum(b["total_count"] for b in batches) == 5
    assert all(b["status"] == "completed" for b in batches)
    assert "submitting" in result.stderr and "running" in result.stderr  # progress bars
    tasks = ok_json(creep_here(server, "task", "list", "--tenant", tenant_id, "--json"))
    assert len(tasks) == 5 and {t["status"] for t in tasks} == {"SUCCESS"}
    shown = ok_json(creep_here(server, "batch", "show", batches[0]["batch_id"], "--json"))
    assert shown["completed_count"] == 2
    listed = ok_json(creep_here(server, "batch", "list", "--limit", "500", "--json"))
    assert {b["batch_id"] for b in batches} <= {b["batch_id"] for b in listed}

    failing = tmp_path / "failing.jsonl"
    failing.write_text('{"task_type": "CHARGE_CARD"}\n{"task_type": "NO_HANDLER"}\n')
    unfinished = creep_here(server, "batch", "submit", str(failing), "--tenant", tenant_id,
                       "--wait", "--timeout", "3", "--poll", "0.1", "--json")
    assert unfinished.returncode == 3
    batch_id = orjson.loads(unfinished.stdout)[0]["batch_id"]
    assert ok_json(creep_here(server, "batch", "cancel", batch_id, "--json"))["cancelled_at"]

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"task_type": "ECHO"}\nnot json\n[1]\n{"priority": 5}\n')
    bad = creep_here(server, "batch", "submit", str(broken), "--tenant", tenant_id)
    assert bad.returncode == 2
    for line in ("line 2", "line 3", "line 4"):
        assert line in bad.stderr
    invalid = tmp_path / "invalid.jsonl"
    invalid.write_text('{"task_type": "ECHO"}\n{"task_type": "ECHO", "priority": 500}\n')
    rejected = creep_here(server, "batch", "submit", str(invalid), "--tenant", tenant_id,
                     "--chunk-size", "1")
    assert rejected.returncode == 2 and "tasks[0].priority" in rejected.stderr
    assert "already created before the failure (task orders 1-1)" in rejected.stderr


def test_audit_and_exports(server: Server, tmp_path: Path) -> None:
    tenant_id = _tenant(server)
    task = ok_json(creep_here(server, "task", "submit", "--type", "NO_HANDLER", "--tenant",
                         tenant_id, "--json"))
    creep_here(server, "task", "cancel", task["task_id"])
    audit = ok_json(creep_here(server, "audit", "list", "--tenant", tenant_id, "--json"))
    assert [a["action"] for a in audit] == ["cancelled", "created", "created"]
    table = creep_here(server, "audit", "list", "--tenant", tenant_id)
    assert table.returncode == 0 and "cancelled" in table.stdout

    out_csv = tmp_path / "audit.csv"
    assert creep_here(server, "export", "audit", "--tenant", tenant_id, "-o",
                 str(out_csv)).returncode == 0
    rows = list(csv.DictReader(out_csv.read_text().splitlines()))
    assert [r["action"] for r in rows] == ["cancelled", "created", "created"]
    out_json = tmp_path / "audit.json"
    assert creep_here(server, "export", "audit", "--tenant", tenant_id, "--format", "json", "-o",
                 str(out_json)).returncode == 0
    assert [a["seq"] for a in orjson.loads(out_json.read_bytes())] == [a["seq"] for a in audit]

    ev_csv = tmp_path / "events.csv"
    assert creep_here(server, "export", "events", "--tenant", tenant_id, "-o",
                 str(ev_csv)).returncode == 0
    events = list(csv.DictReader(ev_csv.read_text().splitlines()))
    assert events and {e["task_id"] for e in events} == {task["task_id"]}
    assert events[-1]["to_status"] == "CANCELLED"
    ev_json = tmp_path / "events.json"
    assert creep_here(server, "export", "events", "--task", task["task_id"], "--format", "json",
                 "-o", str(ev_json)).returncode == 0
    assert [e["event_id"] for e in orjson.loads(ev_json.read_bytes())] == [
        int(e["event_id"]) for e in events]
    nowhere = creep_here(server, "export", "audit", "-o", str(tmp_path / "no" / "dir" / "a.csv"))
    assert nowhere.returncode == 2


def test_unreachable_server_and_bad_key(server: Server) -> None:
    down = creep_here(server, "task", "list", url="http://127.0.0.1:9")
    assert down.returncode == 1 and "cannot reach" in down.stderr
    wrong = creep_here(server, "task", "list", key="not-a-key")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    scheme = creep_here(server, "task", "list", url="ftp://x")
    assert scheme.returncode == 2 and "http://" in scheme.stderr


def test_cli_integers_beyond_64_bits_are_refused_not_rounded(
    server: Server, tmp_path: Path
) -> None:
    """`creep task submit --payload '{"x": 18446744073709551616}'` (and a batch file's
    order) read the integer with orjson, as a float, and submitted 1.8446744073709552e+19;
    it is now sent as written, and the server's 422 names it (exit 2). Integers that fit
    are submitted exactly."""
    tenant_id = _tenant(server)
    wide = creep_here(server, "task", "submit", "--type", "NUM", "--tenant", tenant_id,
                 "--payload", '{"x": [1, 18446744073709551616]}')
    assert wide.returncode == 2 and "input_payload.x[1]" in wide.stderr, wide.stderr
    order = creep_here(server, "task", "submit", "--type", "NUM", "--tenant", tenant_id,
                  "--order", '{"input_payload": -9223372036854775809}')
    assert order.returncode == 2 and "input_payload" in order.stderr, order.stderr
    jsonl = tmp_path / "wide.jsonl"
    jsonl.write_text('{"task_type": "NUM", "input_payload": {"x": 123456789012345678901}}\n')
    batch = creep_here(server, "batch", "submit", str(jsonl), "--tenant", tenant_id)
    assert batch.returncode != 0 and "input_payload.x" in batch.stderr, batch.stderr
    assert ok_json(creep_here(server, "task", "list", "--tenant", tenant_id, "--json")) == []
    fits = ok_json(creep_here(server, "task", "submit", "--type", "NUM", "--tenant", tenant_id,
                         "--payload", '{"x": [18446744073709551615, -9223372036854775808]}',
                         "--json"))
    assert fits["input_payload"] == {"x": [18446744073709551615, -9223372036854775808]}
