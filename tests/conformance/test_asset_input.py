"""Bad input to the asset, ledger and asset-event API is a ValidationError naming the field
(or NotFound, or a conflict) on both backends, never a database error, and writes nothing."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from creep import ConflictError, Creep, NotFound, ValidationError


def ip(i: int, **extra: Any) -> dict[str, Any]:
    return {"sku_category": "RAW_NET", "sku_code": f"ip.uk.{i}", **extra}


def fields_of(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [name for name, _ in exc.value.errors]


@pytest.mark.parametrize("field", ["sku_category", "sku_code", "tenant_id", "project_id", "env"])
def test_asset_text_with_nul_is_refused(app: Creep, field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        app.create_asset(**{**ip(1), field: "a\x00b"})
    assert [name for name in fields_of(exc) if name.endswith(field)]
    assert app.list_assets() == []


def test_asset_update_with_nul_is_refused_and_changes_nothing(app: Creep) -> None:
    a = app.create_asset(**ip(1))
    with pytest.raises(ValidationError):
        app.update_asset(a.asset_id, a.version, env="a\x00b")
    assert app.get_asset(a.asset_id).version == a.version


@pytest.mark.parametrize("attrs", [{1: "a"}, {"k": object()}, {"k": b"x"}, {"k": float("nan")},
                                   {"k": 2**70}])
def test_asset_attributes_must_be_plain_json(app: Creep, attrs: dict[Any, Any]) -> None:
    with pytest.raises(ValidationError) as exc:
        app.create_asset(**ip(1, attributes=attrs))
    assert any("attributes" in name for name in fields_of(exc))


@pytest.mark.parametrize("field,value", [
    ("message", "a\x00b"), ("event_type", "X\x00_FAIL"), ("tags", ["a\x00"]),
    ("context", {"k": "a\x00"}), ("context", {"k": object()}), ("context", {1: "a"}),
    ("context", {"k": 2**70}),
])
def test_reported_event_fields_must_be_storable(app: Creep, field: str, value: Any) -> None:
    a = app.create_asset(**ip(1))
    before = app.asset_events(asset_id=a.asset_id)
    with pytest.raises(ValidationError) as exc:
        app.report_asset_event(**{"asset_id": a.asset_id, "event_type": "PROBE", field: value})
    assert any(name.startswith(field) for name in fields_of(exc))
    assert app.asset_events(asset_id=a.asset_id) == before


def test_a_reported_event_id_used_twice_is_the_first_event_or_a_conflict(app: Creep) -> None:
    """An event sent again with its id (after a lost answer) is the event written the first
    time, nothing more written; another event under that id is a conflict."""
    a = app.create_asset(**ip(1))
    eid = str(uuid.uuid4())
    first = app.report_asset_event(asset_id=a.asset_id, event_type="PROBE", event_id=eid,
                                   http_status=200, context={"n": 1})
    again = app.report_asset_event(asset_id=a.asset_id, event_type="PROBE", event_id=eid,
                                   http_status=200, context={"n": 1})
    assert again == first
    for other in ({"http_status": 201}, {"context": {"n": 2}}, {"event_type": "PROBE2"},
                  {"source": "elsewhere"}):
        with pytest.raises(ConflictError):
            app.report_asset_event(**{"asset_id": a.asset_id, "event_type": "PROBE",
                                      "event_id": eid, "http_status": 200,
                                      "context": {"n": 1}, **other})
    assert [e.event_id for e in app.asset_events(asset_id=a.asset_id)].count(eid) == 1


@pytest.mark.parametrize("field", ["description", "project_id", "tenant_id"])
def test_ledger_text_with_nul_is_refused(app: Creep, field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        app.record_ledger_entry(entry_type="COST", amount="1", currency="USD",
                                **{field: "a\x00b"})
    assert field in fields_of(exc)
    assert app.ledger_entries() == []


def test_ledger_tenant_is_required(app: Creep) -> None:
    with pytest.raises(ValidationError) as exc:
        app.record_ledger_entry(entry_type="COST", amount="1", currency="USD",
                                tenant_id=None)  # type: ignore[arg-type]
    assert fields_of(exc) == ["tenant_id"]


def test_a_currency_is_the_code_alone(app: Creep) -> None:
    with pytest.raises(ValidationError):
        app.record_ledger_entry(entry_type="COST", amount="1", currency="USD\n")
    with pytest.raises(ValidationError):
        app.create_asset(**ip(1, currency="USD\n"))


@pytest.mark.parametrize("kw", [{"sku_category": "a\x00"}, {"failure_event_types": ["X\x00"]}])
def test_ban_policy_text_with_nul_is_refused(app: Creep, kw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        app.set_ban_policy(**{"sku_category": "C", "max_failures": 1, "window_seconds": 5, **kw})


def test_ids_that_are_not_uuids_name_no_asset(app: Creep) -> None:
    app.create_asset(**ip(1))
    with pytest.raises(NotFound):
        app.ban_asset("nope")
    with pytest.raises(NotFound):
        app.update_asset("nope", 1, health_score=5)
    with pytest.raises(ValidationError) as exc:
        app.list_assets(after="zzz")
    assert fields_of(exc) == ["after"]


def test_limits_and_time_ranges_are_checked(app: Creep) -> None:
    with pytest.raises(ValidationError) as exc:
        app.list_assets(limit=-1)
    assert fields_of(exc) == ["limit"]
    with pytest.raises(ValidationError):
        app.ledger_entries(limit=-1)
    with pytest.raises(ValidationError) as exc:
        app.ledger_summary(since=datetime(2020, 1, 1))
    assert fields_of(exc) == ["since"]
    with pytest.raises(ValidationError):
        app.ledger_entries(until=datetime(2030, 1, 1))


def test_one_asset_twice_in_one_update_is_refused(app: Creep) -> None:
    a = app.create_asset(**ip(1))
    with pytest.raises(ValidationError) as exc:
        app.update_assets([(a.asset_id, a.version, {"health_score": 50}),
                           (a.asset_id, a.version, {"health_score": 60})])
    assert fields_of(exc) == ["items[1].asset_id"]
    assert app.get_asset(a.asset_id).health_score == 100


def test_amounts_read_back_alike_on_both_backends(app: Creep) -> None:
    app.record_ledger_entry(entry_type="COST", amount=Decimal("1E+3"), currency="USD")
    [e] = app.ledger_entries()
    assert str(e.amount) == "1000"


def test_a_ledger_entry_names_only_the_callers_own_asset_and_lease(app: Creep) -> None:
    theirs = app.create_asset(**ip(1, tenant_id="other"))
    for ref in ({"asset_id": theirs.asset_id}, {"asset_id": str(uuid.uuid4())},
                {"lease_id": str(uuid.uuid4())}):
        with pytest.raises(NotFound):
            app.record_ledger_entry(entry_type="REVENUE", amount="1", currency="USD", **ref)
    assert app.ledger_entries() == []
    mine = app.create_asset(**ip(2))
    entry = app.record_ledger_entry(entry_type="REVENUE", amount="1", currency="USD",
                                    asset_id=mine.asset_id)
    assert entry.asset_id == mine.asset_id
