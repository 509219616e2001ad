"""The `creep scheduler` process: the leader-elected loop with graceful SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from creep.app import Creep


def run_scheduler_process(
    database_url: str | None, *, tick: float, lock_ttl: float, holder_id: str | None
) -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Creep(database_url) as app:
        app.run_scheduler(stop, tick=tick, lock_ttl=lock_ttl, holder_id=holder_id)
