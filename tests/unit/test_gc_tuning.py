"""The collector threshold is raised while batches are in flight and always restored."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from creep import Creep, TaskContext
from creep.domain.errors import ValidationError
from creep.engine.worker import WorkerSettings
from creep.gc_tuning import fewer_collections, settle_long_lived


@pytest.fixture(autouse=True)
def default_threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_raised_inside_restored_after_nested_and_concurrent() -> None:
    with fewer_collections(5000):
        assert gc.get_threshold() == (5000, 10, 10)
        entered, leave = threading.Event(), threading.Event()

        def other() -> None:
            with fewer_collections(5000):
                entered.set()
                leave.wait(5)

        thread = threading.Thread(target=other)
        thread.start()
        assert entered.wait(5)
        with fewer_collections(9000):  # nested: the first user's setting stands
            assert gc.get_threshold() == (5000, 10, 10)
        assert gc.get_threshold() == (5000, 10, 10)
        leave.set()
        thread.join(5)
        assert gc.get_threshold() == (5000, 10, 10)  # the outer block is still open
    assert gc.get_threshold() == (700, 10, 10)


def test_restored_after_an_error_and_left_alone_when_off_or_higher() -> None:
    with pytest.raises(RuntimeError), fewer_collections(5000):
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)
    gc.set_threshold(0, 10, 10)  # the application switched the collector off
    with fewer_collections(5000):
        assert gc.get_threshold() == (0, 10, 10)
    gc.set_threshold(50_000, 10, 10)
    with fewer_collections(5000):
        assert gc.get_threshold() == (50_000, 10, 10)
    assert gc.get_threshold() == (50_000, 10, 10)


def test_worker_raises_it_while_running_and_restores_it(tmp_path: Path) -> None:
    app = Creep(f"sqlite:///{tmp_path}/creep.db")
    seen: list[int] = []

    @app.handler("LOOK")
    async def look(ctx: TaskContext) -> None:
        seen.append(gc.get_threshold()[0])

    app.submit(task_type="LOOK")
    app.run_worker(burst=True, install_signals=False, gc_threshold=12_345)
    app.submit(task_type="LOOK")
    app.run_worker(burst=True, install_signals=False, gc_threshold=None)
    assert seen == [12_345, 700]
    assert gc.get_threshold() == (700, 10, 10)
    with pytest.raises(ValidationError) as err:
        WorkerSettings(gc_threshold=0).validate()
    assert err.value.errors == [("gc_threshold", "must be an integer >= 1 (or None)")]
    app.close()


def test_a_started_server_freezes_its_heap_and_collects_less_often(tmp_path: Path) -> None:
    import asyncio

    from creep.api.app import create_app
    from creep.api.settings import load_settings

    settings = load_settings(database_url=f"sqlite:///{tmp_path}/creep.db")
    seen: list[tuple[tuple[int, int, int], int]] = []

    async def start(settle_heap: bool) -> None:
        app = create_app(settings, settle_heap=settle_heap)
        async with app.router.lifespan_context(app):
            seen.append((gc.get_threshold(), gc.get_freeze_count()))

    try:
        asyncio.run(start(False))  # tests and embedders: left alone
        asyncio.run(start(True))  # `creep server`
        assert seen[0] == ((700, 10, 10), 0)
        assert seen[1][0] == (10_000, 10, 10) and seen[1][1] > 10_000
        gc.set_threshold(0, 10, 10)  # switched off by the application: stays off
        settle_long_lived()
        assert gc.get_threshold() == (0, 10, 10)
    finally:
        gc.unfreeze()
