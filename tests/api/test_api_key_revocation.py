"""A key revoked while a request was looking it up stops working at once on the node that
revoked it: the lookup in flight must not put the key, as it read it before the revocation,
into the key cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from creep.api.app import create_app
from creep.api.settings import Settings
from creep.domain.tenancy import ApiKey, hash_key
from creep.storage.sqlite_store import SqliteStore
from tests.api.conftest import ADMIN_KEY, free_port


class PausingStore(SqliteStore):
    """Holds the lookup of one key after it read the row, until told to go on."""

    paused_hash: str | None = None
    read: threading.Event
    go_on: threading.Event

    def key_by_hash(self, key_hash: str) -> ApiKey | None:
        key = super().key_by_hash(key_hash)
        if key_hash == self.paused_hash:
            self.read.set()
            self.go_on.wait(10)
        return key


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, PausingStore]]:
    store = PausingStore(f"sqlite:///{tmp_path}/keys.db")
    store.read, store.go_on = threading.Event(), threading.Event()
    settings = Settings(database_url=f"sqlite:///{tmp_path}/keys.db", admin_key=ADMIN_KEY,
                        maintenance_interval_seconds=0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store=store), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        store.go_on.set()
        server.should_exit = True
        thread.join(timeout=30)


def test_a_key_revoked_during_its_lookup_is_not_cached_as_live(
    served: tuple[str, PausingStore],
) -> None:
    base, store = served
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        assert admin.post("/v1/tenants", json={"tenant_id": "acme"}).status_code == 201
        created = admin.post("/v1/keys", json={"name": "app", "tenant_id": "acme"}).json()
        store.paused_hash = hash_key(created["key"])
        answers: list[int] = []

        def request() -> None:
            with httpx.Client(base_url=base, headers={
                    "Authorization": f"Bearer {created['key']}"}) as tenant:
                answers.append(tenant.get("/v1/tasks").status_code)

        in_flight = threading.Thread(target=request)
        in_flight.start()
        assert store.read.wait(10)  # the request read the key: live
        assert admin.delete(f"/v1/keys/{created['key_id']}").status_code == 200
        store.go_on.set()
        in_flight.join(10)
        assert answers == [200]  # checked before the revocation: served
        # Revoked on this node: refused at once, not after key_cache_seconds.
        request()
        assert answers == [200, 401]
