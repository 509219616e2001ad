"""Pure pieces of the REST API: diff truncation (seed 003), batch status (seed 004),
settings validation."""

from __future__ import annotations

import orjson
import pytest

from creep.api.settings import SettingsError, load_settings
from creep.domain.audit import build_diff, truncate_object
from creep.domain.batch import BatchStatus, derive_counts


def test_small_objects_are_kept_whole() -> None:
    text, cut = truncate_object({"a": 1, "b": "x"}, limit=100)
    assert orjson.loads(text or "") == {"a": 1, "b": "x"} and cut == []
    assert truncate_object(None) == (None, [])


def test_largest_fields_are_cut_first_and_named() -> None:
    obj = {"small": "keep", "big": "y" * 5000, "bigger": list(range(3000)), "n": 7}
    text, cut = truncate_object(obj, limit=6000)
    assert text is not None and len(text.encode()) <= 6000
    data = orjson.loads(text)
    assert cut == ["bigger"]  # cutting the biggest one was enough
    assert data["small"] == "keep" and data["n"] == 7 and data["big"] == "y" * 5000
    text, cut = truncate_object(obj, limit=600)
    data = orjson.loads(text or "")
    assert cut == ["bigger", "big"] and len((text or "").encode()) <= 600
    assert data["big"].startswith("yyy") and data["big"].endswith("...[truncated]")


def test_objects_that_cannot_fit_field_wise_become_a_stub() -> None:
    many = {f"k{i}": i for i in range(5000)}
    text, cut = truncate_object(many, limit=4000)
    assert cut == ["*"] and len((text or "").encode()) <= 4000
    text, cut = truncate_object("z" * 10_000, limit=100)
    assert cut == ["*"] and "10002 bytes" in (text or "")


def test_build_diff_marks_each_side() -> None:
    diff = build_diff({"a": "x" * 200}, {"a": "ok"}, limit=100).to_dict()
    assert diff["old_object_truncated"] is True and diff["new_object_truncated"] is False
    assert diff["truncated_fields"] == ["old_object.a"]


@pytest.mark.parametrize(
    ("counts", "cancelled", "status", "progress"),
    [
        ({}, False, BatchStatus.PENDING, 0),
        ({"QUEUED": (2, 0), "PENDING": (1, 0)}, False, BatchStatus.PENDING, 0),
        ({"RUNNING": (1, 50), "QUEUED": (1, 0)}, False, BatchStatus.RUNNING, 25),
        ({"SUCCESS": (1, 100), "QUEUED": (1, 0)}, False, BatchStatus.RUNNING, 50),
        ({"SUCCESS": (3, 300)}, False, BatchStatus.COMPLETED, 100),
        ({"SUCCESS": (2, 200), "DEAD_LETTER": (1, 10)}, False, BatchStatus.FAILED, 100),
        ({"SUCCESS": (1, 100), "CANCELLED": (1, 0)}, True, BatchStatus.CANCELLED, 100),
        ({"CANCELLED": (2, 0)}, False, BatchStatus.CANCELLED, 100),
    ],
)
def test_batch_status_is_derived_from_its_tasks(
    counts: dict[str, tuple[int, int]], cancelled: bool, status: BatchStatus, progress: int
) -> None:
    derived = derive_counts(counts, cancelled)
    assert derived.status is status and derived.progress == progress
    assert derived.total_count == sum(n for n, _ in counts.values())


def test_settings_from_env_and_flags() -> None:
    s = load_settings({"CREEP_PORT": "9001", "CREEP_RATE_LIMIT_PER_SECOND": "2.5",
                       "CREEP_LOG_LEVEL": "debug"}, port=9002)
    assert s.port == 9002 and s.rate_limit_per_second == 2.5 and s.log_level == "DEBUG"
    assert load_settings({}).database_url == "sqlite:///./creep.db"


def test_every_bad_setting_is_one_line() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"CREEP_PORT": "0", "CREEP_WORKERS": "many", "CREEP_LOG_JSON": "maybe",
                       "CREEP_DATABASE_URL": "mysql://x"})
    problems = info.value.problems
    assert len(problems) == 4
    assert sorted(p.split(":")[0] for p in problems) == [
        "CREEP_DATABASE_URL", "CREEP_LOG_JSON", "CREEP_PORT", "CREEP_WORKERS"]
    assert all("\n" not in p for p in problems)


def test_tenant_limits_read_before_a_change_are_not_cached() -> None:
    """A request that read a tenant's limits just before a PATCH committed, and cached them
    after the PATCH's forget(), kept the old limits on that server for the cache's 5 s."""
    from datetime import UTC, datetime
    from typing import Any, cast

    from creep.api.limits import TenantLimitsCache
    from creep.api.services import Services
    from creep.domain.tenancy import Tenant

    class Store:
        cap = 1
        during_read: Any = None

        def tenant_get(self, tenant_id: str) -> Tenant:
            read = Tenant(tenant_id, tenant_id, None, None, self.cap, datetime.now(UTC))
            if self.during_read is not None:
                self.during_read()
            return read

    store = Store()
    cache = TenantLimitsCache(Services(load_settings({}), cast(Any, store)))
    assert cache.get("t").max_active_tasks == 1

    def patched() -> None:  # the PATCH commits and forgets while this read is under way
        store.cap, store.during_read = 2, None
        cache.forget("t")

    cache.forget("t")
    store.during_read = patched
    assert cache.get("t").max_active_tasks == 1  # what this request read
    assert cache.peek("t") is None
    assert cache.get("t").max_active_tasks == 2 and cache.peek("t") is not None
