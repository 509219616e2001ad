"""WAL checkpoints off the write path.

SQLite checkpoints a WAL database from the connection whose commit takes the log past
`wal_autocheckpoint` pages: that commit then copies every page of the log into the database
file and fsyncs it before it returns. Under a steady write load (POST /v1/tasks, a worker's
claims and completions) this stalled one commit in every few hundred for 60-70 ms, and
every request or task waiting on that commit with it.

A `WalCheckpointer` runs PASSIVE checkpoints from a thread of its own, on a connection of its
own, a few times a second while its store writes. A passive checkpoint neither waits for nor
blocks readers or writers (the GIL is released while SQLite copies and syncs), so writers
only append to the log. Under a steady load a pass rarely catches up with the very last
commit, so the log is not restarted by these passes: the writers' own automatic checkpoint
(the backstop, at 16384 pages) still restarts it, but then finds nearly every page copied
already and only syncs.

Durability is unchanged: a commit is durable once its log frames are synced, whoever copies
them into the database file later.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import suppress
from urllib.parse import quote

log = logging.getLogger("creep.storage")

#: Seconds between two checkpoints while the store writes (none while it is idle).
INTERVAL_S = 0.25
#: Seconds without a commit after which the thread ends (the next commit starts another):
#: a store left open but unused holds no thread.
IDLE_EXIT_S = 5.0
#: Passes in a row that may fail (and be tried again without a new commit).
_RETRIES = 20


class WalCheckpointer:
    def __init__(
        self, path: str, interval_s: float | None = None, idle_exit_s: float | None = None,
        *, synchronous: str = "FULL",
    ) -> None:
        # Absolute once: a thread started later does not depend on the working directory.
        self.path = os.path.abspath(path)
        self.synchronous = synchronous  # the store's level: how a checkpoint syncs
        self.interval_s = INTERVAL_S if interval_s is None else interval_s
        self.idle_exit_s = IDLE_EXIT_S if idle_exit_s is None else idle_exit_s
        self.passes = 0  # checkpoints run (tests and diagnostics)
        self._dirty = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def committed(self) -> None:
        """A write transaction of the store committed: checkpoint within the interval. Costs
        an attribute write on the hot path while the thread runs."""
        self._dirty = True  # before the thread is looked at: see _idle_exit
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            thread = threading.Thread(
                target=self._run, name="creep-sqlite-checkpoint", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:
                # No thread to be had (a process at its thread limit, or shutting down): the
                # commit that asked stands, and the writers' backstop checkpoint still runs.
                log.warning("background WAL checkpoints not started: %s", exc)
                return
            self._thread = thread

    def _idle_exit(self) -> bool:
        """End the thread if no commit came since the last check. The thread is given up
        before _dirty is read again, and a commit sets _dirty before it looks for the
        thread: either this sees the commit's flag and keeps the thread, or the commit finds
        no thread and starts one."""
        with self._lock:
            current = self._thread
            self._thread = None
            if self._dirty:
                self._thread = current
                return False
            return True

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        idle = 0.0
        failures = 0
        try:
            while not self._stop.wait(self.interval_s):
                if not self._dirty:
                    idle += self.interval_s
                    if idle >= self.idle_exit_s and self._idle_exit():
                        return
                    continue
                idle = 0.0
                self._dirty = False
                try:
                    if conn is None:  # mode=rw: never create a file that was removed
                        conn = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True,
                                               isolation_level=None, timeout=0)
                        conn.execute(f"PRAGMA synchronous={self.synchronous}")
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.passes += 1
                except sqlite3.Error as exc:
                    # E.g. an I/O error the next writer meets too (another process's
                    # checkpoint is not an error: a passive one just does less). The
                    # writers' backstop checkpoint still runs; the next pass tries again.
                    log.debug("background WAL checkpoint skipped: %s", exc)
                    failures += 1
                    if failures < _RETRIES:  # then leave it to the next commit
                        self._dirty = True
                    if conn is not None:
                        with suppress(sqlite3.Error):
                            conn.close()
                        conn = None
                else:
                    failures = 0
        finally:
            if conn is not None:
                with suppress(sqlite3.Error):
                    conn.close()

    def stop(self) -> None:
        """Stop the thread (after the checkpoint it may be running). A later commit does not
        start it again: the store is closing."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)  # a checkpoint in progress: seconds at most
