"""Per-tenant limits: the request-rate token bucket (429 + Retry-After) and the cap on
unfinished (pending, queued and running) tasks; on PostgreSQL both are shared by every API process."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from creep.api.settings import SettingsError, load_settings
from creep.client import NO_RETRY, ApiProblem, AsyncClient, Client, Tenant
from tests.api.conftest import Server, start_server, stop_server


def test_rate_limit_answers_429_with_retry_after(server: Server) -> None:
    # One token per ~17 minutes: the burst is all there is during this test.
    _, key = server.tenant(rate_limit_per_second=0.001, rate_limit_burst=3)
    _, other = server.tenant()

    def refused() -> float:
        for line in httpx.get(f"{server.url}/metrics").text.splitlines():
            if line.startswith("creep_rate_limited_total "):
                return float(line.split()[1])
        raise AssertionError("creep_rate_limited_total is missing")

    before = refused()
    with server.client(key) as c, server.client(other) as o:
        assert [c.get("/v1/tasks").status_code for _ in range(3)] == [200, 200, 200]
        limited = c.get("/v1/tasks")
        assert limited.status_code == 429
        assert refused() == before + 1
        assert limited.json()["type"].endswith("/rate-limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert o.get("/v1/tasks").status_code == 200  # other tenants are not affected


def test_rate_limit_is_shared_by_api_processes(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """PostgreSQL: two servers on one database. SQLite: one server with two worker processes
    (the buckets then live in the database file)."""
    log = tmp_path_factory.mktemp("log2") / "s.log"
    if server.database_url.startswith("sqlite"):
        other = start_server(server.database_url.replace("creep.db", "workers.db"), log,
                             CREEP_WORKERS="2")
        first, second = other, other
    else:
        other = start_server(server.database_url, log)
        first, second = server, other
    try:
        tenant, key = first.tenant(rate_limit_per_second=0.001, rate_limit_burst=4)
        codes = []
        for srv in (first, second) * 4:
            with srv.client(key) as c:  # a new connection each time: any process may answer
                codes.append(c.get("/v1/tasks").status_code)
        assert codes == [200] * 4 + [429] * 4
        if other is first:  # SQLite: the bucket every worker process shares is in the file
            path = urlsplit(other.database_url).path[1:]
            conn = sqlite3.connect(path)
            try:
                row = conn.execute("SELECT tokens FROM rate_buckets WHERE bucket = ?",
                                   (f"tenant:{tenant}",)).fetchone()
            finally:
                conn.close()
            assert row is not None and row[0] < 1
    finally:
        stop_server(other)


def test_active_task_cap(server: Server) -> None:
    _, key = server.tenant(max_active_tasks=2)
    with server.client(key) as c:
        first = c.post("/v1/tasks", json={"task_type": "X", "idempotency_key": "one"})
        assert first.status_code == 201
        assert c.post("/v1/tasks", json={"task_type": "X"}).status_code == 201
        refused = c.post("/v1/tasks", json={"task_type": "X"})
        assert refused.status_code == 429 and refused.json()["type"].endswith("/quota-exceeded")
        # A replay creates nothing, so the cap does not refuse it.
        replay = c.post("/v1/tasks", json={"task_type": "X", "idempotency_key": "one"})
        assert replay.status_code == 200
        # A batch over the cap is refused whole.
        batch = c.post("/v1/batches", json={"title": "b", "tasks": [{"task_type": "X"}] * 2})
        assert batch.status_code == 429
        assert c.get("/v1/batches").json()["items"] == []
        assert len(c.get("/v1/tasks").json()["items"]) == 2
        # Finished tasks do not count.
        c.post(f"/v1/tasks/{first.json()['task_id']}/cancel")
        assert c.post("/v1/tasks", json={"task_type": "X"}).status_code == 201


def test_pending_tasks_count_against_the_cap(server: Server) -> None:
    """The cap counted QUEUED + RUNNING tasks only: a tenant capped at N submitted any number
    of delayed tasks (run_after ahead) or tasks waiting on dependencies, each counted once
    due. Every unfinished task counts now."""
    _, key = server.tenant(max_active_tasks=3)
    later = {"task_type": "X", "run_after": "2999-01-01T00:00:00Z"}
    with server.client(key) as c:
        delayed = [c.post("/v1/tasks", json=later) for _ in range(3)]
        assert [(r.status_code, r.json()["status"]) for r in delayed] == [(201, "PENDING")] * 3
        refused = c.post("/v1/tasks", json=later)
        assert refused.status_code == 429, refused.text
        problem = refused.json()
        assert problem["type"].endswith("/quota-exceeded") and problem["status"] == 429
        assert refused.headers["retry-after"] == "1"
        # Refused as a task due now is, with the same problem.
        now = c.post("/v1/tasks", json={"task_type": "X"})
        assert now.status_code == 429
        assert {k: v for k, v in now.json().items() if k != "instance"} == {
            k: v for k, v in problem.items() if k != "instance"}
        assert len(c.get("/v1/tasks").json()["items"]) == 3
        # A cancelled delayed task frees its place.
        c.post(f"/v1/tasks/{delayed[0].json()['task_id']}/cancel")
        parent = c.post("/v1/tasks", json={"task_type": "X"})
        assert parent.status_code == 201 and parent.json()["status"] == "QUEUED"
        # A task waiting on its dependencies counts too, alone or in a batch.
        waiting = c.post("/v1/tasks", json={"task_type": "X",
                                            "depends_on": [parent.json()["task_id"]]})
        assert waiting.status_code == 429
        batch = c.post("/v1/batches", json={"title": "b", "tasks": [
            {"ref": "a", "task_type": "X", "run_after": "2999-01-01T00:00:00Z"},
            {"ref": "b", "task_type": "X", "depends_on": ["a"]}]})
        assert batch.status_code == 429
        assert c.get("/v1/batches").json()["items"] == []
    _, key = server.tenant(max_active_tasks=2)
    with server.client(key) as c:
        parent = c.post("/v1/tasks", json={"task_type": "X"}).json()["task_id"]
        child = c.post("/v1/tasks", json={"task_type": "X", "depends_on": [parent]})
        assert child.status_code == 201 and child.json()["status"] == "PENDING"
        assert c.post("/v1/tasks", json=later).status_code == 429


def test_retry_counts_against_the_cap(server: Server) -> None:
    _, key = server.tenant(max_active_tasks=1)
    with server.client(key) as c:
        first = c.post("/v1/tasks", json={"task_type": "X"}).json()["task_id"]
        c.post(f"/v1/tasks/{first}/cancel")
        assert c.post("/v1/tasks", json={"task_type": "X"}).status_code == 201
        refused = c.post(f"/v1/tasks/{first}/retry")
        assert refused.status_code == 429
        assert c.get(f"/v1/tasks/{first}").json()["status"] == "CANCELLED"


def test_active_task_cap_holds_under_concurrency(server: Server) -> None:
    _, key = server.tenant(max_active_tasks=3)
    barrier = threading.Barrier(12)

    def post(_: int) -> int:
        with server.client(key) as c:
            barrier.wait()
            return c.post("/v1/tasks", json={"task_type": "X"}).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = sorted(pool.map(post, range(12)))
    assert codes == [201] * 3 + [429] * 9
    with server.client(key) as c:
        assert len(c.get("/v1/tasks", params={"status": "QUEUED"}).json()["items"]) == 3


def test_a_rate_too_small_to_wait_for_is_refused(server: Server) -> None:
    """A positive rate below one request per ~12 days was taken, and once the burst was
    spent, its wait for a token (1 / rate) overflowed: each request of the tenant answered
    500 instead of 429 (or a Retry-After of 300 digits, or on PostgreSQL the refill's
    underflow)."""
    with server.admin() as admin:
        for rate in (1e-320, 1e-300, 1e-7):
            r = admin.post("/v1/tenants", json={"tenant_id": f"t-{uuid.uuid4().hex[:10]}",
                                                "rate_limit_per_second": rate})
            assert r.status_code == 422, r.text
            assert [e["field"] for e in r.json()["errors"]] == ["rate_limit_per_second"]
    tenant_id, key = server.tenant(rate_limit_per_second=1e-6, rate_limit_burst=1)
    with server.client(key) as c:
        assert c.get("/v1/tasks").status_code == 200
        limited = c.get("/v1/tasks")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "1000000"
    with server.admin() as admin:
        assert admin.get(f"/v1/tenants/{tenant_id}").json()["rate_limit_per_second"] == 1e-6
    with pytest.raises(SettingsError, match="CREEP_RATE_LIMIT_PER_SECOND"):
        load_settings({"CREEP_RATE_LIMIT_PER_SECOND": "1e-320"})


def test_limits_are_validated(server: Server) -> None:
    with server.admin() as admin:
        r = admin.post("/v1/tenants", json={"tenant_id": "bad", "rate_limit_burst": 0,
                                            "max_active_tasks": -1})
        assert r.status_code == 422
        assert {e["field"] for e in r.json()["errors"]} == {"rate_limit_burst",
                                                            "max_active_tasks"}


def _answer_to(server: Server, head: str, chunks: Iterable[bytes] = ()) -> bytes:
    """The status line and headers the server answers to a request that sends `head`, then
    `chunks` (as long as the server reads them), and then nothing more: a body it must not
    wait for."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
            for chunk in chunks:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server answered and closed while the body was still coming
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (TimeoutError, OSError):
            pass
    return answer


@pytest.mark.parametrize("authorized", [True, False])
def test_an_oversized_body_is_refused_before_it_is_read(server: Server, authorized: bool) -> None:
    """A 100 MB JSON body was read whole (and parsed: ~0.5 GB of server memory each, a key
    or not) before its 401 or 422; it is a 413 as soon as its size is known."""
    _, key = server.tenant()
    auth = f"Authorization: Bearer {key}\n" if authorized else ""
    for path in ("/v1/tasks", "/v1/batches", "/v1/assets"):
        # Declared: answered at once, the body never sent.
        answer = _answer_to(server, f"POST {path} HTTP/1.1\nHost: x\n{auth}"
                                    f"Content-Type: application/json\n"
                                    f"Content-Length: {100 * 1024 * 1024}\n")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300] or "no answer within 10 s"
        assert b"application/problem+json" in answer
    # Chunked: answered once the body is past the limit (32 MiB), the rest never sent.
    chunk = b'{"task_type": "X", "input_payload": "' + b"a" * 65536
    answer = _answer_to(server, f"POST /v1/tasks HTTP/1.1\nHost: x\n{auth}"
                                "Content-Type: application/json\nTransfer-Encoding: chunked\n",
                        [chunk] * 1000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300] or "no answer within 10 s"
    with server.client(key) as c:
        assert c.get("/v1/tasks").json()["items"] == []
        # Bodies within the limit are served as before.
        assert c.post("/v1/tasks", json={"task_type": "X",
                                         "input_payload": "a" * 500_000}).status_code == 201


@pytest.mark.parametrize("database", ["postgres"], indirect=True)  # SQLite: one writer
def test_capped_tenants_creating_on_two_nodes_do_not_deadlock(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each node writes concurrent creates together, every capped tenant's check locking the
    tenant until commit. Two nodes' batches took those locks in request order, so one held A
    and waited for B while the other held B and waited for A: PostgreSQL failed one after its
    1 s deadlock timeout (each request of it retried alone, a second late), and creates on
    the connection of a failed one could then answer 503 (prepared statement "_pg3_3" does
    not exist)."""
    other = start_server(server.database_url, tmp_path_factory.mktemp("log") / "s.log")
    try:
        nodes = (server, other)
        keys = [server.tenant(max_active_tasks=100_000)[1] for _ in range(4)]
        answers: list[tuple[int, float]] = []

        def post(i: int) -> None:
            # Each node gets creates of every tenant at once, so its batches mix them.
            with nodes[i % 2].client(keys[(i // 2) % 4]) as c:
                for _ in range(40):
                    started = time.monotonic()
                    code = c.post("/v1/tasks", json={"task_type": "X"}).status_code
                    answers.append((code, time.monotonic() - started))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(post, range(16)))
        assert {code for code, _ in answers} == {201}
        # A deadlock costs its requests PostgreSQL's deadlock_timeout (1 s).
        assert len([s for _, s in answers if s >= 1.0]) <= 2
    finally:
        stop_server(other)


def _audit_rows(server: Server, tenant_id: str) -> list[dict[str, Any]]:
    with server.admin() as admin:
        r = admin.get("/v1/audit", params={"resource_type": "tenant", "resource_id": tenant_id})
        assert r.status_code == 200, r.text
        return list(reversed(r.json()["items"]))


def test_an_admin_changes_a_tenants_limits(server: Server) -> None:
    """A tenant's limits could only be set when it was created. PATCH /v1/tenants/{id} sets
    the fields it is given (null: the server's default again), validated as on create,
    audited; the server that answers applies them at once."""
    tenant_id, key = server.tenant(name="Acme", max_active_tasks=1)
    later = {"task_type": "X", "run_after": "2999-01-01T00:00:00Z"}
    with server.client(key) as c, server.admin() as admin:
        assert c.post("/v1/tasks", json=later).status_code == 201
        assert c.post("/v1/tasks", json=later).status_code == 429
        r = admin.patch(f"/v1/tenants/{tenant_id}", json={"max_active_tasks": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        assert {k: v for k, v in body.items() if k != "created_at"} == {
            "tenant_id": tenant_id, "name": "Acme", "rate_limit_per_second": None,
            "rate_limit_burst": None, "max_active_tasks": 2}
        assert admin.get(f"/v1/tenants/{tenant_id}").json() == body
        assert c.post("/v1/tasks", json=later).status_code == 201
        assert c.post("/v1/tasks", json=later).status_code == 429
        # Lowered below what the tenant has: its tasks stay, new ones wait for room.
        assert admin.patch(f"/v1/tenants/{tenant_id}",
                           json={"max_active_tasks": 1}).status_code == 200
        assert len(c.get("/v1/tasks").json()["items"]) == 2
        # null: the server's default (no cap) again.
        r = admin.patch(f"/v1/tenants/{tenant_id}", json={"max_active_tasks": None,
                                                           "name": "Acme Ltd"})
        assert r.status_code == 200 and r.json()["max_active_tasks"] is None
        assert r.json()["name"] == "Acme Ltd"
        assert c.post("/v1/tasks", json=later).status_code == 201
        # A rate limit set later applies at once.
        r = admin.patch(f"/v1/tenants/{tenant_id}", json={"rate_limit_per_second": 0.001,
                                                           "rate_limit_burst": 2})
        assert r.status_code == 200, r.text
        assert [c.get("/v1/tasks").status_code for _ in range(3)] == [200, 200, 429]
        r = admin.patch(f"/v1/tenants/{tenant_id}", json={"rate_limit_per_second": 0})
        assert r.status_code == 200 and r.json()["rate_limit_burst"] == 2
        assert c.get("/v1/tasks").status_code == 200

        # A PATCH that changes nothing writes nothing.
        assert admin.patch(f"/v1/tenants/{tenant_id}", json={}).json() == r.json()
        assert admin.patch(f"/v1/tenants/{tenant_id}",
                           json={"rate_limit_burst": 2}).json() == r.json()

        # Validated as on create: a 422 naming each field, nothing changed.
        for patch, fields in (
            ({"rate_limit_burst": 0, "max_active_tasks": -1},
             {"rate_limit_burst", "max_active_tasks"}),
            ({"rate_limit_per_second": 1e-7}, {"rate_limit_per_second"}),
            ({"rate_limit_per_second": "1"}, {"rate_limit_per_second"}),
            ({"max_active_tasks": 5.0}, {"max_active_tasks"}),
            ({"max_active_tasks": 1_000_000_001}, {"max_active_tasks"}),
            ({"name": None}, {"name"}),
            ({"name": "x" * 256}, {"name"}),
            ({"tenant_id": "other"}, {"tenant_id"}),
        ):
            refused = admin.patch(f"/v1/tenants/{tenant_id}", json=patch)
            assert refused.status_code == 422, (patch, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
            assert {e["field"] for e in refused.json()["errors"]} == fields, patch
        assert admin.get(f"/v1/tenants/{tenant_id}").json() == r.json()

        missing = admin.patch("/v1/tenants/no-such-tenant", json={"max_active_tasks": 1})
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        # Admin keys only, and not read-only ones.
        assert c.patch(f"/v1/tenants/{tenant_id}", json={"max_active_tasks": 9}
                       ).status_code == 403
    reader = server.key(None, read_only=True)["key"]
    with server.client(reader) as ro:
        assert ro.patch(f"/v1/tenants/{tenant_id}", json={"max_active_tasks": 9}
                        ).status_code == 403

    rows = _audit_rows(server, tenant_id)
    assert [row["action"] for row in rows] == ["created"] + ["updated"] * 5
    first = rows[1]["diff_object"]
    assert orjson.loads(first["old_object"])["max_active_tasks"] == 1
    assert orjson.loads(first["new_object"])["max_active_tasks"] == 2
    assert all(row["tenant_id"] == tenant_id for row in rows)
    last = orjson.loads(rows[-1]["diff_object"]["new_object"])
    assert (last["rate_limit_per_second"], last["rate_limit_burst"]) == (0, 2)


def test_a_limit_change_reaches_every_api_node(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second server on the same database applies a change made through the first within
    its limits cache (5 s), without a restart."""
    other = start_server(server.database_url, tmp_path_factory.mktemp("log") / "s.log")
    try:
        tenant_id, key = server.tenant(max_active_tasks=1)
        with other.client(key) as c:
            assert c.post("/v1/tasks", json={"task_type": "X"}).status_code == 201
            assert c.post("/v1/tasks", json={"task_type": "X"}).status_code == 429
        with server.admin() as admin:
            assert admin.patch(f"/v1/tenants/{tenant_id}",
                               json={"max_active_tasks": 2}).status_code == 200
        changed = time.monotonic()
        with other.client(key) as c:
            while (code := c.post("/v1/tasks", json={"task_type": "X"}).status_code) == 429:
                assert time.monotonic() - changed < 7, "the other node kept the old cap"
                time.sleep(0.2)
            assert code == 201
            assert c.post("/v1/tasks", json={"task_type": "X"}).status_code == 429
    finally:
        stop_server(other)


def test_the_sdk_changes_a_tenants_limits(server: Server) -> None:
    tenant_id, key = server.tenant(max_active_tasks=3)
    with Client(server.url, server.admin_key) as admin, \
            Client(server.url, key, retry=NO_RETRY) as tenant:
        changed = admin.update_tenant(tenant_id, max_active_tasks=1, rate_limit_burst=50)
        assert (changed.max_active_tasks, changed.rate_limit_burst) == (1, 50)
        assert admin.get_tenant(tenant_id).max_active_tasks == 1
        tenant.create_task(task_type="X", run_after="2999-01-01T00:00:00Z")
        with pytest.raises(ApiProblem) as refused:
            tenant.create_task(task_type="X")
        assert refused.value.status == 429 and refused.value.short_type == "quota-exceeded"
        with pytest.raises(ApiProblem) as invalid:
            admin.update_tenant(tenant_id, rate_limit_burst=0)
        assert invalid.value.status == 422
        assert [e["field"] for e in invalid.value.errors] == ["rate_limit_burst"]
        # None: the server's default again.
        assert admin.update_tenant(tenant_id, max_active_tasks=None).max_active_tasks is None
        assert tenant.create_task(task_type="X").status == "QUEUED"

    async def update() -> Tenant:
        async with AsyncClient(server.url, server.admin_key) as admin:
            return await admin.update_tenant(tenant_id, name="Async", max_active_tasks=7)

    done = asyncio.run(update())
    assert (done.name, done.max_active_tasks, done.rate_limit_burst) == ("Async", 7, 50)
