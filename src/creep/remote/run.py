"""`creep worker --api-url`: the ordinary Worker, its store calls going over HTTP."""

from __future__ import annotations

from typing import cast

from creep.app import Creep
from creep.engine.run_loop import run_to_end
from creep.engine.worker import Worker, WorkerSettings
from creep.ports import Store
from creep.remote.http_worker_store import HttpWorkerStore


def run_remote_worker(
    app: Creep, api_url: str, api_key: str, *, burst: bool, concurrency: int,
    shutdown_grace: float, claim_ttl: float, claim_wait: float = 5.0,
    install_signals: bool = True,
) -> dict[str, int]:
    # A burst worker must not sit in a long poll once the queue is empty.
    remote = HttpWorkerStore(api_url, api_key, claim_wait=0.0 if burst else claim_wait)
    settings = WorkerSettings(
        concurrency=concurrency, claim_ttl=claim_ttl, shutdown_grace=shutdown_grace,
        maintenance=False, poll_interval=0.05, backoff=app.backoff,
    )
    # The Worker uses only the claim/heartbeat/progress/complete/lock/listener part of Store.
    worker = Worker(cast(Store, remote), app.handlers, settings, clock=app.clock)
    try:
        return run_to_end(worker.run(burst=burst, install_signals=install_signals))
    finally:
        remote.close()
