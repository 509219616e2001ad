"""/v1/ban-policies over HTTP against a real server (SQLite and PostgreSQL): create, replace,
read, list in pages and delete a tenant's auto-ban policies; every field checked with a
problem naming it; tenant scoping, read-only keys and admin keys; one audit row per change;
and a policy set over REST banning an asset at its K-th failure."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from tests.api.conftest import Server, start_server, stop_server


def _audit(server: Server, **params: Any) -> list[dict[str, Any]]:
    with server.admin() as admin:
        r = admin.get("/v1/audit", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


def _errors(r: httpx.Response) -> list[tuple[str, str]]:
    """(field, in) of each error of a 422 problem."""
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return [(e["field"], e["in"]) for e in r.json()["errors"]]


def _put(c: httpx.Client, category: str, **body: Any) -> httpx.Response:
    return c.put(f"/v1/ban-policies/{category}", json=body)


def _report(c: httpx.Client, aid: str, event_type: str) -> list[str]:
    """Report an event on the asset; the types of the events it caused."""
    r = c.post("/v1/events", json={"asset_id": aid, "event_type": event_type})
    assert r.status_code == 201, r.text
    return [e["event_type"] for e in r.json()["caused"]]


def test_put_get_list_and_delete_a_policy(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key) as c:
        missing = c.get("/v1/ban-policies/RAW_NET")
        assert missing.status_code == 404 and missing.json()["type"].endswith("not-found")
        assert missing.headers["content-type"] == "application/problem+json"
        assert c.get("/v1/ban-policies").json() == {"items": [], "next_cursor": None}

        created = _put(c, "RAW_NET", max_failures=3, window_seconds=600)
        assert created.status_code == 201, created.text
        assert created.headers["Location"] == "/v1/ban-policies/RAW_NET"
        body = created.json()
        assert {k: v for k, v in body.items() if k != "updated_at"} == {
            "tenant_id": tenant, "sku_category": "RAW_NET", "max_failures": 3,
            "window_seconds": 600, "failure_event_types": []}
        assert body["updated_at"]
        assert c.get("/v1/ban-policies/RAW_NET").json() == body

        # PUT replaces the whole policy: what is left out is the default again.
        typed = _put(c, "RAW_NET", max_failures=2, window_seconds=60,
                     failure_event_types=["HTTP_PROBE_FAIL", "E_403"])
        assert typed.status_code == 200, typed.text
        assert typed.json()["failure_event_types"] == ["HTTP_PROBE_FAIL", "E_403"]
        again = _put(c, "RAW_NET", max_failures=2, window_seconds=60)
        assert again.status_code == 200 and again.json()["failure_event_types"] == []

        # A category with a space and a slash is one path segment, encoded.
        assert _put(c, "gpu a/100", max_failures=1, window_seconds=5).status_code == 201
        assert c.get("/v1/ban-policies/gpu%20a%2F100").json()["sku_category"] == "gpu a/100"
        assert _put(c, "A_FIRST", max_failures=5, window_seconds=5).status_code == 201
        listed = c.get("/v1/ban-policies").json()
        assert [p["sku_category"] for p in listed["items"]] == ["A_FIRST", "RAW_NET",
                                                                "gpu a/100"]
        seen: list[str] = []
        cursor = None
        while True:  # pages of one
            params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/ban-policies", params=params).json()
            seen += [p["sku_category"] for p in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == ["A_FIRST", "RAW_NET", "gpu a/100"]
        assert ("cursor", "query") in _errors(c.get("/v1/ban-policies",
                                                    params={"cursor": "nope"}))

        deleted = c.delete("/v1/ban-policies/RAW_NET")
        assert deleted.status_code == 204 and deleted.content == b""
        assert c.get("/v1/ban-policies/RAW_NET").status_code == 404
        again_deleted = c.delete("/v1/ban-policies/RAW_NET")
        assert again_deleted.status_code == 404
        assert again_deleted.headers["content-type"] == "application/problem+json"
        assert [p["sku_category"] for p in c.get("/v1/ban-policies").json()["items"]] == [
            "A_FIRST", "gpu a/100"]


def test_every_field_is_checked_and_a_refused_put_writes_nothing(server: Server) -> None:
    _, key = server.tenant()
    ok = {"max_failures": 3, "window_seconds": 60}
    with server.client(key) as c:
        for body, field in (
            ({**ok, "max_failures": 0}, "max_failures"),
            ({**ok, "max_failures": 10_001}, "max_failures"),
            ({**ok, "max_failures": "3"}, "max_failures"),  # strict: no strings
            ({**ok, "max_failures": 2.5}, "max_failures"),
            ({**ok, "max_failures": True}, "max_failures"),
            ({"window_seconds": 60}, "max_failures"),
            ({**ok, "window_seconds": 0}, "window_seconds"),
            ({**ok, "window_seconds": 10**7 + 1}, "window_seconds"),
            ({"max_failures": 3}, "window_seconds"),
            ({**ok, "failure_event_types": "TASK_FAIL"}, "failure_event_types"),
            ({**ok, "failure_event_types": [""]}, "failure_event_types"),
            ({**ok, "failure_event_types": ["  "]}, "failure_event_types"),
            ({**ok, "failure_event_types": ["X" * 101]}, "failure_event_types"),
            ({**ok, "failure_event_types": [f"T{i}" for i in range(101)]},
             "failure_event_types"),
            ({**ok, "failure_event_types": [1]}, "failure_event_types[0]"),
            ({**ok, "failure_event_types": ["X\x00"]}, "failure_event_types[0]"),
            ({**ok, "tenant_id": "t1"}, "tenant_id"),  # the tenant is a query parameter
        ):
            r = _put(c, "RAW_NET", **body)
            errors = _errors(r)
            assert (field, "body") in errors, (body, r.text)
            assert all(e["rule"] for e in r.json()["errors"])
        rule = _put(c, "RAW_NET", **{**ok, "max_failures": 0}).json()["errors"][0]["rule"]
        assert "1" in rule, rule
        # The category (the path) as an asset's sku_category is checked.
        assert _errors(_put(c, "%20", **ok)) == [("sku_category", "path")]
        assert _errors(_put(c, "C" * 201, **ok)) == [("sku_category", "path")]
        assert ("body", "body") in _errors(c.put("/v1/ban-policies/RAW_NET", content=b"[1]",
                                                 headers={"content-type": "application/json"}))
        assert c.get("/v1/ban-policies").json()["items"] == []


def test_policies_are_tenant_scoped_and_changed_by_writers_only(server: Server) -> None:
    tenant_a, key_a = server.tenant()
    tenant_b, key_b = server.tenant()
    read_only = server.key(tenant_a, read_only=True)["key"]
    with server.client(key_a) as a, server.client(key_b) as b, \
            server.client(read_only) as ro, server.admin() as admin:
        assert _put(a, "RAW_NET", max_failures=3, window_seconds=60).status_code == 201
        # B has no policy of its own and cannot see, change or delete A's.
        assert b.get("/v1/ban-policies/RAW_NET").status_code == 404
        foreign = b.get("/v1/ban-policies/RAW_NET", params={"tenant_id": tenant_a})
        assert foreign.status_code == 404
        assert b.get("/v1/ban-policies").json()["items"] == []
        assert b.get("/v1/ban-policies", params={"tenant_id": tenant_a}).json()["items"] == []
        named = b.put("/v1/ban-policies/RAW_NET", params={"tenant_id": tenant_a},
                      json={"max_failures": 1, "window_seconds": 1})
        assert _errors(named) == [("tenant_id", "query")]
        assert b.delete("/v1/ban-policies/RAW_NET",
                        params={"tenant_id": tenant_a}).status_code == 404
        # B's own policy of the same category is another policy.
        assert _put(b, "RAW_NET", max_failures=9, window_seconds=9).status_code == 201
        assert a.get("/v1/ban-policies/RAW_NET").json()["max_failures"] == 3

        # A read-only key reads, and may not change.
        assert ro.get("/v1/ban-policies/RAW_NET").json()["max_failures"] == 3
        assert len(ro.get("/v1/ban-policies").json()["items"]) == 1
        assert _put(ro, "RAW_NET", max_failures=1, window_seconds=1).status_code == 403
        assert ro.delete("/v1/ban-policies/RAW_NET").status_code == 403
        assert a.get("/v1/ban-policies/RAW_NET").json()["max_failures"] == 3
        assert httpx.get(f"{server.url}/v1/ban-policies").status_code == 401

        # An admin names the tenant (an existing one to create a policy).
        assert _errors(admin.get("/v1/ban-policies/RAW_NET")) == [("tenant_id", "query")]
        assert _errors(_put(admin, "RAW_NET", max_failures=1, window_seconds=1)) == [
            ("tenant_id", "query")]
        assert _errors(admin.put("/v1/ban-policies/RAW_NET", params={"tenant_id": "no-such"},
                                 json={"max_failures": 1, "window_seconds": 1})) == [
            ("tenant_id", "query")]
        assert admin.get("/v1/ban-policies/RAW_NET",
                         params={"tenant_id": tenant_a}).json()["max_failures"] == 3
        made = admin.put("/v1/ban-policies/GPU", params={"tenant_id": tenant_b},
                         json={"max_failures": 4, "window_seconds": 40})
        assert made.status_code == 201 and made.json()["tenant_id"] == tenant_b
        assert made.headers["Location"] == f"/v1/ban-policies/GPU?tenant_id={tenant_b}"
        both = admin.get("/v1/ban-policies", params={"tenant_id": tenant_b}).json()["items"]
        assert [p["sku_category"] for p in both] == ["GPU", "RAW_NET"]
        everyone = [(p["tenant_id"], p["sku_category"])
                    for p in admin.get("/v1/ban-policies", params={"limit": 1000})
                    .json()["items"]]
        assert {(tenant_a, "RAW_NET"), (tenant_b, "RAW_NET"), (tenant_b, "GPU")} <= set(
            everyone)
        assert everyone == sorted(everyone)
        assert admin.delete("/v1/ban-policies/GPU",
                            params={"tenant_id": tenant_b}).status_code == 204
        assert b.get("/v1/ban-policies/GPU").status_code == 404


def test_every_policy_change_is_audited(server: Server) -> None:
    tenant, key = server.tenant()
    with server.client(key, headers={"X-Request-ID": "ban-policy-audit"}) as c:
        assert _put(c, "RAW_NET", max_failures=3, window_seconds=60).status_code == 201
        assert _put(c, "RAW_NET", max_failures=2, window_seconds=30,
                    failure_event_types=["E_403"]).status_code == 200
        assert _put(c, "RAW_NET", max_failures=0, window_seconds=30).status_code == 422
        assert c.delete("/v1/ban-policies/RAW_NET").status_code == 204
        assert c.delete("/v1/ban-policies/RAW_NET").status_code == 404  # refused: no row
    rows = list(reversed(_audit(server, resource_type="banPolicy", tenant_id=tenant)))
    assert [r["action"] for r in rows] == ["created", "updated", "deleted"]
    assert all(r["resource"]["identifier"] == "RAW_NET" and r["tenant_id"] == tenant
               and r["request_id"] == "ban-policy-audit" for r in rows)
    created, updated, deleted = (r["diff_object"] for r in rows)

    def image(raw: str | None) -> Any:
        return None if raw is None else {
            k: v for k, v in orjson.loads(raw).items() if k != "updated_at"}

    assert image(created["old_object"]) is None
    assert image(created["new_object"]) == {
        "tenant_id": tenant, "sku_category": "RAW_NET", "max_failures": 3,
        "window_seconds": 60, "failure_event_types": []}
    assert image(updated["old_object"]) == image(created["new_object"])
    assert image(updated["new_object"])["failure_event_types"] == ["E_403"]
    assert image(deleted["old_object"]) == image(updated["new_object"])
    assert deleted["new_object"] is None


def test_a_policy_set_over_rest_bans_an_asset_at_its_kth_failure(server: Server) -> None:
    _, key = server.tenant()
    category = f"NET_{uuid.uuid4().hex[:6]}"
    with server.client(key) as c:
        r = c.post("/v1/assets", json={"sku_category": category, "sku_code": "ip.uk.1"})
        assert r.status_code == 201, r.text
        aid = r.json()["asset_id"]
        # Only the listed type counts: other failures leave the asset READY.
        assert _put(c, category, max_failures=3, window_seconds=600,
                    failure_event_types=["HTTP_PROBE_FAIL"]).status_code == 201
        assert _report(c, aid, "PAYMENT_FAIL") == []
        assert _report(c, aid, "HTTP_PROBE_FAIL") == []
        assert _report(c, aid, "HTTP_PROBE_FAIL") == []
        assert c.get(f"/v1/assets/{aid}").json()["status"] == "READY"
        assert _report(c, aid, "HTTP_PROBE_FAIL") == ["ASSET_BANNED"]
        asset = c.get(f"/v1/assets/{aid}").json()
        assert asset["status"] == "BANNED"
        [banned] = [e for e in c.get(f"/v1/assets/{aid}/events").json()["items"]
                    if e["event_type"] == "ASSET_BANNED"]
        assert banned["context"]["policy_max_failures"] == 3
        assert banned["context"]["fail_count_window"] == 3

        # Replaced over REST: the new K applies at the next failure (after an unban).
        assert c.post(f"/v1/assets/{aid}/unban").json()["status"] == "READY"
        assert _put(c, category, max_failures=1, window_seconds=600).status_code == 200
        assert _report(c, aid, "SMTP_FAIL") == ["ASSET_BANNED"]

        # Deleted: failures no longer ban.
        assert c.post(f"/v1/assets/{aid}/unban").json()["status"] == "READY"
        assert c.delete(f"/v1/ban-policies/{category}").status_code == 204
        for _ in range(3):
            assert _report(c, aid, "SMTP_FAIL") == []
        assert c.get(f"/v1/assets/{aid}").json()["status"] == "READY"


def test_two_concurrent_puts_of_a_new_policy_create_it_once(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two PUTs creating the same policy at once both read "no policy" and both answered 201
    and audited `created` (PostgreSQL). One creates it (201, `created`), the other replaces
    it (200, `updated`, its old image the one created). PostgreSQL: two servers on one
    database; SQLite: concurrent requests to one server."""
    nodes = [server]
    if not server.database_url.startswith("sqlite"):
        nodes.append(start_server(server.database_url,
                                  tmp_path_factory.mktemp("log") / "s.log"))
    try:
        tenant, key = server.tenant()
        categories = [f"RACE_{i}" for i in range(12)]
        barriers = {c: threading.Barrier(2) for c in categories}

        def put(job: tuple[str, int]) -> tuple[str, int, int]:
            category, side = job
            with nodes[side % len(nodes)].client(key) as c:
                barriers[category].wait()
                r = _put(c, category, max_failures=3 + side, window_seconds=60)
                return category, side, r.status_code

        jobs = [(c, side) for c in categories for side in (0, 1)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(put, jobs))
        rows = list(reversed(_audit(server, resource_type="banPolicy", tenant_id=tenant)))
        for category in categories:
            codes = sorted(code for cat, _, code in answers if cat == category)
            assert codes == [200, 201], (category, codes)
            audited = [r for r in rows if r["resource"]["identifier"] == category]
            assert [r["action"] for r in audited] == ["created", "updated"], category
            created, updated = (r["diff_object"] for r in audited)
            assert created["old_object"] is None
            assert orjson.loads(updated["old_object"]) == orjson.loads(created["new_object"])
            with server.client(key) as c:
                saved = c.get(f"/v1/ban-policies/{category}").json()
            assert orjson.loads(updated["new_object"]) == saved
    finally:
        for node in nodes[1:]:
            stop_server(node)
