"""SQLite WAL checkpoints run on the store's own thread, not inside a writer's commit."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from creep import Creep
from creep.storage import sqlite_checkpoint
from creep.storage.sqlite_store import SqliteStore


def _orders(prefix: str, n: int) -> list[dict[str, object]]:
    return [
        {"tenant_id": "t1", "env": "dev", "idempotency_key": f"{prefix}-{i}",
         "task_type": "ECHO", "input_payload": {"blob": "x" * 2000}}
        for i in range(n)
    ]


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture
def fast_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    # Checkpoints every 50 ms; a thread ends after 300 ms without a commit.
    monkeypatch.setattr(sqlite_checkpoint, "INTERVAL_S", 0.05)
    monkeypatch.setattr(sqlite_checkpoint, "IDLE_EXIT_S", 0.3)


def test_committed_pages_reach_the_database_file_without_a_commit_checkpointing(
    tmp_path: Path, fast_checkpoints: None
) -> None:
    # Far fewer log pages than the automatic checkpoint's threshold: without the store's
    # thread, every page would still be in the log and the database file would not grow.
    path = tmp_path / "c.db"
    app = Creep(f"sqlite:///{path}")
    store = app.store
    assert isinstance(store, SqliteStore)
    store.migrate()
    before = os.path.getsize(path)
    assert store._checkpointer.passes == 0  # migrations do not start the thread
    app.submit_many(_orders("a", 300))
    _wait_for(lambda: store._checkpointer.passes >= 1)
    # ~300 rows of 2 KB payload each now live in the database file itself.
    assert os.path.getsize(path) - before > 300 * 2000
    assert len(app.list_tasks(limit=1000)) == 300
    app.close()


def test_an_idle_store_stops_checkpointing_and_its_thread_ends(
    tmp_path: Path, fast_checkpoints: None
) -> None:
    app = Creep(f"sqlite:///{tmp_path / 'idle.db'}")
    store = app.store
    assert isinstance(store, SqliteStore)
    store.migrate()
    checkpointer = store._checkpointer
    app.submit_many(_orders("b", 10))
    thread = checkpointer._thread
    assert thread is not None
    _wait_for(lambda: checkpointer.passes >= 1)
    settled = checkpointer.passes
    thread.join(timeout=10)  # 300 ms without a commit: the thread ends by itself
    assert not thread.is_alive()
    assert checkpointer.passes == settled  # and no checkpoint ran for nothing meanwhile
    # The next commit starts a new thread, which checkpoints it.
    app.submit_many(_orders("c", 10))
    again = checkpointer._thread
    assert again is not None and again is not thread
    _wait_for(lambda: checkpointer.passes > settled)
    app.close()
    assert not again.is_alive()


def test_two_stores_writing_and_checkpointing_one_file_lose_nothing(
    tmp_path: Path, fast_checkpoints: None
) -> None:
    # Two stores on one file, as an API server and a worker would have (here in one process):
    # each checkpoints from its own thread while both write; a checkpoint meeting another
    # one does less, and is never an error for a writer.
    url = f"sqlite:///{tmp_path / 'two.db'}"
    apps = [Creep(url), Creep(url)]
    apps[0].store.migrate()
    errors: list[BaseException] = []

    def write(app: Creep, prefix: str) -> None:
        try:
            for k in range(15):
                app.submit_many(_orders(f"{prefix}{k}", 40))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(a, p)) for a, p in zip(apps, "xy", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for app in apps:
        store = app.store
        assert isinstance(store, SqliteStore)
        _wait_for(lambda s=store: s._checkpointer.passes >= 1)  # type: ignore[misc]
    assert len(apps[1].list_tasks(limit=2000)) == 2 * 15 * 40
    threads = [t for a in apps if (t := a.store._checkpointer._thread) is not None]  # type: ignore[attr-defined]
    for app in apps:
        app.close()
    assert not any(t.is_alive() for t in threads)


def test_a_store_closed_and_used_again_checkpoints_again_at_its_own_level(
    tmp_path: Path, fast_checkpoints: None
) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'again.db'}?synchronous=NORMAL")
    store.migrate()
    app = Creep(store.url, store=store)  # the app writes through this very store
    app.submit_many(_orders("d", 5))
    first = store._checkpointer
    assert first.synchronous == "NORMAL"
    _wait_for(lambda: first.passes >= 1)
    store.close()
    assert first._thread is None or not first._thread.is_alive()
    app.submit_many(_orders("e", 5))  # the store reopens its connections
    second = store._checkpointer
    assert second is not first and second.synchronous == "NORMAL"
    _wait_for(lambda: second.passes >= 1)
    assert len(app.list_tasks(limit=100)) == 10
    store.close()


def test_a_checkpoint_that_fails_is_tried_again_without_a_new_commit(
    tmp_path: Path, fast_checkpoints: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Retries enough that a slow machine cannot use them all up before the file is back.
    monkeypatch.setattr(sqlite_checkpoint, "_RETRIES", 10_000)
    path = tmp_path / "retry.db"
    store = SqliteStore(f"sqlite:///{path}")
    store.migrate()
    app = Creep(store.url, store=store)
    checkpointer = store._checkpointer
    # The first passes cannot open the file (a path that does not exist, as when the
    # volume is briefly gone); once it is back, a pass succeeds with no commit in between.
    checkpointer.path = str(tmp_path / "elsewhere" / "retry.db")
    app.submit_many(_orders("f", 5))
    time.sleep(0.2)
    assert checkpointer.passes == 0
    checkpointer.path = str(path)
    _wait_for(lambda: checkpointer.passes >= 1)
    store.close()
