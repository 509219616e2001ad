"""Fixtures shared by the conformance tests (each runs on SQLite and on PostgreSQL through
db_url). A module that needs another app (handlers, a backoff) defines its own `app`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from creep import Creep, FrozenClock


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def app(db_url: str, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock)
    yield creep_app
    creep_app.close()
