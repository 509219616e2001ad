"""Awkward JSON values in what tasks and schedules carry (nesting, non-finite numbers, values
that are not JSON), through the Python API and the REST API (in process, both backends): a
value either comes back as it was sent or is refused, naming its field, with nothing written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from creep import Creep, TaskContext, ValidationError
from tests.api.inprocess import ADMIN, TestClient

JSON = {**ADMIN, "content-type": "application/json"}


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    return "[" * depth + "]" * depth


def body(doc: dict[str, Any], raw: str) -> str:
    """`doc` as JSON text with `raw` (JSON text the client library would not write) where
    the string "RAW" is."""
    return json.dumps(doc).replace('"RAW"', raw)


def refused(api: TestClient, r: Any, field: str, rule: str) -> None:
    assert r.status_code == 422, r.text
    assert any(e["field"] == field and rule in e["rule"] for e in r.json()["errors"]), r.text


def error_names(exc: ValidationError, field: str, rule: str) -> bool:
    return any(name == field and rule in text for name, text in exc.errors)


def test_json_nested_deeper_than_a_page_can_carry_is_refused(
    app: Creep, api: TestClient
) -> None:
    """An input payload 251 lists deep was stored; GET /v1/tasks (a page nests it 3 deeper)
    then answered 500 for every task of the tenant, and a claim of it answered 500 after
    taking the task (RUNNING, its token lost). A result as deep did the same once completed.
    Constraints 10,000 deep raised RecursionError, resource hint attributes 250 deep a
    TypeError, schedule data either. Each is now refused at MAX_JSON_DEPTH (200), as asset
    attributes and event context are."""
    r = api.post("/v1/tasks", headers=JSON, content=body(
        {"tenant_id": "acme", "task_type": "D", "input_payload": "RAW"}, nested_text(251)))
    assert r.status_code == 422, r.text  # the body's parser (in the model) stops at 200
    for fields, field in (({"input_payload": nested(251)}, "input_payload"),
                          ({"constraints": {"x": nested(10_000)}}, "constraints"),
                          ({"resource_hints": [{"sku_category": "c",
                                                "attributes": {"a": nested(250)}}]},
                           "resource_hints")):
        for submit in (lambda f: app.submit(**f), lambda f: app.submit_many([f])):
            with pytest.raises(ValidationError) as caught:
                submit({"tenant_id": "acme", "task_type": "D", **fields})
            assert any(name.removeprefix("tasks[0].").startswith(field) and "nest" in rule
                       for name, rule in caught.value.errors), caught.value.errors
    for data in (nested(250), nested(10_000)):
        with pytest.raises(ValidationError) as caught:
            app.create_schedule(tenant_id="acme", name="s", type="D", interval=60, data=data)
        assert error_names(caught.value, "data", "nest"), caught.value.errors
    assert app.list_tasks(tenant_id="acme") == []

    # As deep as allowed: listed, claimed and completed with a result as deep.
    task = app.submit(tenant_id="acme", task_type="D", input_payload=nested(200))
    (item,) = api.post("/v1/workers/claim", headers=ADMIN,
                       json={"task_types": ["D"]}).json()["items"]
    assert item["task"]["input_payload"] == nested(200)
    token = item["claim_token"]
    r = api.post(f"/v1/tasks/{task.task_id}/complete", headers=JSON, content=body(
        {"claim_token": token, "result": "RAW"}, nested_text(220)))
    refused(api, r, "result", "nest")
    r = api.post("/v1/workers/complete", headers=JSON, content=body({"items": [
        {"task_id": task.task_id, "claim_token": token, "outcome": "complete", "result": "RAW"}
    ]}, nested_text(220)))
    refused(api, r, "items[0].result", "nest")
    r = api.post(f"/v1/tasks/{task.task_id}/complete", headers=ADMIN,
                 json={"claim_token": token, "result": nested(200)})
    assert r.status_code == 200, r.text
    listed = api.get("/v1/tasks", headers=ADMIN, params={"tenant_id": "acme"})
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"][0]["result_payload"] == nested(200)


def test_a_handler_result_nested_too_deep_is_an_error_not_a_success(app: Creep) -> None:
    """A handler's result 251 lists deep was stored as its success (every page of tasks
    then failed); it is now the attempt's error, as a result that is not JSON is."""

    @app.handler("D")
    def deep(ctx: TaskContext) -> Any:
        return nested(251)

    task = app.submit(tenant_id="acme", task_type="D", constraints={"max_retries": 0})
    app.run_worker(burst=True, install_signals=False)
    got = app.get_task(task.task_id)
    assert got.status == "DEAD_LETTER" and got.result_payload is None
    assert "result: must not nest" in (got.result_message or ""), got.result_message
    app.list_tasks(tenant_id="acme")


@pytest.mark.parametrize(("value", "what"), [
    ({1: "a"}, "Dict key must be str"), (b"raw", "bytes"), (object(), "object")])
def test_constraints_or_hint_attributes_that_are_not_json_are_a_validation_error(
    app: Creep, value: Any, what: str
) -> None:
    """app.submit with constraints or resource hint attributes orjson cannot write (a dict
    with an int key, bytes) raised the store's TypeError; it is now a ValidationError naming
    the field, as such an input payload is, and nothing is written."""
    for fields, field in (({"constraints": {"x": value}}, "constraints"),
                          ({"resource_hints": [{"sku_category": "c",
                                                "attributes": {"a": value}}]},
                           "resource_hints")):
        for submit in (lambda f: app.submit(**f), lambda f: app.submit_many([f])):
            with pytest.raises(ValidationError) as caught:
                submit({"tenant_id": "acme", "task_type": "J", **fields})
            assert any(name.removeprefix("tasks[0].") == field and what in rule
                       for name, rule in caught.value.errors), caught.value.errors
    assert app.list_tasks(tenant_id="acme") == []


def test_rest_schedule_data_nested_too_deep_is_a_422(app: Creep, api: TestClient) -> None:
    """POST /v1/schedules wrote `data` as JSON text before checking it: data 300 lists deep
    answered 500. It is now a 422 naming the field, and PATCH the same; nothing is written."""
    raw = nested_text(300)
    doc = {"tenant_id": "acme", "name": "s", "type": "T", "interval": 60, "data": {"a": "RAW"}}
    refused(api, api.post("/v1/schedules", headers=JSON, content=body(doc, raw)), "data",
            "nest")
    assert app.list_schedules(tenant_id="acme") == []
    made = api.post("/v1/schedules", headers=ADMIN, json={**doc, "data": {"a": 1}})
    assert made.status_code == 201, made.text
    uid = made.json()["uid"]
    r = api.patch(f"/v1/schedules/{uid}", headers={**JSON, "If-Match": made.headers["ETag"]},
                  content=body({"data": {"a": "RAW"}}, raw))
    refused(api, r, "data", "nest")
    assert app.get_schedule(uid).data == '{"a":1}'


#: JSON number literals with no finite double: Python's json module and Pydantic read them
#: as nan or inf, which orjson then wrote as null.
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


@pytest.mark.parametrize("raw", NON_FINITE)
def test_rest_non_finite_numbers_are_a_422_naming_the_field(
    app: Creep, api: TestClient, raw: str
) -> None:
    """NaN, Infinity or 1e400 in a request body was read as nan or inf and stored as null:
    an input payload, constraints, a hint's attributes, a batch's task, schedule data, a
    result. Each is now a 422 naming the field, as an integer JSON cannot carry is, and
    nothing is written."""
    order = {"tenant_id": "acme", "task_type": "N"}
    for doc, field in (
        ({**order, "input_payload": {"x": [1, "RAW"]}}, "input_payload.x[1]"),
        ({**order, "task_type": "RAW_ESCAPED", "input_payload": {"x": "RAW"}},
         "input_payload.x"),  # a \u escape: the model reads the body
        ({**order, "constraints": {"k": "RAW"}}, "constraints.k"),
        ({**order, "resource_hints": [{"sku_category": "c", "attributes": {"a": "RAW"}}]},
         "resource_hints[0].attributes.a"),
        ({**order, "max_total_cost": "RAW"}, "max_total_cost"),
    ):
        text = body(doc, raw).replace('"RAW_ESCAPED"', '"\\u004e"')
        refused(api, api.post("/v1/tasks", headers=JSON, content=text), field, "finite")
    refused(api, api.post("/v1/batches", headers=JSON, content=body(
        {"title": "b", "tenant_id": "acme", "tasks": [{"task_type": "N",
                                                       "input_payload": "RAW"}]}, raw)),
            "tasks[0].input_payload", "finite")
    assert app.list_tasks(tenant_id="acme") == []

    schedule = {"tenant_id": "acme", "name": "s", "type": "T", "interval": 60}
    refused(api, api.post("/v1/schedules", headers=JSON,
                          content=body({**schedule, "data": {"a": "RAW"}}, raw)),
            "data.a", "finite")
    assert app.list_schedules(tenant_id="acme") == []
    made = api.post("/v1/schedules", headers=ADMIN, json={**schedule, "data": {"a": 1}})
    r = api.patch(f"/v1/schedules/{made.json()['uid']}",
                  headers={**JSON, "If-Match": made.headers["ETag"]},
                  content=body({"data": {"a": "RAW"}}, raw))
    refused(api, r, "data.a", "finite")

    task = app.submit(tenant_id="acme", task_type="N")
    (item,) = api.post("/v1/workers/claim", headers=ADMIN,
                       json={"task_types": ["N"]}).json()["items"]
    token = item["claim_token"]
    refused(api, api.post(f"/v1/tasks/{task.task_id}/complete", headers=JSON, content=body(
        {"claim_token": token, "result": {"score": "RAW"}}, raw)), "result.score", "finite")
    refused(api, api.post("/v1/workers/complete", headers=JSON, content=body({"items": [
        {"task_id": task.task_id, "claim_token": token, "outcome": "complete",
         "result": "RAW"}]}, raw)), "items[0].result", "finite")
    assert app.get_task(task.task_id).status == "RUNNING"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_python_non_finite_numbers_are_a_validation_error(app: Creep, value: float) -> None:
    """A float NaN or infinity given to the Python API was stored as null (orjson writes it
    so); it is now a ValidationError naming the field, and nothing is written."""
    for fields, field in (({"constraints": {"k": [value]}}, "constraints.k[0]"),
                          ({"resource_hints": [{"sku_category": "c",
                                                "attributes": {"a": value}}]},
                           "resource_hints[0].attributes.a")):
        for submit in (lambda f: app.submit(**f), lambda f: app.submit_many([f])):
            with pytest.raises(ValidationError) as caught:
                submit({"tenant_id": "acme", "task_type": "N", **fields})
            assert any(name.removeprefix("tasks[0].") == field and "finite" in rule
                       for name, rule in caught.value.errors), caught.value.errors
    assert app.list_tasks(tenant_id="acme") == []
    with pytest.raises(ValidationError) as caught:
        app.create_schedule(tenant_id="acme", name="s", type="N", interval=60,
                            data={"a": value})
    assert error_names(caught.value, "data.a", "finite"), caught.value.errors
    assert app.list_schedules(tenant_id="acme") == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_python_non_finite_input_payload_is_a_validation_error(
    app: Creep, value: float
) -> None:
    """app.submit(input_payload={"x": float("nan")}) stored {"x": null}; it is now a
    ValidationError naming the value, from submit and submit_many, and nothing is written.
    A payload holding null and finite floats is stored as it was sent."""
    for payload, field in (({"x": value}, "input_payload.x"),
                           ({"x": None, "y": [1.5, {"z": value}]}, "input_payload.y[1].z"),
                           ([value], "input_payload[0]"), (value, "input_payload")):
        for submit in (lambda p: app.submit(tenant_id="acme", task_type="N", input_payload=p),
                       lambda p: app.submit_many([{"tenant_id": "acme", "task_type": "N",
                                                   "input_payload": p}])):
            with pytest.raises(ValidationError) as caught:
                submit(payload)
            assert any(name.removeprefix("tasks[0].") == field and "finite" in rule
                       for name, rule in caught.value.errors), caught.value.errors
    assert app.list_tasks(tenant_id="acme") == []
    fine = {"x": None, "y": [1.5, -2.25e300, 5e-324], "null": "null"}
    task = app.submit(tenant_id="acme", task_type="N", input_payload=fine)
    assert app.get_task(task.task_id).input_payload == fine


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_handler_result_not_finite_is_an_error_not_null(app: Creep, value: float) -> None:
    """A handler returning {"score": float("inf")} succeeded with {"score": null}; that
    result is now the attempt's error naming the value, as a result that is not JSON is."""

    @app.handler("N")
    def score(ctx: TaskContext) -> Any:
        return {"ok": None, "score": value}

    task = app.submit(tenant_id="acme", task_type="N", constraints={"max_retries": 0})
    app.run_worker(burst=True, install_signals=False)
    got = app.get_task(task.task_id)
    assert got.status == "DEAD_LETTER" and got.result_payload is None
    assert "result.score: must be a finite number" in (got.result_message or ""), \
        got.result_message


@pytest.mark.parametrize("raw", ["18446744073709551616", "-9223372036854775809",
                                 "123456789012345678901234567890"])
def test_rest_integer_beyond_64_bits_is_a_422_on_every_path(
    app: Creep, api: TestClient, raw: str
) -> None:
    """POST /v1/tasks read an input payload's integer beyond 64 bits as a float (2**64 was
    stored as 1.8446744073709552e+19) while the same body with a \\u escape, read by the
    model, was a 422; it is a 422 naming the value either way now, and nothing is written."""
    order = {"tenant_id": "acme", "task_type": "N", "input_payload": {"x": [1, "RAW"]}}
    refused(api, api.post("/v1/tasks", headers=JSON, content=body(order, raw)),
            "input_payload.x[1]", "64 bits")
    escaped = body({**order, "task_type": "ESCAPED"}, raw).replace('"ESCAPED"', '"\\u004e"')
    refused(api, api.post("/v1/tasks", headers=JSON, content=escaped),
            "input_payload.x[1]", "64 bits")
    assert app.list_tasks(tenant_id="acme") == []


def test_rest_numbers_that_fit_come_back_as_sent(app: Creep, api: TestClient) -> None:
    """The 64-bit ends, long digit strings and long decimals are stored as sent."""
    payload = {"ints": [18446744073709551615, -9223372036854775808, 9999999999999999999,
                        -1234567890123456789],
               "text": "123456789012345678901234567890", "float": 0.12345678901234568,
               "long": "RAW"}
    text = body({"tenant_id": "acme", "task_type": "N", "input_payload": payload,
                 "external_ref": "98765432109876543210"}, "1.2345678901234567890123")
    r = api.post("/v1/tasks", headers=JSON, content=text)
    assert r.status_code == 201, r.text
    stored = app.get_task(r.json()["task_id"])
    assert stored.input_payload == {**payload, "long": 1.2345678901234568}
    assert stored.external_ref == "98765432109876543210"
    fits = {"x": [9999999999999999999, -999999999999999999, 1.5e300]}  # the common order
    r = api.post("/v1/tasks", headers=ADMIN,
                 json={"tenant_id": "acme", "task_type": "N", "input_payload": fits})
    assert r.status_code == 201, r.text
    assert app.get_task(r.json()["task_id"]).input_payload == fits
