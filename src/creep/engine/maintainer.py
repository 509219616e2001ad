"""Leader-only maintenance in a background thread, for processes that run no DB worker
(the API server, whose HTTP workers cannot rescue expired claims themselves): the task
sweeps and the asset sweeps, as a worker leading runs them.

Same lock and sweep as the Worker's maintainer (`creep.maintenance` in task_locks), so any
number of servers and workers share one leader.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from creep.domain.clock import Clock
from creep.domain.errors import CreepError
from creep.domain.outcomes import Backoff
from creep.engine.worker import MAINTENANCE_LOCK
from creep.ports import MaintenanceReport, Store

log = logging.getLogger("creep.maintenance")
#: Longest pause between sweeps that keep failing (seconds).
MAX_RETRY_PAUSE = 60.0


class Maintainer:
    def __init__(
        self, store: Store, clock: Clock, *, interval: float = 1.0,
        backoff: Backoff | None = None, timeout_grace: float = 5.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self.backoff = backoff or Backoff()
        self.timeout_grace = timeout_grace
        self.holder_id = f"{socket.gethostname()}:{os.getpid()}:api:{uuid.uuid4().hex[:8]}"
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> MaintenanceReport | None:
        """Renew or take leadership; as leader, sweep once. None when another process leads."""
        ttl = max(5.0, self.interval * 5)
        now = self.clock.now()
        if self._token is not None and not self.store.lock_renew(
            MAINTENANCE_LOCK, self.holder_id, self._token, ttl, now
        ):
            self._token = None
        if self._token is None:
            self._token = self.store.lock_acquire(
                MAINTENANCE_LOCK, self.holder_id, ttl, now,
                "task maintenance: promote due, rescue expired claims, time out overdue",
            )
        if self._token is None:
            return None
        report = self.store.task_maintain(now, self.backoff, self.timeout_grace)
        # The asset sweeps too (cooling ends, NO_RESOURCE), as a worker leading does: the
        # leader is whichever process took the lock first, often a server.
        swept = self.store.asset_maintain(now)
        if swept.total():
            log.info("asset maintenance: cooled=%d no_resource=%d", swept.cooled,
                     swept.no_resource)
        if report.total():
            log.info("maintenance: promoted=%d rescued=%d timed_out=%d dead_lettered=%d",
                     report.promoted, report.rescued, report.timed_out, report.dead_lettered)
        return report

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="creep-maintainer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        failures = 0
        try:
            while not self._stop.wait(retry_pause(self.interval, failures)):
                try:
                    self.run_once()
                    failures = 0
                except Exception as exc:
                    # Left to end the thread, one bad sweep (a bug, a row it cannot read)
                    # would end rescue, timeouts and cooling in this process for good.
                    failures += 1
                    log_failure(log, exc, retry_pause(self.interval, failures))
        finally:
            # Released by the thread itself, once its last sweep is over: released by
            # stop() while a sweep still ran, another process would lead and sweep beside it.
            self._release()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is None:
            self._release()
            return
        thread.join(timeout=10)
        if thread.is_alive():
            log.warning("a maintenance sweep still runs after 10 s; its lock is released when "
                        "it ends, or expires")

    def _release(self) -> None:
        if self._token is None:
            return
        token, self._token = self._token, None
        try:
            self.store.lock_release(MAINTENANCE_LOCK, token, self.clock.now())
        except Exception as exc:
            log.warning("releasing the maintenance lock failed (it expires): %s", exc)


def retry_pause(interval: float, failures: int) -> float:
    """The wait before the next sweep: the interval, doubled after each failure in a row up
    to a minute (an error that repeats is not retried back to back)."""
    if not failures:
        return interval
    return min(interval * 2.0 ** min(failures, 16), max(interval, MAX_RETRY_PAUSE))


def log_failure(logger: logging.Logger, exc: Exception, pause: float) -> None:
    """A storage failure (an outage) in one line; anything else (a bug) with its traceback."""
    if isinstance(exc, CreepError):
        logger.warning("maintenance failed, trying again in %.1f s: %s", pause, exc)
    else:
        logger.error("maintenance failed, trying again in %.1f s", pause, exc_info=exc)
