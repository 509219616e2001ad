"""An in-process API (FastAPI's TestClient, no server process) over a Creep on a frozen
clock, for tests that interleave the app's own calls (a scheduler tick, a retention sweep)
with requests. The admin key is fixed; the tenant `acme` exists."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from creep import Creep, FrozenClock
from creep.api.app import create_app
from creep.api.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx
    from fastapi.testclient import TestClient

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "inprocess-admin-key-" + "x" * 24
ADMIN = {"Authorization": f"Bearer {KEY}"}


@contextmanager
def acme_api(
    app: Creep, db_url: str, clock: FrozenClock, **settings: Any
) -> Iterator[TestClient]:
    """The API on `app`'s store and clock (no maintenance loop), `settings` added."""
    config = Settings(database_url=db_url, admin_key=KEY, maintenance_interval_seconds=0,
                      **settings)
    with TestClient(create_app(config, store=app.store, clock=clock)) as client:  # type: ignore[arg-type]
        r = client.post("/v1/tenants", json={"tenant_id": "acme"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        yield client
