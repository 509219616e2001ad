"""Requests a user can send that once answered a 5xx (or broke the response) instead of
a 4xx problem+json naming the field."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import Server


def cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def assert_client_error(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), r.text


@pytest.fixture
def tenant_client(server: Server) -> Iterator[httpx.Client]:
    _, key = server.tenant()
    with server.client(key) as c:
        yield c


# -- cursors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("created", ["2024-01-01T00:00:00+00:00", "123", "\u00b2"])
def test_task_list_cursor_passing_validation_is_not_500(
    tenant_client: httpx.Client, created: str
) -> None:
    # valid_sortable_cursor accepts digits (str.isdigit: also '²') or any ISO timestamp, but
    # SQLite's task_list does int(created) and PostgreSQL's datetime.fromisoformat(created).
    r = tenant_client.get("/v1/tasks", params={"cursor": cursor(f"{created}/{uuid.uuid4()}")})
    assert_client_error(r)


def test_batch_list_superscript_cursor_is_not_500(tenant_client: httpx.Client) -> None:
    # SQLite batch_list: int(created) if created.isdigit() -> int('²') raises ValueError.
    r = tenant_client.get("/v1/batches", params={"cursor": cursor(f"\u00b2/{uuid.uuid4()}")})
    assert_client_error(r)


def test_batch_list_cursor_with_nul_is_not_503(tenant_client: httpx.Client) -> None:
    # PostgreSQL: the NUL in the cursor's id part reaches SQL -> 503 "Database unavailable".
    r = tenant_client.get("/v1/batches", params={"cursor": cursor("123/\x00")})
    assert_client_error(r)


@pytest.mark.parametrize("path", ["/v1/ledger", "/v1/events"])
def test_csv_export_bad_cursor_is_a_problem_not_a_broken_stream(
    tenant_client: httpx.Client, path: str
) -> None:
    # valid_page_cursor accepts seq '²' (isdigit); asset_pages._after rejects it only inside
    # the CSV generator, after the 200 was sent: the connection is dropped mid-body.
    bad = cursor("2024-01-01T00:00:00+00:00|\u00b2")
    assert tenant_client.get(path, params={"cursor": bad}).status_code == 422  # JSON: fine
    r = tenant_client.get(path, params={"cursor": bad, "format": "csv"})
    assert r.status_code == 422, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")


# -- duplicate ids --------------------------------------------------------------------------------

def test_task_create_with_null_optional_fields_takes_their_defaults(
    tenant_client: httpx.Client,
) -> None:
    """`null` for an optional field means its default, currency included (it alone answered
    422 'must be a 3-4 letter upper-case currency code')."""
    r = tenant_client.post("/v1/tasks", json={
        "task_type": "NULLS", "env": "dev", "currency": None, "priority": None,
        "max_total_cost": None, "tags": None, "project_id": None})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["currency"], body["priority"], body["max_total_cost"]) == ("USD", 50, None)

def test_task_create_reusing_task_id_with_other_key_is_409(tenant_client: httpx.Client) -> None:
    task_id = str(uuid.uuid4())
    r = tenant_client.post("/v1/tasks", json={"task_type": "E", "task_id": task_id,
                                               "idempotency_key": "k1"})
    assert r.status_code == 201, r.text
    r = tenant_client.post("/v1/tasks", json={"task_type": "E", "task_id": task_id,
                                               "idempotency_key": "k2"})
    assert_client_error(r)  # SQLite: 500 (IntegrityError), PostgreSQL: 503


# -- timestamps outside the UTC range -------------------------------------------------------------

OUT_OF_RANGE = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_task_run_after_out_of_range(tenant_client: httpx.Client, when: str) -> None:
    # PostgreSQL: 500 (TypeError in the insert's JSON); SQLite: stored, then every read of the
    # task (GET /v1/tasks/{id}, GET /v1/tasks) is a 500.
    r = tenant_client.post("/v1/tasks", json={"task_type": "E", "run_after": when})
    assert_client_error(r)
    if r.status_code == 201:
        assert_client_error(tenant_client.get(f"/v1/tasks/{r.json()['task_id']}"))
        assert_client_error(tenant_client.get("/v1/tasks"))


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_batch_task_run_after_out_of_range(tenant_client: httpx.Client, when: str) -> None:
    r = tenant_client.post("/v1/batches", json={
        "title": "b", "tasks": [{"ref": "a", "task_type": "E", "run_after": when}]})
    assert_client_error(r)
    if r.status_code == 201:
        assert_client_error(tenant_client.get("/v1/tasks"))


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_asset_event_occurred_at_out_of_range(tenant_client: httpx.Client, when: str) -> None:
    # PostgreSQL: 503 "Database unavailable"; SQLite: 201, then GET /v1/events,
    # /v1/assets/{id}/events and /v1/events/{id}/chain are 500s for good.
    asset = tenant_client.post("/v1/assets", json={"sku_category": "c", "sku_code": "s"})
    assert asset.status_code == 201, asset.text
    asset_id = asset.json()["asset_id"]
    r = tenant_client.post("/v1/events", json={"asset_id": asset_id, "event_type": "X",
                                                "occurred_at": when})
    assert_client_error(r)
    if r.status_code == 201:
        assert_client_error(tenant_client.get("/v1/events", params={"asset_id": asset_id}))
        assert_client_error(tenant_client.get(f"/v1/assets/{asset_id}/events"))
        event_id = r.json()["event"]["event_id"]
        assert_client_error(tenant_client.get(f"/v1/events/{event_id}/chain"))


# -- huge decimals --------------------------------------------------------------------------------

def test_ledger_amount_beyond_decimal_context_is_422(tenant_client: httpx.Client) -> None:
    # domain/asset.py money(): abs(Decimal('1E+1000000')) raises decimal.Overflow (Emax
    # 999999) before the "must be below 10^15" check -> 500. ('1e999' is a 422.)
    r = tenant_client.post("/v1/ledger", json={"entry_type": "REVENUE", "amount": "1E+1000000",
                                                "currency": "USD"})
    assert_client_error(r)


def test_asset_cost_per_lease_beyond_decimal_context_is_422(tenant_client: httpx.Client) -> None:
    r = tenant_client.post("/v1/assets", json={"sku_category": "c", "sku_code": "s",
                                                "cost_per_lease": "1E+1000000",
                                                "currency": "USD"})
    assert_client_error(r)


# -- deeply nested JSON objects -------------------------------------------------------------------

def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("path,template", [
    ("/v1/assets", '{"sku_category":"c","sku_code":"s","attributes":%s}'),
    ("/v1/batches", '{"title":"b","metadata":%s,"tasks":[{"ref":"a","task_type":"E"}]}'),
    ("/v1/batches", '{"title":"b","tasks":[{"ref":"a","task_type":"E","constraints":%s}]}'),
])
def test_deeply_nested_json_field_is_422(
    tenant_client: httpx.Client, path: str, template: str
) -> None:
    # Accepted by FastAPI's json.loads, then orjson.dumps (limit 254 levels) raises
    # "TypeError: Recursion limit reached" in the store -> 500. POST /v1/tasks answers 422.
    r = tenant_client.post(path, content=template % _nested(300),
                           headers={"content-type": "application/json"})
    assert_client_error(r)


def test_deeply_nested_event_context_is_422(tenant_client: httpx.Client) -> None:
    asset = tenant_client.post("/v1/assets", json={"sku_category": "c", "sku_code": "s"})
    body = f'{{"asset_id":"{asset.json()["asset_id"]}","event_type":"X","context":{_nested(300)}}}'
    r = tenant_client.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert_client_error(r)
