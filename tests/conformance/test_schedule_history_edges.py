"""Schedule edges on both backends: what create/update accept (text every database stores,
a TaskOrder template the task validator accepts), the statistics and timings an execution
history reports, and the checks of the history listing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from creep import Creep, FrozenClock, ValidationError
from creep.engine.scheduler import Scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def _sched(app: Creep) -> Scheduler:
    return app.scheduler(holder_id="A", retention_jobs=[], lock_ttl=3600)


# -- text no database stores -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("description", "a\x00b", "description"),
        ("project_id", "a\x00b", "project_id"),
        ("name", "a\x00b", "name"),
        ("env", "prod\x00", "env"),
        ("description", "lone \ud800 surrogate", "description"),
        ("labels", {"team": "a\x00b"}, "labels.team"),
        ("labels", {"te\x00am": "a"}, "labels"),
        ("tags", ["ok", "a\x00b"], "tags[1]"),
        ("resource_hints", [{"sku_category": "GPU\x00"}], "resource_hints[0].sku_category"),
        ("data", {"k": ["a\x00b"]}, "data.k[0]"),
        ("data", '{"k": "a\\u0000b"}', "data.k"),  # JSON text with an escaped NUL
        ("data", '"lone \ud800"', "data"),
    ],
)
def test_text_no_database_stores_is_a_validation_error_naming_the_field(
    app: Creep, field: str, value: Any, named: str
) -> None:
    """A NUL or a lone surrogate in any text of a schedule is refused by create_schedule and
    update_schedule with a ValidationError naming the field, on both backends (PostgreSQL
    used to raise a StorageError naming nothing; SQLite stored it and every firing then
    failed as an invalid task order)."""
    with pytest.raises(ValidationError) as info:
        app.create_schedule(**{"name": "nul", "type": "T", "interval": 60, field: value})
    assert info.value.errors[0][0] == named
    s = app.create_schedule(name="clean", type="T", interval=60)
    with pytest.raises(ValidationError) as info:
        app.update_schedule(s.uid, **{field: value})
    assert info.value.errors[0][0] == named
    assert app.get_schedule(s.uid).version == 1  # nothing was written


def test_a_trigger_by_no_database_stores_is_a_validation_error(app: Creep) -> None:
    """trigger_schedule refuses a trigger_by holding NUL with a ValidationError naming it
    (PostgreSQL raised a StorageError) and records no execution."""
    s = app.create_schedule(name="t", type="T", cron_expr="0 0 1 1 *")
    with pytest.raises(ValidationError) as info:
        app.trigger_schedule(s.uid, trigger_by="al\x00ice")
    assert info.value.errors[0][0] == "trigger_by"
    assert app.list_executions(schedule=s.uid) == []
