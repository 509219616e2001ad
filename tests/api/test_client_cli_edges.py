"""Edges of the command line over the API and of `creep.client`, each through a `creep`
subprocess or the SDK against a real server (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest

from creep.client import ApiProblem, AsyncClient, Client, ClientError, Task, TaskEvent
from tests.api.cli_helpers import creep, ok_json
from tests.api.conftest import Server, free_port


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


def _settled_events(server: Server, task_id: str, last_status: str) -> list[TaskEvent]:
    """The task's events once the one into `last_status` is listed. On PostgreSQL a listing
    stops before events of transactions younger than the oldest open one (anywhere on the
    database server), so right after a write its newest events may not be listed yet."""
    deadline = time.monotonic() + 60
    with Client(server.url, server.admin_key) as c:
        while True:
            events = list(c.iter_task_events(task_id))
            if events and events[-1].to_status == last_status:
                return events
            assert time.monotonic() < deadline, [e.event_type for e in events]
            time.sleep(0.1)


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


# Rich would read this as markup (`[bold]` vanishes, `[/x]` fails) and `:smile:` as an emoji.
STORED = "paid [/x] in full, see [bold]note :smile:"


def test_stored_text_is_printed_verbatim_in_tables_and_follow_output(server: Server) -> None:
    """Stored text holding `[...]` or `:name:` is printed exactly as stored: in a list table
    (ledger descriptions), in a `show` table (a task's payload and result message), in the
    events table and in `task events --follow`; none of them crashes or drops text."""
    tenant_id = _tenant(server)
    ok_json(creep(server, "ledger", "record", "--type", "REVENUE", "--amount", "1",
                  "--currency", "USD", "--tenant", tenant_id, "--description", STORED,
                  "--json"))
    listed = creep(server, "ledger", "list", "--tenant", tenant_id)
    assert listed.returncode == 0, _last(listed.stderr)
    assert STORED in listed.stdout

    task = ok_json(creep(server, "task", "submit", "--type", "NO_WORKER_RUNS_THIS", "--tenant",
                         tenant_id, "--payload", orjson.dumps({"note": STORED}).decode(),
                         "--json"))
    ok_json(creep(server, "task", "cancel", task["task_id"], "--reason", STORED, "--json"))
    shown = creep(server, "task", "show", task["task_id"])
    assert shown.returncode == 0, _last(shown.stderr)
    assert f'{{"note":"{STORED}"}}' in shown.stdout  # input_payload
    assert f"│ {STORED} " in shown.stdout  # result_message (the cancel reason)

    _settled_events(server, task["task_id"], "CANCELLED")
    reason = f'{{"reason":"{STORED}"}}'  # the payload of the cancelled event
    events = creep(server, "task", "events", task["task_id"])
    assert events.returncode == 0, _last(events.stderr)
    assert reason in events.stdout
    followed = creep(server, "task", "events", task["task_id"], "--follow")
    assert followed.returncode == 0, _last(followed.stderr)
    assert followed.stdout.splitlines()[-1].endswith(reason)


def test_error_lines_quote_input_and_server_text_verbatim(server: Server) -> None:
    """Error lines on stderr print user input and the server's words as given, never as Rich
    markup: a 422 quoting `--tenant '[/bold]'` (exit 2), a 404 quoting a task id holding
    `[bold]` (exit 1), a bad `--from '[/x]'` (usage, exit 2) and an unreachable URL holding
    `[/x]` (exit 1) are each one clean `error:` line, not a MarkupError traceback."""
    bad_tenant = creep(server, "task", "submit", "--type", "ECHO", "--tenant", "[/bold]")
    assert not _crashed(bad_tenant.stderr), _last(bad_tenant.stderr)
    assert bad_tenant.returncode == 2
    assert bad_tenant.stderr.startswith("error: 422 ") and "[/bold]" in bad_tenant.stderr

    missing = creep(server, "task", "show", "[bold]no-such-task")
    assert not _crashed(missing.stderr), _last(missing.stderr)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: 404 ") and "[bold]no-such-task" in missing.stderr

    bad_from = creep(server, "ledger", "list", "--from", "[/x]")
    assert not _crashed(bad_from.stderr), _last(bad_from.stderr)
    assert bad_from.returncode == 2
    assert bad_from.stderr.startswith("error: --from: ") and "'[/x]'" in bad_from.stderr

    url = f"http://127.0.0.1:{free_port()}/[/x]"
    unreachable = creep(server, "tenants", "list", "--api-url", url)
    assert not _crashed(unreachable.stderr), _last(unreachable.stderr)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(f"error: cannot reach {url}: ")


MALFORMED_URLS = [
    "http://127.0.0.1:80a",  # the port is not a number
    "http://[::1",  # an IPv6 host without its closing bracket
    "http://:8000",  # no host
    "http://127.0.0.1:99999",  # no such port
]


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_sdk_malformed_url_raises_client_error(url: str) -> None:
    """`Client(url)` and `AsyncClient(url)` with a malformed URL raise the documented
    ClientError, as a URL without http:// does (not httpx's InvalidURL, nor a failure at
    the first request)."""
    with pytest.raises(ClientError, match="API URL"):
        Client(url, "k").close()
    with pytest.raises(ClientError, match="API URL"):
        AsyncClient(url, "k")


def test_malformed_api_url_is_a_usage_error(server: Server) -> None:
    """A typo in `--api-url` (a port that is not a number) or a URL naming no host is one
    `error:` line quoting it and exit 2 (usage), as a URL without http:// already was; no
    traceback."""
    for url in ("http://127.0.0.1:80a", "http://"):
        result = creep(server, "tenants", "list", "--api-url", url)
        assert not _crashed(result.stderr), _last(result.stderr)
        assert result.returncode == 2, (url, result.returncode, _last(result.stderr))
        assert result.stderr.startswith("error: the API URL ") and repr(url) in result.stderr


def test_async_client_wait_task_and_iter_task_events_match_the_sync_client(
    server: Server,
) -> None:
    """`AsyncClient.wait_task` and `AsyncClient.iter_task_events` behave as `Client`'s: the
    wait returns the task once it is finished (also when it finishes while waiting), raises
    TimeoutError naming its status when it is not finished in time, and ApiProblem 404 for
    an unknown task; the events come oldest first, all of them or those after `after=`,
    exactly as the sync client lists them."""
    _, key = server.tenant()
    with Client(server.url, key) as c:
        cancelled = c.create_task(task_type="NO_HANDLER", env="dev")
        c.cancel_task(cancelled.task_id)
        queued = c.create_task(task_type="NO_HANDLER", env="dev")
        late = c.create_task(task_type="NO_HANDLER", env="dev")
    expected = _settled_events(server, cancelled.task_id, "CANCELLED")
    assert [e.to_status for e in expected] == ["PENDING", "QUEUED", "CANCELLED"]
    with Client(server.url, key) as c:
        after_first = list(c.iter_task_events(cancelled.task_id, after=expected[0].cursor))

    async def cancel_later(ac: AsyncClient, task_id: str) -> None:
        await asyncio.sleep(0.5)
        await ac.cancel_task(task_id)

    async def main() -> tuple[Task, list[TaskEvent], list[TaskEvent], Task, float]:
        async with AsyncClient(server.url, key) as ac:
            done = await ac.wait_task(cancelled.task_id, timeout=5)
            events = [e async for e in ac.iter_task_events(cancelled.task_id)]
            rest = [e async for e in
                    ac.iter_task_events(cancelled.task_id, after=expected[0].cursor)]
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=f"task {queued.task_id} is still QUEUED"):
                await ac.wait_task(queued.task_id, timeout=0.3, poll=0.05)
            waited = time.monotonic() - started
            finished, _ = await asyncio.gather(
                ac.wait_task(late.task_id, timeout=10, poll=0.05),
                cancel_later(ac, late.task_id))
            with pytest.raises(ApiProblem) as missing:
                await ac.wait_task(str(uuid.uuid4()), timeout=1)
            assert missing.value.status == 404
            with pytest.raises(ApiProblem) as missing:
                [e async for e in ac.iter_task_events(str(uuid.uuid4()))]
            assert missing.value.status == 404
            return done, events, rest, finished, waited

    done, events, rest, finished, waited = asyncio.run(main())
    assert done.task_id == cancelled.task_id and done.status == "CANCELLED"
    assert [e.raw for e in events] == [e.raw for e in expected]
    assert [e.raw for e in rest] == [e.raw for e in after_first] == [e.raw for e in expected[1:]]
    assert 0.3 <= waited < 5
    assert finished.task_id == late.task_id and finished.status == "CANCELLED"
