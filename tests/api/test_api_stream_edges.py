"""REST API edge cases against a real `creep server` (SQLite and PostgreSQL); each test
names the behaviour it protects."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.api.conftest import Server, read_sse


def _stream_names(c: httpx.Client, task_id: str) -> tuple[list[str], float]:
    """The event names of the task's SSE stream up to its end, and how long that took."""
    started = time.monotonic()
    with c.stream("GET", f"/v1/tasks/{task_id}/events/stream") as r:
        assert r.status_code == 200
        events = read_sse(r)
    return [e["event"] for e in events], time.monotonic() - started


@pytest.mark.parametrize("database", ["postgres"], indirect=True)  # the case is PostgreSQL's
def test_pg_sse_of_a_finished_task_sends_every_event_before_end(server: Server) -> None:
    """README: `end` closes the stream "once the task finished and every event was sent".
    With a transaction open elsewhere on the PostgreSQL server (older than the task's
    writes), the stream of a finished task sent `end` and none of its events. One task's
    events are read whole whatever else is open, so they come at once, then `end`."""
    import psycopg

    _, key = server.tenant()
    # Another session's transaction, older than the task's writes (a report, a slow request
    # of another API node...), left open while the stream is read.
    other = psycopg.connect(server.database_url)
    try:
        other.execute("SELECT pg_current_xact_id()")
        with server.client(key) as c:
            tid = c.post("/v1/tasks", json={"task_type": "ECHO"}).json()["task_id"]
            assert c.post(f"/v1/tasks/{tid}/cancel").json()["status"] == "CANCELLED"
            names, _ = _stream_names(c, tid)
            assert names == ["created", "queued", "cancelled", "end"]  # was ["end"]
    finally:
        other.rollback()
        other.close()


def _order(task_type: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"task_type": task_type, "idempotency_key": key, **extra}


def test_batch_whose_keys_are_partly_replays_is_a_conflict_and_writes_nothing(
    server: Server,
) -> None:
    """README: keys "that name tasks outside one batch, answer 409". A batch with one key of
    an earlier batch (or of a task made without one) and one new key is refused whole: no
    batch counting a task it does not hold, no task for the new key. The whole batch sent
    again still replays (200), and a key given twice in one batch is one task of it."""
    _, key = server.tenant()
    task_type = f"PARTIAL_{uuid.uuid4().hex[:6]}"
    with server.client(key) as c:
        first = c.post("/v1/batches", json={"title": "b", "tasks": [_order(task_type, "k1")]})
        assert first.status_code == 201, first.text
        loose = c.post("/v1/tasks", json=_order(task_type, "k0"))
        assert loose.status_code == 201, loose.text
        refused = [
            [_order(task_type, "k1"), _order(task_type, "k2")],
            [_order(task_type, "k2"), _order(task_type, "k0")],  # a task of no batch
            # with a dependency (the general insert path on PostgreSQL)
            [_order(task_type, "k1", ref="a"), _order(task_type, "k2", depends_on=["a"])],
        ]
        for tasks in refused:
            mixed = c.post("/v1/batches", json={"title": "b", "tasks": tasks})
            # Was 201: a new batch with total_count 2 holding only the new key's task.
            assert mixed.status_code == 409, mixed.text
            assert mixed.headers["content-type"] == "application/problem+json"
        listed = c.get("/v1/tasks", params={"task_type": task_type}).json()["items"]
        assert sorted(t["idempotency_key"] for t in listed) == ["k0", "k1"]
        assert [b["batch_id"] for b in c.get("/v1/batches").json()["items"]] == [
            first.json()["batch_id"]]

        again = c.post("/v1/batches", json={"title": "b", "tasks": [_order(task_type, "k1")]})
        assert again.status_code == 200, again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["batch_id"] == first.json()["batch_id"]

        twice = [_order(task_type, "k3"), _order(task_type, "k3")]
        made = c.post("/v1/batches", json={"title": "t", "tasks": twice})
        assert made.status_code == 201, made.text
        assert made.json()["total_count"] == 1  # one task, named by both refs
        assert len({t["task_id"] for t in made.json()["tasks"]}) == 1
        replayed = c.post("/v1/batches", json={"title": "t", "tasks": twice})
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["batch_id"] == made.json()["batch_id"]


def test_revoked_key_stops_its_open_sse_stream(server: Server) -> None:
    """README: "A revoked key stops working at once on the node that revoked it". That holds
    for a stream it opened before: once the key is revoked the stream sends nothing more (the
    task's `cancelled` and `end` reached the revoked key) and closes."""
    tenant, key = server.tenant()
    with server.client(key) as c:
        tid = c.post("/v1/tasks", json={"task_type": "ECHO"}).json()["task_id"]
    watcher = server.key(tenant, read_only=True)
    received: list[tuple[float, str]] = []
    opened = threading.Event()
    closed = threading.Event()

    def watch() -> None:
        client = httpx.Client(base_url=server.url, timeout=httpx.Timeout(30, read=5),
                              headers={"Authorization": f"Bearer {watcher['key']}"})
        try:
            with client, client.stream("GET", f"/v1/tasks/{tid}/events/stream") as r:
                opened.set()
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        received.append((time.monotonic(), line.partition(": ")[2]))
            closed.set()  # the server ended the response
        except httpx.HTTPError:
            pass  # a read timeout: the stream went quiet but stayed open

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert opened.wait(10)
    time.sleep(0.3)
    with server.admin() as admin:
        assert admin.delete(f"/v1/keys/{watcher['key_id']}").status_code in (200, 204)
    revoked_at = time.monotonic()
    with server.client(watcher["key"]) as gone:
        assert gone.get(f"/v1/tasks/{tid}").status_code == 401  # new requests: at once
    with server.client(key) as c:
        assert c.post(f"/v1/tasks/{tid}/cancel").status_code == 200
    thread.join(10)
    assert [name for at, name in received if at > revoked_at] == []
    assert closed.is_set()


def test_revoked_key_claims_nothing_in_its_long_poll(server: Server) -> None:
    """A worker's claim that long-polls outlives the key check made when it began: once its
    key is revoked the poll stops with a 401 and claims nothing (a task created after the
    revocation was leased to the revoked key)."""
    tenant, key = server.tenant()
    worker = server.key(tenant)
    task_type = f"REVOKED_{uuid.uuid4().hex[:6]}"
    answers: list[httpx.Response] = []

    def poll() -> None:
        with server.client(worker["key"]) as w:
            answers.append(w.post("/v1/workers/claim",
                                  json={"task_types": [task_type], "wait": 20}))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waiting: nothing to claim yet
    with server.admin() as admin:
        assert admin.delete(f"/v1/keys/{worker['key_id']}").status_code in (200, 204)
    with server.client(key) as c:
        tid = c.post("/v1/tasks", json={"task_type": task_type}).json()["task_id"]
        thread.join(15)
        assert not thread.is_alive()
        (answer,) = answers
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert c.get(f"/v1/tasks/{tid}").json()["status"] == "QUEUED"


@pytest.mark.parametrize("database", ["postgres"], indirect=True)  # SQLite cursors: any number
def test_pg_event_cursor_of_another_store_names_the_parameter_sent(server: Server) -> None:
    """A well-formed event cursor this store did not issue (on PostgreSQL `7`: its cursors
    are `<txid>.<event id>`) is a 422 naming the parameter the caller sent it in, `after` or
    `Last-Event-ID` (it named `cursor`, a field the caller never sent), as a malformed one
    (`after=x`) already does."""
    _, key = server.tenant()
    with server.client(key) as c:
        tid = c.post("/v1/tasks", json={"task_type": "ECHO"}).json()["task_id"]
        r = c.get(f"/v1/tasks/{tid}/events", params={"after": "7"})
        assert r.status_code == 422
        assert [e["field"] for e in r.json()["errors"]] == ["after"], r.text
        r = c.get(f"/v1/tasks/{tid}/events/stream", params={"after": "7"})
        assert r.status_code == 422
        assert [e["field"] for e in r.json()["errors"]] == ["after"], r.text
        r = c.get(f"/v1/tasks/{tid}/events/stream", headers={"Last-Event-ID": "7"})
        assert r.status_code == 422
        assert [e["field"] for e in r.json()["errors"]] == ["Last-Event-ID"], r.text


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "field", "where"),
    [
        ("GET", "/v1/tasks", {"params": {"created_from": "2024-01-01T00:00:00"}},
         "created_from", "query"),
        ("GET", "/v1/tasks", {"params": {"cursor": "bm90LWEtY3Vyc29y"}}, "cursor", "query"),
        ("GET", "/v1/ledger/summary", {"params": {"group_by": "nope"}}, "group_by", "query"),
        ("GET", "/v1/ledger", {"params": {"from": "2024-01-01T00:00:00"}}, "from", "query"),
        ("PATCH", "/v1/tasks/{tid}", {"json": {"priority": 1}, "headers": {"If-Match": "v1"}},
         "If-Match", "header"),
        ("GET", "/v1/tasks/{tid}/events/stream", {"headers": {"Last-Event-ID": "x"}},
         "Last-Event-ID", "header"),
    ],
)
def test_problem_errors_say_where_the_field_is(
    server: Server, method: str, path: str, kwargs: dict[str, Any], field: str, where: str
) -> None:
    """README: a 422's `errors: [{field, in, rule}]` say where each refused field was sent.
    A field refused by route or domain code is in `query` or `header` as the caller sent it
    (it was always `body`), as FastAPI's own checks of the same route say (`limit=0`: query);
    a body field stays `body`."""
    _, key = server.tenant()
    with server.client(key) as c:
        tid = c.post("/v1/tasks", json={"task_type": "ECHO"}).json()["task_id"]
        fastapi_own = c.get("/v1/tasks", params={"limit": 0}).json()["errors"]
        assert [(e["field"], e["in"]) for e in fastapi_own] == [("limit", "query")]
        r = c.request(method, path.format(tid=tid), **kwargs)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        errors = r.json()["errors"]
        assert [(e["field"], e["in"]) for e in errors] == [(field, where)], errors
        in_body = c.patch(f"/v1/tasks/{tid}", json={"priority": None},
                          headers={"If-Match": '"1"'})
        assert [(e["field"], e["in"]) for e in in_body.json()["errors"]] == [
            ("priority", "body")], in_body.text
