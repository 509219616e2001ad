"""Which bulk submissions may be written two chunks at a time: only those in which no
(tenant_id, env, idempotency_key) occurs twice (bulk_submit._distinct_keys)."""

from __future__ import annotations

import uuid
from typing import Any

from creep.bulk_submit import _distinct_keys
from creep.domain.bulk_specs import check_orders
from creep.domain.clock import SystemClock
from creep.domain.task_spec import Limits


def distinct(orders: list[dict[str, Any]]) -> bool:
    return _distinct_keys(orders, check_orders(orders, now=SystemClock().now(), limits=Limits()))


def order(key: str | None, tenant: str | None = "t", **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"tenant_id": tenant, "env": "e", "task_type": "X", **extra}
    if key is not None:
        data["idempotency_key"] = key
    return data


def test_distinct_keys_and_orders_without_keys() -> None:
    assert distinct([order("a"), order("b"), order(None), order(None)])


def test_one_key_in_two_tenants_or_envs_is_two_keys() -> None:
    assert distinct([order("a"), order("a", tenant="u"), order("a", env="f")])


def test_one_key_twice_in_a_tenant_is_caught() -> None:
    assert not distinct([order("a"), order("b"), order("a")])
    # Also when one of the two takes the full validation path (a spec, not a common order).
    assert not distinct([order("a"), order("a", max_total_cost="1.50", tags=["x"])])
    assert not distinct([order("a", tenant=None), order("a", tenant="default")])


def test_an_order_without_a_key_is_keyed_by_its_task_id_however_spelled() -> None:
    same = uuid.uuid4()
    assert not distinct([order(None, task_id=str(same).upper()), order(None, task_id=str(same))])
    assert not distinct([order(None, task_id=f"{{{same}}}"), order(None, task_id=same.urn)])
    assert distinct([order(None, task_id=str(uuid.uuid4())), order(None, task_id=str(same))])
