"""REST API edge cases against a real `creep server` (SQLite and PostgreSQL); each test
names the behaviour it protects."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.api.conftest import Server, read_sse


def _is_postgres(server: Server) -> bool:
    return server.database_url.startswith("postgresql")


def _stream_names(c: httpx.Client, task_id: str) -> tuple[list[str], float]:
    """The event names of the task's SSE stream up to its end, and how long that took."""
    started = time.monotonic()
    with c.stream("GET", f"/v1/tasks/{task_id}/events/stream") as r:
        assert r.status_code == 200
        events = read_sse(r)
    return [e["event"] for e in events], time.monotonic() - started


def test_pg_sse_of_a_finished_task_sends_every_event_before_end(server: Server) -> None:
    """README: `end` closes the stream "once the task finished and every event was sent".
    On PostgreSQL the stream reads only below the oldest open transaction of the cluster, so
    while an older transaction elsewhere is open a finished task's events are committed but
    not yet readable: the stream waits for them instead of ending without them. Events that
    are readable end the stream at once, older transaction or not."""
    if not _is_postgres(server):
        pytest.skip("the event horizon exists on PostgreSQL only")
    import psycopg

    _, key = server.tenant()
    # Another session's transaction, older than the task's writes (a report, a slow request
    # of another API node...), that ends a moment later.
    other = psycopg.connect(server.database_url)
    try:
        other.execute("SELECT pg_current_xact_id()")
        with server.client(key) as c:
            tid = c.post("/v1/tasks", json={"task_type": "ECHO"}).json()["task_id"]
            assert c.post(f"/v1/tasks/{tid}/cancel").json()["status"] == "CANCELLED"
            timer = threading.Timer(1.5, other.commit)
            timer.start()
            names, took = _stream_names(c, tid)
            timer.join()
            assert names == ["created", "queued", "cancelled", "end"]  # was ["end"]
            assert took >= 1.0  # it waited for the older transaction
            # A transaction opened now (and left open) is younger than every event of the
            # task: the stream does not wait for it.
            other.execute("SELECT pg_current_xact_id()")
            names, _ = _stream_names(c, tid)
            assert names == ["created", "queued", "cancelled", "end"]
    finally:
        other.close()
