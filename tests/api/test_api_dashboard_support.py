"""What the dashboard needs from the server, over HTTP on SQLite and PostgreSQL: task counts by
status (GET /v1/stats/tasks), the signed-in key (GET /v1/whoami), and the static pages under
/ui with their security headers."""

from __future__ import annotations

import re
from typing import Any

from tests.api.conftest import Server

STATUSES = {"PENDING", "QUEUED", "RUNNING", "SUCCESS", "FAILED", "CANCELLED", "TIMEOUT",
            "DEAD_LETTER"}


def _stats(server: Server, key: str, **params: Any) -> dict[str, Any]:
    with server.client(key) as c:
        r = c.get("/v1/stats/tasks", params=params)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data


def test_task_stats_count_by_status_within_the_tenant(server: Server) -> None:
    tenant_a, key_a = server.tenant()
    tenant_b, key_b = server.tenant()
    empty = _stats(server, key_a)
    assert empty == {"tenant_id": tenant_a, "by_status": dict.fromkeys(STATUSES, 0),
                     "total": 0, "queue_depth": 0}
    with server.client(key_a) as c:
        ids = [c.post("/v1/tasks", json={"task_type": "COUNTED"}).json()["task_id"]
               for _ in range(3)]
        assert c.post(f"/v1/tasks/{ids[0]}/cancel").status_code == 200
    with server.client(key_b) as c:
        assert c.post("/v1/tasks", json={"task_type": "OTHER"}).status_code == 201

    mine = _stats(server, key_a)
    assert mine["by_status"]["QUEUED"] == 2 and mine["by_status"]["CANCELLED"] == 1
    assert mine["total"] == 3 and mine["queue_depth"] == 2
    # A tenant key asking for another tenant counts nothing (as if it had nothing), and
    # says so of the tenant it asked for, not of its own (which has 3).
    assert _stats(server, key_a, tenant_id=tenant_b) == {
        "tenant_id": tenant_b, "by_status": dict.fromkeys(STATUSES, 0), "total": 0,
        "queue_depth": 0}
    assert _stats(server, key_a, tenant_id=tenant_a)["total"] == 3
    # An admin counts every tenant, or the one it names.
    assert _stats(server, server.admin_key, tenant_id=tenant_b)["by_status"]["QUEUED"] == 1
    everything = _stats(server, server.admin_key)
    assert everything["tenant_id"] is None and everything["total"] >= 4


def test_task_stats_and_whoami_need_a_valid_key(server: Server) -> None:
    with server.client("not-a-key") as c:
        for path in ("/v1/stats/tasks", "/v1/whoami"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["content-type"] == \
                "application/problem+json"
    with server.admin() as c:
        r = c.get("/v1/stats/tasks", params={"tenant_id": "x" * 129})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tenant_id"


def test_whoami_describes_the_key(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key) as c:
        me = c.get("/v1/whoami").json()
    assert me["tenant_id"] == tenant and me["role"] == "tenant" and me["read_only"] is False
    assert me["name"] == f"key of {tenant}" and me["key_id"]
    reader = server.key(tenant, read_only=True)
    with server.client(reader["key"]) as c:
        assert c.get("/v1/whoami").json()["read_only"] is True
    with server.admin() as c:
        admin = c.get("/v1/whoami").json()
    assert admin["role"] == "admin" and admin["tenant_id"] is None


def test_dashboard_is_served_under_ui_with_security_headers(server: Server) -> None:
    with server.client(follow_redirects=False) as c:
        for path in ("/", "/ui"):
            r = c.get(path)
            assert r.status_code == 307 and r.headers["location"] == "/ui/"
        page = c.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<script type="module" src="js/app.js">' in page.text
        # Every module the pages import is served as JavaScript.
        seen: set[str] = set()
        todo = ["js/app.js"]
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            r = c.get(f"/ui/{path}")
            assert r.status_code == 200, path
            assert "javascript" in r.headers["content-type"], (path, r.headers)
            base = path.rsplit("/", 1)[0]
            for ref in re.findall(r'from "\./([^"]+)"', r.text):
                todo.append(f"{base}/{ref}")
            for ref in re.findall(r'from "\.\./([^"]+)"', r.text):
                todo.append(f"{base.rsplit('/', 1)[0]}/{ref}")
        assert len(seen) >= 12
        assert c.get("/ui/style.css").headers["content-type"].startswith("text/css")
        missing = c.get("/ui/no-such-file.js")
        assert missing.status_code == 404
