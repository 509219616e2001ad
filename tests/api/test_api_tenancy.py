"""Tenant isolation probed on every route with two tenants' keys: another tenant's objects
are 404 (never 403) and never show in lists, streams or errors."""

from __future__ import annotations

import uuid

import httpx

from tests.api.conftest import Server


def test_two_tenants_never_see_each_other(server: Server) -> None:
    tenant_a, key_a = server.tenant()
    tenant_b, key_b = server.tenant()
    with server.client(key_a) as a, server.client(key_b) as b:
        task = a.post("/v1/tasks", json={"task_type": "ECHO", "idempotency_key": "k",
                                         "tags": ["secret"]}).json()
        tid = task["task_id"]
        batch = a.post("/v1/batches", json={"title": "a's", "tasks": [{"task_type": "ECHO"}]}
                       ).json()
        bid = batch["batch_id"]
        missing = str(uuid.uuid4())

        # Every route that names an object: the same 404 as for an id that does not exist.
        probes = [
            ("GET", "/v1/tasks/{}", None),
            ("POST", "/v1/tasks/{}/cancel", None),
            ("POST", "/v1/tasks/{}/retry", None),
            ("GET", "/v1/tasks/{}/events", None),
            ("GET", "/v1/tasks/{}/events/stream", None),
        ]
        for method, template, body in probes:
            foreign = b.request(method, template.format(tid), json=body)
            absent = b.request(method, template.format(missing), json=body)
            assert foreign.status_code == absent.status_code == 404, (template, foreign.text)
            # Word for word the answer for a missing id (only the id the caller sent differs).
            assert "secret" not in foreign.text
            assert foreign.json()["detail"].replace(tid, "ID") == absent.json()["detail"].replace(
                missing, "ID")
            assert foreign.json()["type"] == absent.json()["type"]
        patch = b.patch(f"/v1/tasks/{tid}", json={"priority": 1}, headers={"If-Match": '"1"'})
        assert patch.status_code == 404
        for method, path in (("GET", f"/v1/batches/{bid}"), ("POST", f"/v1/batches/{bid}/cancel")):
            assert b.request(method, path).status_code == 404

        # Lists and filters: nothing of A's, whatever B asks for.
        assert b.get("/v1/tasks").json()["items"] == []
        assert b.get("/v1/tasks", params={"tenant_id": tenant_a}).json()["items"] == []
        assert b.get("/v1/tasks", params={"tag": "secret"}).json()["items"] == []
        assert b.get("/v1/tasks", params={"batch_id": bid}).json()["items"] == []
        assert b.get("/v1/batches").json()["items"] == []
        # Creating "for" another tenant is refused without revealing anything.
        r = b.post("/v1/tasks", json={"task_type": "ECHO", "tenant_id": tenant_a})
        assert r.status_code == 422
        # The same idempotency key in B is B's own task, not a replay of A's.
        own = b.post("/v1/tasks", json={"task_type": "ECHO", "idempotency_key": "k",
                                        "tags": ["secret"]})
        assert own.status_code == 201 and own.json()["task_id"] != tid
        # B's dependency on A's task is "unknown", like a missing one.
        dep = b.post("/v1/tasks", json={"task_type": "ECHO", "depends_on": [tid]})
        assert dep.status_code == 422 and "unknown task id" in dep.text

        # A still sees its own, unchanged.
        assert a.get(f"/v1/tasks/{tid}").json()["status"] == "QUEUED"
        assert [t["task_id"] for t in a.get("/v1/tasks", params={"tag": "secret"}).json()[
            "items"]] == [tid]

    # Admin keys see both; tenant keys cannot use admin routes.
    with server.admin() as admin:
        assert admin.get(f"/v1/tasks/{tid}").status_code == 200
        listed = admin.get("/v1/tasks", params={"tenant_id": tenant_b}).json()["items"]
        assert [t["tenant_id"] for t in listed] == [tenant_b]
    with server.client(key_b) as b:
        for method, path in (("GET", "/v1/tenants"), ("POST", "/v1/keys"),
                             ("GET", "/v1/audit"), ("PUT", "/v1/admin/log-level")):
            r = b.request(method, path, json={"name": "x", "level": "INFO",
                                              "tenant_id": tenant_b})
            assert r.status_code == 403, (path, r.text)


def test_read_only_and_revoked_keys(server: Server) -> None:
    tenant, _key = server.tenant()
    read_only = server.key(tenant, read_only=True)
    with server.client(read_only["key"]) as ro:
        assert ro.get("/v1/tasks").status_code == 200
        r = ro.post("/v1/tasks", json={"task_type": "ECHO"})
        assert r.status_code == 403 and r.json()["type"].endswith("/read-only-key")
    extra = server.key(tenant)
    with server.client(extra["key"]) as c:
        assert c.get("/v1/tasks").status_code == 200
    with server.admin() as admin:
        revoked = admin.delete(f"/v1/keys/{extra['key_id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert "key" not in revoked.json()
        assert admin.delete(f"/v1/keys/{uuid.uuid4()}").status_code == 404
    with server.client(extra["key"]) as c:
        assert c.get("/v1/tasks").status_code == 401
    with server.admin() as admin:
        # Keys for unknown tenants, admin keys with a tenant: named validation errors.
        r = admin.post("/v1/keys", json={"name": "k", "tenant_id": "nobody"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tenant_id"
        r = admin.post("/v1/keys", json={"name": "k", "role": "admin", "tenant_id": tenant})
        assert r.status_code == 422
        assert admin.post("/v1/tenants", json={"tenant_id": tenant}).status_code == 409
        tenants = admin.get("/v1/tenants", params={"limit": 500}).json()["items"]
        assert tenant in [t["tenant_id"] for t in tenants]


def test_a_task_naming_another_tenants_batch_stays_out_of_it(server: Server) -> None:
    """batch_id is a free field of a task: B naming A's batch id must not put B's task in
    A's batch (its counts), nor let A's batch cancel reach B's task."""
    _, key_a = server.tenant()
    _, key_b = server.tenant()
    with server.client(key_a) as a, server.client(key_b) as b:
        bid = a.post("/v1/batches", json={"title": "a's", "tasks": [{"task_type": "ECHO"}]}
                     ).json()["batch_id"]
        intruder = b.post("/v1/tasks", json={"task_type": "ECHO", "batch_id": bid})
        assert intruder.status_code == 201, intruder.text
        assert a.get(f"/v1/batches/{bid}").json()["total_count"] == 1
        cancelled = a.post(f"/v1/batches/{bid}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["cancelled_count"] == 1
        tid = intruder.json()["task_id"]
        assert b.get(f"/v1/tasks/{tid}").json()["status"] == "QUEUED"


def test_an_event_cannot_name_another_tenants_event_as_its_cause(server: Server) -> None:
    """POST /v1/events: B's causation_id naming A's event is a 422 on causation_id, as for
    an event that does not exist; the admin's chain of B's events stays in B."""
    _, key_a = server.tenant()
    _, key_b = server.tenant()
    with server.client(key_a) as a, server.client(key_b) as b:
        def asset(c: httpx.Client) -> str:
            r = c.post("/v1/assets", json={"sku_category": "RAW_NET", "sku_code": "ip.1"})
            assert r.status_code == 201, r.text
            return str(r.json()["asset_id"])

        theirs = a.post("/v1/events", json={"asset_id": asset(a), "event_type": "A_SECRET"})
        assert theirs.status_code == 201, theirs.text
        cause = theirs.json()["event"]["event_id"]
        mine = asset(b)
        for causation_id in (cause, str(uuid.uuid4())):
            r = b.post("/v1/events", json={"asset_id": mine, "event_type": "B_EVENT",
                                           "causation_id": causation_id})
            assert r.status_code == 422, r.text
            assert [e["field"] for e in r.json()["errors"]] == ["causation_id"]
            assert "A_SECRET" not in r.text
        own = b.post("/v1/events", json={"asset_id": mine, "event_type": "B_ROOT"}).json()
        child = b.post("/v1/events", json={"asset_id": mine, "event_type": "B_CHILD",
                                           "causation_id": own["event"]["event_id"]})
        assert child.status_code == 201, child.text
    with server.admin() as admin:
        chain = admin.get(f"/v1/events/{child.json()['event']['event_id']}/chain").json()
        assert [e["event_type"] for e in chain["items"]] == ["B_CHILD", "B_ROOT"]
