"""The fast validation path of common task orders agrees with the full one, field for field,
and leaves every invalid or unusual order to the full path (its rules and messages)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creep.domain import task_spec
from creep.domain.bulk_specs import build_specs, check_orders
from creep.domain.errors import ValidationError
from creep.domain.task_spec import Limits, TaskSpec, validate_task_spec

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)

texts = st.one_of(st.none(), st.text(max_size=70), st.just(" "), st.just(""), st.integers())
values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 400_000_000_000), st.text(max_size=10),
    st.floats(allow_nan=False), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.lists(st.one_of(st.text(max_size=130), st.integers()), max_size=70),
    st.lists(st.sampled_from(["a", "b", "", "x" * 129]), max_size=3),
)
fields = st.sampled_from(sorted([*task_spec._FAST_TEXT, "priority", "timeout_ms", "tags",
                                 "input_payload", "unknown_field"]))
orders = st.dictionaries(fields, st.one_of(texts, values), max_size=8)


def _full(data: dict[str, Any], limits: Limits) -> TaskSpec:
    spec = task_spec._fast_spec
    task_spec._fast_spec = lambda *_: None  # type: ignore[assignment]
    try:
        return validate_task_spec(data, now=NOW, limits=limits, traced=False)
    finally:
        task_spec._fast_spec = spec


def _comparable(spec: TaskSpec) -> dict[str, Any]:
    out = {n: getattr(spec, n) for n in TaskSpec.__dataclass_fields__}
    for name in ("task_id", "idempotency_key", "correlation_id"):
        if out[name] == spec.task_id:
            out[name] = "<task id>"
    return out


@relaxed
@given(orders, st.sampled_from([10, 1_048_576]))
def test_fast_path_matches_full_path(data: dict[str, Any], max_bytes: int) -> None:
    limits = Limits(max_payload_bytes=max_bytes, default_timeout_ms=12_345)
    try:
        full = _full(data, limits)
    except ValidationError as exc:
        assert task_spec._fast_spec(data, limits, False) is None
        with pytest.raises(ValidationError) as again:
            validate_task_spec(data, now=NOW, limits=limits, traced=False)
        assert again.value.errors == exc.errors
        return
    fast = task_spec._fast_spec(data, limits, False)
    if fast is not None:
        assert _comparable(fast) == _comparable(full)


def test_common_order_takes_fast_path() -> None:
    data = {"tenant_id": "t", "env": "prod", "idempotency_key": "k", "task_type": "NOOP",
            "priority": 7, "input_payload": {"i": 1}, "tags": ["a", "b"]}
    fast = task_spec._fast_spec(data, Limits(), False)
    assert fast is not None
    assert _comparable(fast) == _comparable(_full(data, Limits()))
    assert fast.max_attempts == 4 and fast.constraints == {} and fast.tags == ["a", "b"]
    assert fast.tags is not data["tags"]  # the caller's list is not shared


@relaxed
@given(st.lists(orders, max_size=6), st.sampled_from([10, 1_048_576]))
def test_bulk_check_and_build_match_one_by_one(batch: list[dict[str, Any]], max_bytes: int) -> None:
    """check_orders + build_specs (app.submit_many's halves) give what validate_task_spec
    gives order by order: the same specs, or the same errors under tasks[i]. prefixes."""
    limits = Limits(max_payload_bytes=max_bytes, default_timeout_ms=12_345)
    errors: list[tuple[str, str]] = []
    one_by_one: list[TaskSpec] = []
    for i, data in enumerate(batch):
        try:
            one_by_one.append(validate_task_spec(
                data, now=NOW, limits=limits, prefix=f"tasks[{i}].", traced=False,
            ))
        except ValidationError as exc:
            errors.extend(exc.errors)
    if errors:
        with pytest.raises(ValidationError) as bulk_errors:
            check_orders(batch, now=NOW, limits=limits, traced=False)
        assert bulk_errors.value.errors == errors
        return
    checked = check_orders(batch, now=NOW, limits=limits, traced=False)
    specs = build_specs(batch, checked, limits, False)
    assert [_comparable(s) for s in specs] == [_comparable(s) for s in one_by_one]
    assert len({s.task_id for s in specs}) == len(specs)


def test_bulk_build_makes_increasing_ids_and_the_same_fingerprints() -> None:
    batch = [{"tenant_id": "t", "env": "prod", "idempotency_key": f"k{i}", "task_type": "N",
              "priority": i % 3, "input_payload": {"i": i, "z": [1, None]}, "tags": ["a"],
              "description": None} for i in range(5000)]
    specs = build_specs(batch, check_orders(batch, now=NOW, limits=Limits()), Limits())
    ids = [s.task_id for s in specs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for spec, data in zip(specs, batch, strict=True):
        assert spec.request_hash == task_spec.request_fingerprint(data)
        assert spec.request_hash == task_spec.fast_fingerprint(data)
